"""Preflight: can this migration start? A pass/fail table plus the topic's inventory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from ferry.config import StreamConfig
from ferry.core.ingest import migration_keys
from ferry.errors import FerryError
from ferry.kafka.source import TopicInfo, open_source
from ferry.redis.target import (
    connect_redis,
    is_cluster_client,
    partition_owners,
    server_info,
    supports_stream_ids,
)
from ferry.runbook.notebook import Check


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    partitions: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))


def run_preflight(config: StreamConfig, now_ms: int | None = None) -> Preflight:
    result = Preflight()
    info = _kafka_checks(config, result, now_ms or int(time.time() * 1000))
    _redis_checks(config, result, info)
    return result


def _kafka_checks(config: StreamConfig, result: Preflight, now_ms: int) -> TopicInfo | None:
    try:
        source = open_source(config)
    except FerryError as exc:
        result.add("Kafka reachable with the configured credentials", False, str(exc))
        return None
    try:
        info = source.describe_topic()
    except FerryError as exc:
        result.add("Kafka reachable and topic exists", False, str(exc))
        return None
    finally:
        source.close()
    result.add(
        "Kafka reachable with the configured credentials", True, config.kafka.bootstrap_servers
    )
    result.add("topic exists", True, f"{info.topic}: {len(info.partitions)} partitions")
    result.partitions = [
        {
            "partition": p,
            "earliest": info.low[p],
            "end": info.high[p],
            "records (upper bound)": info.high[p] - info.low[p],
        }
        for p in info.partitions
    ]
    result.facts.update(
        topic_records=info.records_upper_bound,
        cleanup_policy=info.cleanup_policy,
        retention_ms=info.retention_ms,
    )
    if info.compacted:
        result.add(
            "cleanup policy", True, f"{info.cleanup_policy}: compacted, offset gaps are expected"
        )
    else:
        result.add("cleanup policy", True, info.cleanup_policy)
    want = config.start.timestamp_ms(now_ms)
    if want is not None and info.retention_ms is not None and want < now_ms - info.retention_ms:
        result.add(
            "requested start within Kafka retention",
            False,
            f"start is {(now_ms - want) / 86_400_000:.1f} days ago but the topic keeps "
            f"{info.retention_ms / 86_400_000:.1f} days: the oldest requested records are gone",
        )
    else:
        result.add("requested start within Kafka retention", True, f"start: {config.start.kind}")
    result.groups = consumer_groups(config, info)
    return info


def consumer_groups(config: StreamConfig, info: TopicInfo) -> list[dict]:
    """Consumer groups with committed offsets on the topic, and their lag (best effort:
    listing groups is inventory, not a gate)."""
    from ferry.kafka.groups import read_committed_groups

    try:
        groups = read_committed_groups(config, info.partitions)
    except FerryError as exc:  # reported in the table
        return [{"group": "(could not list)", "detail": str(exc)}]
    return [
        {
            "group": group,
            "partitions": len(committed),
            "lag": sum(info.high[p] - off for p, off in committed.items()),
        }
        for group, committed in groups.items()
    ]


def _redis_checks(config: StreamConfig, result: Preflight, info: TopicInfo | None) -> None:
    try:
        client = connect_redis(config)
    except FerryError as exc:
        result.add("Redis reachable with the configured credentials", False, str(exc))
        return
    result.add("Redis reachable with the configured credentials", True, "PING answered")
    tls = config.redis.tls
    if tls is not None:
        result.add(
            "Redis TLS verifies the server's certificate",
            not tls.insecure_skip_verify,
            "redis.tls.insecure_skip_verify is true: anyone on the path can read and change "
            "what ferry writes"
            if tls.insecure_skip_verify
            else f"CA {tls.ca_file or 'system store'}"
            + (", client certificate" if tls.cert_file else ""),
        )
    server = server_info(client)
    result.facts.update(
        redis_kind=server.kind, redis_version=server.version, cluster=server.cluster
    )
    result.add(
        "Redis version supports '<ms>-*' IDs (>= 7.0)",
        supports_stream_ids(server),
        f"{server.kind} {server.version}",
    )
    if is_cluster_client(client):
        result.add(*_cluster_eviction(client))
        _partition_nodes(client, config, result)
    else:
        result.add(
            "maxmemory-policy is noeviction",
            server.maxmemory_policy == "noeviction",
            f"{server.maxmemory_policy or 'unreadable (CONFIG not permitted)'}",
        )
    result.add(*_persistence(client, config.redis.persistence))
    result.add("cluster mode", True, "cluster" if server.cluster else "standalone")
    _role_checks(client, config, result)
    try:
        result.add(*_stream_key_state(client, config))
    except redis.ResponseError as exc:  # the user lacks TYPE or HGET: the role rows say which
        result.add("target stream key is free or ferry's own", False, f"cannot tell: {exc}")
    try:
        node = client.config_get("stream-node-max-bytes").get("stream-node-max-bytes")
    except redis.ResponseError:
        node = None
    result.facts["stream_node_max_bytes"] = node


def _cluster_eviction(client) -> tuple[str, bool, str]:
    """noeviction on every primary of a cluster: a slot may move to any of them."""
    policies: dict[str, str] = {}
    for n in client.get_primaries():
        try:
            policy = server_info(client.get_redis_connection(n)).maxmemory_policy
        except redis.RedisError as exc:  # the user cannot log in there, say
            policy = f"unreadable ({exc})"
        policies[f"{n.host}:{n.port}"] = policy or "unreadable (CONFIG not permitted)"
    other = {node: p for node, p in policies.items() if p != "noeviction"}
    detail = "; ".join(f"{node}: {p}" for node, p in other.items())
    return (
        "maxmemory-policy is noeviction",
        not other,
        detail or f"noeviction on each of {len(policies)} primaries",
    )


def _partition_nodes(client, config: StreamConfig, result: Preflight) -> None:
    """On a cluster, the primary that owns each partition's stream, beside its inventory."""
    owners = partition_owners(
        client, migration_keys(config), [row["partition"] for row in result.partitions]
    )
    for row in result.partitions:
        row["redis node"] = owners[row["partition"]]
    result.facts["redis_nodes"] = sorted({row["redis node"] for row in result.partitions})


