"""The Redis side: connecting with the configured credentials and checking the target is safe."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import redis

from ferry.config import RedisSettings, StreamConfig
from ferry.errors import RedisTargetError

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
        from ferry.services import running_services

        return running_services().redis_url
    return settings.url


def connect_redis(config: StreamConfig | RedisSettings) -> redis.Redis:
    """A checked connection to the target: reachable, authenticated, PING answered."""
    settings = config.redis if isinstance(config, StreamConfig) else config
    url = resolve_url(settings)
    client = redis.Redis.from_url(
        url,
        username=settings.username.resolve() if settings.username else None,
        password=settings.password.resolve() if settings.password else None,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=60,
        health_check_interval=0,
    )
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
        raise RedisTargetError(
            f"cannot reach Redis at {url} within {CONNECT_TIMEOUT_S:.0f}s: {exc}"
        ) from exc
    return client


def server_info(client: redis.Redis) -> ServerInfo:
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


def check_target(client: redis.Redis) -> ServerInfo:
    """Refuse a target that could lose entries or cannot take ``<ms>-*`` IDs."""
    info = server_info(client)
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
