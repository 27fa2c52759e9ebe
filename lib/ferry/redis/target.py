"""The Redis side: connecting with the configured credentials and checking the target is safe."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from ferry.config import RedisSentinel, RedisSettings, RedisTls, StreamConfig
from ferry.core.ingest import MigrationKeys
from ferry.errors import RedisTargetError, RedisUnreachableError
from ferry.redis.cluster import FerryCluster
from ferry.redis.faults import redact_url, tls_refused

CONNECT_TIMEOUT_S = 5.0
MIN_VERSION = (7, 0)


@dataclass(frozen=True)
class ServerInfo:
    kind: str  # "redis" or "valkey"
    version: str
    maxmemory_policy: str | None
    cluster: bool


def resolve_url(settings: RedisSettings) -> str:
    if settings.url == "embedded":
        from ferry.services.servers import running_services

        return running_services().redis_url
    return settings.url


def connect_redis(config: StreamConfig | RedisSettings) -> redis.Redis | RedisCluster:
    """A checked connection to the target: reachable, authenticated, PING answered.

    A cluster target (``redis.cluster``) gets a :class:`redis.cluster.RedisCluster`, which
    follows MOVED and ASK; any other a plain :class:`redis.Redis`."""
    settings = config.redis if isinstance(config, StreamConfig) else config
    options = {
        "username": settings.username.resolve() if settings.username else None,
        "password": settings.password.resolve() if settings.password else None,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": 60,
        "health_check_interval": 0,
        **tls_options(settings.tls),
    }
    if settings.cluster is not None:
        return _cluster_client(settings, options)
    if settings.sentinel is not None:
        client, url = _through_sentinel(settings.sentinel, options)
    else:
        raw_url = resolve_url(settings)
        url = redact_url(raw_url)  # what messages show
        client = redis.Redis.from_url(raw_url, **options)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisTargetError(
            f"Redis at {url} refused the credentials (redis.username / redis.password): {exc}"
        ) from exc
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisTargetError(
                f"Redis at {url} needs valid credentials (redis.password): {exc}"
            ) from exc
        raise RedisTargetError(f"Redis at {url} answered PING with an error: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        if tls_refused(exc):
            raise RedisTargetError(
                f"the TLS handshake with Redis at {url} failed (check redis.tls.ca_file, the "
                f"client certificate, and that the server's certificate names this host): {exc}"
            ) from exc
        raise RedisUnreachableError(
            f"cannot reach Redis at {url} within {CONNECT_TIMEOUT_S:.0f}s: {exc}"
        ) from exc
    return client


def _cluster_client(settings: RedisSettings, options: dict) -> RedisCluster:
    """A cluster client seeded from ``redis.url`` and ``redis.cluster.addresses``, with the
    same credentials and TLS as a standalone connection; it learns the slot map now."""
    seeds = settings.cluster_seeds()
    where = "Redis Cluster seeded from " + ", ".join(f"{h}:{p}" for h, p in seeds)
    if settings.url.startswith("rediss://") or settings.tls is not None:
        options = {**options, "ssl": True}
    try:
        client = FerryCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **options)
        client.home_key = settings.stream  # keyless commands: the node holding the migration
        client.ping()
    except RedisClusterException as exc:
        cause = exc.__cause__
        if isinstance(cause, redis.AuthenticationError) or "NOAUTH" in str(exc):
            raise RedisTargetError(
                f"{where} refused the credentials (redis.username / redis.password): {cause}"
            ) from cause
        if "not enabled" in str(exc):
            raise RedisTargetError(
                f"{where}: a node is not in cluster mode (or may not run CLUSTER SLOTS): list "
                "a cluster's nodes in redis.cluster.addresses, or remove redis.cluster for a "
                "standalone server"
            ) from exc
        if cause is not None and tls_refused(cause):
            raise RedisTargetError(
                f"the TLS handshake with the {where} failed (check redis.tls.ca_file, the "
                f"client certificate, and that the servers' certificates name these hosts): "
                f"{cause}"
            ) from cause
        raise RedisUnreachableError(
            f"cannot reach any node of the {where} within {CONNECT_TIMEOUT_S:.0f}s: {cause or exc}"
        ) from (cause if isinstance(cause, redis.RedisError) else redis.ConnectionError(str(exc)))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnreachableError(f"cannot reach the {where}: {exc}") from exc
    return client


def is_cluster_client(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client (what :func:`connect_redis` returns for
    a cluster target)."""
    return isinstance(client, RedisCluster)