def _persistence(client: redis.Redis, wanted: str) -> tuple[str, bool, str]:
    info = client.info("persistence")
    aof = bool(info.get("aof_enabled"))
    try:
        rdb = bool(client.config_get("save").get("save"))
    except redis.ResponseError:
        rdb = None
    have = f"aof={'on' if aof else 'off'}, rdb={'unknown' if rdb is None else ('on' if rdb else 'off')}"
    ok = {"any": True, "aof": aof, "rdb": bool(rdb), "none": not aof and rdb is False}[wanted]
    return f"persistence as configured ({wanted})", ok, have


def _role_checks(client: redis.Redis, config: StreamConfig, result: Preflight) -> None:
    """Per role, whether the configured user may run its commands (ferry.redis.acl's lists, the
    same ones ``ferry acl`` prints), tried without running anything; on a Redis Cluster on
    every primary (ACL users are each node's own), naming the nodes where a command is refused
    when not all of them refuse it."""
    from ferry.redis.acl import ROLES, denied_by_node

    key = f"{config.hash_tag}:ferry:preflight"
    for role in ROLES.values():
        by_node = denied_by_node(client, list(role.commands), key)
        where: dict[str, list[str]] = {}
        for node, denied in by_node.items():
            for command in denied:
                where.setdefault(command, []).append(node)
        lacks = ", ".join(
            command + (f" on {', '.join(nodes)}" if len(nodes) < len(by_node) else "")
            for command, nodes in where.items()
        )
        result.add(
            f"Redis user may act as the {role.name} ({role.purpose})",
            not where,
            f"lacks {lacks}; see `ferry acl {role.name}`"
            if where
            else f"{len(role.commands)} commands permitted"
            + (f" on each of {len(by_node)} primaries" if len(by_node) > 1 else ""),
        )


def _stream_key_state(client: redis.Redis, config: StreamConfig) -> tuple[str, bool, str]:
    keys = migration_keys(config)
    kind = client.type(keys.stream).decode()
    claimed = client.hget(keys.state, f"stream:{keys.stream}") == b"1"
    if kind == "none":
        return "target stream key is free or ferry's own", True, f"{keys.stream} is free"
    if kind == "stream" and claimed:
        return (
            "target stream key is free or ferry's own",
            True,
            f"{keys.stream} is ferry's (resumable)",
        )
    return (
        "target stream key is free or ferry's own",
        False,
        f"{keys.stream} holds a {kind} that ferry did not write",
    )
