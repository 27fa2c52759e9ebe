"""Retention: incremental, exact trimming that records what it retired. The KEDA objects a
consumer deployment scales by are rendered by :mod:`ferry.keda`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.ingest import MigrationKeys, _script, migration_keys, read_state
from ferry.keda import lag_threshold  # noqa: F401  (its home until ferry.keda)


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