def partition_owners(
    client: redis.Redis | RedisCluster, keys: MigrationKeys, partitions: list[int]
) -> dict[int, str]:
    """``host:port`` of the primary holding each partition's keys: on a cluster the owner of
    the partition's slot (one slot for the single-tag layouts, one per partition with the
    spread layout); on one server, that server."""
    if is_cluster_client(client):
        return {
            p: client.get_node_from_key(keys.partition_state(p)).name for p in sorted(partitions)
        }
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return dict.fromkeys(sorted(partitions), where)


def _through_sentinel(sentinel: RedisSentinel, options: dict) -> tuple[redis.Redis, str]:
    """A client of the service's current primary, asked of the Sentinels on every connect."""
    from redis.sentinel import Sentinel

    password = sentinel.password.resolve() if sentinel.password else None
    ask = Sentinel(
        list(sentinel.addresses),
        sentinel_kwargs={"password": password, "socket_timeout": CONNECT_TIMEOUT_S},
        socket_timeout=options["socket_timeout"],
    )
    client = ask.master_for(sentinel.service, redis_class=redis.Redis, db=sentinel.db, **options)
    where = ", ".join(f"{h}:{p}" for h, p in sentinel.addresses)
    return client, f"service {sentinel.service!r} through Sentinel {where}"


def tls_options(tls: RedisTls | None) -> dict:
    """redis-py's TLS arguments for ``redis.tls`` (none for a plain connection)."""
    if tls is None:
        return {}
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "none" if tls.insecure_skip_verify else "required",
        "ssl_check_hostname": not tls.insecure_skip_verify,
    }


def server_info(client: redis.Redis | RedisCluster) -> ServerInfo:
    info = client.info("server")
    kind = "valkey" if "valkey_version" in info or info.get("server_name") == "valkey" else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version"))
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:  # CONFIG renamed or not permitted (managed services)
        policy = None
    cluster = bool(client.info("cluster").get("cluster_enabled"))
    return ServerInfo(kind, version, policy, cluster)


def supports_stream_ids(info: ServerInfo) -> bool:
    """Whether the server takes ``<ms>-*`` entry IDs (Redis 7.0+; every Valkey release does)."""
    if info.kind == "valkey":
        return True
    return tuple(int(x) for x in info.version.split(".")[:2]) >= MIN_VERSION


def check_target(client: redis.Redis | RedisCluster) -> ServerInfo:
    """Refuse a target that could lose entries or cannot take ``<ms>-*`` IDs, and a cluster
    node reached with a standalone client (it would answer MOVED for another node's slots).
    On a cluster every primary is checked (a slot may move to any of them)."""
    if is_cluster_client(client):
        nodes = client.get_primaries()
        return [_check_server(client.get_redis_connection(n), True) for n in nodes][0]
    return _check_server(client, False)


def _check_server(client: redis.Redis, in_cluster: bool) -> ServerInfo:
    info = server_info(client)
    if info.cluster and not in_cluster:
        raise RedisTargetError(
            "the Redis server is a cluster node (cluster_enabled:1): list the cluster's nodes "
            "in redis.cluster.addresses so ferry follows the slot map"
        )
    if not supports_stream_ids(info):
        raise RedisTargetError(
            f"Redis {info.version} is too old: ferry needs 7.0 or newer for '<ms>-*' entry IDs"
        )
    if info.maxmemory_policy is None:
        warnings.warn(
            "cannot read maxmemory-policy (CONFIG not permitted); make sure it is 'noeviction'",
            stacklevel=2,
        )
    elif info.maxmemory_policy != "noeviction":
        raise RedisTargetError(
            f"maxmemory-policy is {info.maxmemory_policy!r}: Redis could evict stream entries; "
            "set it to 'noeviction' before migrating"
        )
    return info
