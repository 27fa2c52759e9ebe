"""Retention: incremental, exact trimming that records what it retired, and the KEDA
ScaledObject a consumer deployment scales by."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
import yaml

from ferry.config import StreamConfig
from ferry.ingest import MigrationKeys, _script, migration_keys, read_state


@dataclass(frozen=True)
class TrimResult:
    removed: int
    calls: int
    memory_before: int
    memory_after: int
    length_before: int
    length_after: int
    longest_at_trim: int = 0  # the longest stream as its last trim step left it (live traffic
    # keeps appending afterwards, so length_after can be larger)


def trim_stream(
    client: redis.Redis, config: StreamConfig, *, limit: int = 10_000, now_ms: int | None = None
) -> TrimResult:
    """Apply the config's ``trim`` policy to every stream of the migration, ``limit`` entries
    per atomic step, recording ``trimmed:<p>`` (highest offset retired) in the state."""
    policy = config.trim
    keys = migration_keys(config)
    starts, _ = read_state(client, keys)
    streams = [k for k in keys.streams(sorted(starts)) if client.exists(k)]
    before = sum(client.memory_usage(k, samples=0) or 0 for k in streams)
    length_before = sum(client.xlen(k) for k in streams)
    removed = calls = longest = 0
    if policy is not None:
        script = _script(client, "trim.lua")
        if policy.max_age_ms is not None:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            mode, threshold = "minid", f"{max(0, now - policy.max_age_ms)}-0"
        else:
            mode, threshold = "maxlen", str(policy.max_len)
        for key in streams:
            while True:
                calls += 1
                n, length = (
                    int(v) for v in script(keys=[keys.state, key], args=[limit, mode, threshold])
                )
                removed += n
                if n < limit:
                    longest = max(longest, length)
                    break
    after = sum(client.memory_usage(k, samples=0) or 0 for k in streams)
    return TrimResult(
        removed, calls, before, after, length_before, sum(client.xlen(k) for k in streams), longest
    )


def read_trimmed(client: redis.Redis, config: StreamConfig) -> dict[int, int]:
    """Highest offset per partition that retention removed from the stream."""
    raw = client.hgetall(migration_keys(config).state)
    return {int(k[8:]): int(v) for k, v in raw.items() if k.startswith(b"trimmed:")}


def read_trimmed_ids(
    client: redis.Redis, keys: MigrationKeys, partitions: list[int]
) -> dict[int, bytes | None]:
    """Per partition, the last entry ID retention removed from its stream (or None)."""
    raw = {k: client.hget(keys.state, f"trimmed_id:{k}") for k in keys.streams(partitions)}
    return {p: raw[keys.stream_for(p)] for p in partitions}


def lag_threshold(event_rate: float, drain_seconds: float = 10.0, floor: int = 100) -> int:
    """Pending entries per replica before KEDA adds one: ``drain_seconds`` of traffic."""
    return max(floor, math.ceil(event_rate * drain_seconds))


def render_scaled_object(
    config: StreamConfig,
    *,
    deployment: str,
    consumer_group: str,
    namespace: str,
    lag_count: int,
    min_replicas: int = 1,
    max_replicas: int = 10,
    auth_secret: str = "redis-auth",
) -> str:
    """A KEDA ScaledObject (redis-streams scaler, lag-based) plus its TriggerAuthentication.
    The password is referenced from a Kubernetes Secret, never written here."""
    url = urlsplit(config.redis.url) if config.redis.url not in ("embedded", "sentinel") else None
    address = f"{url.hostname}:{url.port or 6379}" if url else "redis.example.internal:6379"
    sentinel = config.redis.sentinel
    name = f"{config.name}-consumer"
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": deployment},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "triggers": [
                {
                    "type": "redis-sentinel-streams" if sentinel else "redis-streams",
                    "metadata": {
                        **(
                            {
                                "addresses": ",".join(f"{h}:{p}" for h, p in sentinel.addresses),
                                "sentinelMaster": sentinel.service,
                            }
                            if sentinel
                            else {"address": address}
                        ),
                        "stream": config.redis.stream,
                        "consumerGroup": consumer_group,
                        "lagCount": str(lag_count),
                        "enableTLS": "true"
                        if config.redis.tls is not None
                        or (url is not None and url.scheme == "rediss")
                        else "false",
                    },
                    "authenticationRef": {"name": f"{name}-auth"},
                }
            ],
        },
    }
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": f"{name}-auth", "namespace": namespace},
        "spec": {
            "secretTargetRef": [{"parameter": "password", "name": auth_secret, "key": "password"}]
        },
    }
    return yaml.safe_dump_all([scaled, auth], sort_keys=False)
