"""Retention: incremental, exact trimming that records what it retired. The KEDA objects a
consumer deployment scales by are rendered by :mod:`ferry.runbook.keda`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.ingest import (
    MigrationKeys,
    _script,
    migration_keys,
    read_state,
    read_state_fields,
)
from ferry.runbook.keda import lag_threshold  # noqa: F401  (its home until ferry.runbook.keda)


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
    held_by: str | None = None  # the consumer group(s) that still need the oldest entry the
    # policy would remove (comma-separated), or that a forced trim went past
    held: int = 0  # entries the policy would remove that were kept for those groups
    forced_past: int = 0  # with force: removed entries a group had not delivered and acked

    def describe(self) -> str:
        """One line: what was removed, and what consumer groups held back or lost."""
        text = (
            f"removed {self.removed:,} entries in {self.calls} steps; "
            f"{self.length_before:,} -> {self.length_after:,} entries"
        )
        names = (self.held_by or "").split(",")
        who = f"group{'s' if len(names) > 1 else ''} {', '.join(names)}"
        if self.held:
            text += (
                f"; kept {self.held:,} entries the policy would remove: {who} has not yet "
                "delivered and acknowledged them (force trims anyway)"
            )
        if self.forced_past:
            text += (
                f"; forced: {self.forced_past:,} of the removed entries were not yet delivered "
                f"and acknowledged by {who}"
            )
        return text


def trim_stream(
    client: redis.Redis,
    config: StreamConfig,
    *,
    limit: int = 10_000,
    now_ms: int | None = None,
    force: bool = False,
) -> TrimResult:
    """Apply the config's ``trim`` policy to every stream of the migration, ``limit`` entries
    per atomic step, recording ``trimmed:<p>`` (highest offset retired) in the state.

    An entry some consumer group of the stream has not yet delivered and acknowledged stays
    (the bound is read in the same script as the trim), unless ``force``; the result names
    the group(s) and how many entries they held back (or, forced, how many were removed)."""
    policy = config.trim
    keys = migration_keys(config)
    starts, _ = read_state(client, keys)
    # each stream with the hash its trim records go to: the migration's state, or in the
    # spread layout the partition's own (same slot as its stream: one script, one shard)
    state_of = {keys.stream_for(p): keys.partition_state(p) for p in sorted(starts)}
    streams = [k for k in keys.streams(sorted(starts)) if client.exists(k)]
    before = sum(client.memory_usage(k, samples=0) or 0 for k in streams)
    length_before = sum(client.xlen(k) for k in streams)
    removed = calls = longest = held = forced_past = 0
    holders: set[str] = set()
    if policy is not None:
        script = _script(client, "trim.lua")
        if policy.max_age_ms is not None:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            mode, threshold = "minid", f"{max(0, now - policy.max_age_ms)}-0"
        else:
            mode, threshold = "maxlen", str(policy.max_len)
        args = [limit, mode, threshold, "1" if force else "0"]
        for key in streams:
            while True:
                calls += 1
                reply = script(keys=[state_of.get(key, keys.state), key], args=args)
                n, length, group, held_at, forced = reply
                n, length = int(n), int(length)
                removed += n
                forced_past += int(forced)
                if group:
                    holders.update(group.decode().split(","))
                if n < limit:
                    longest = max(longest, length)
                    if held_at:
                        held += _held_back(client, key, mode, threshold, length, held_at)
                    break
    after = sum(client.memory_usage(k, samples=0) or 0 for k in streams)
    return TrimResult(
        removed,
        calls,
        before,
        after,
        length_before,
        sum(client.xlen(k) for k in streams),
        longest,
        ",".join(sorted(holders)) or None,
        held,
        forced_past,
    )


def _held_back(
    client: redis.Redis, key: str, mode: str, threshold: str, length: int, held_at: bytes
) -> int:
    """How many entries, from ``held_at`` (the first one a group needs) on, the policy would
    have removed: beyond the length bound, or older than the age bound (counted in pages)."""
    if mode == "maxlen":
        return max(0, length - int(threshold))
    count, start = 0, held_at
    while True:
        page = client.xrange(key, start, f"({threshold}", count=10_000)
        count += len(page)
        if len(page) < 10_000:
            return count
        start = b"(" + page[-1][0]


def read_trimmed(client: redis.Redis, config: StreamConfig) -> dict[int, int]:
    """Highest offset per partition that retention removed from the stream."""
    raw = read_state_fields(client, migration_keys(config))
    return {int(k[8:]): int(v) for k, v in raw.items() if k.startswith(b"trimmed:")}


def read_trimmed_ids(
    client: redis.Redis, keys: MigrationKeys, partitions: list[int]
) -> dict[int, bytes | None]:
    """Per partition, the last entry ID retention removed from its stream (or None)."""
    raw = {
        keys.stream_for(p): client.hget(keys.partition_state(p), f"trimmed_id:{keys.stream_for(p)}")
        for p in partitions
    }
    return {p: raw[keys.stream_for(p)] for p in partitions}
