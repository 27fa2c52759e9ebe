"""The hand-over on the ``per-partition`` and ``spread`` layouts: one Redis consumer group on
each partition's stream (see ``ferry.live.group_keys``).

A partition's stream holds that partition only, so its Kafka-origin entries rise in offset
with their IDs, and the group's start there is found by a seek: a binary search on entry IDs
in one server-side script (``seek_partition.lua``), O(log n) whatever the history. A
partition written Redis-first, or whose offsets are not dense against its length (so the
entries before the start cannot be counted from offsets), is scanned instead, like the merged
stream. Each partition's group, offsets and consumed shadows are made by ``translate.lua`` in
that partition's slot; the migration-wide record and events are written last, so ``done``
there means every partition's group exists. A rerun keeps what a partition already has and
refuses when Kafka's group committed since."""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.ingest import MigrationKeys, _script, migration_partitions
from ferry.errors import HandoverError
from ferry.live.group_keys import GroupTarget, group_targets, handover_record_key

logger = logging.getLogger("ferry.live.handover")


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    start_id: str  # the group starts after this ID on the partition's stream
    entries_read: int
    skipped_later: int
    method: str  # "seek" or "scan"
    scan_reason: str = ""


@dataclass(frozen=True)
class PartitionSnapshot:
    """A partition's state fields and its stream's last ID, read in one MULTI."""

    fields: dict[bytes, bytes]
    last_id: tuple[int, int]

    def start(self, partition: int) -> int | None:
        value = self.fields.get(b"start:%d" % partition)
        return int(value) if value is not None else None

    def position(self, partition: int) -> int:
        return int(self.fields.get(b"frontier:%d" % partition, b"-1")) + 1

    def may_hold_redis_first(self, partition: int) -> bool:
        """True once the migration has been Redis-first for the partition: ``phase.lua``
        records ``primary_from:<p>`` at the switch and it stays (a writer's ``wseq`` fields
        leave with the writer, its entries do not)."""
        return b"primary_from:%d" % partition in self.fields


def read_snapshot(client: redis.Redis, keys: MigrationKeys, target: GroupTarget):
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.partition_state(target.partition))
    pipe.xrevrange(target.stream, count=1)
    fields, last = pipe.execute()
    last_id = last[0][0].decode() if last else "0-0"
    ms, _, seq = last_id.partition("-")
    return PartitionSnapshot(fields, (int(ms), int(seq or 0)))


def seek_partition(client: redis.Redis, stream: str, offset: int) -> tuple[str, int] | str:
    """(start ID, entries before it) for a group whose next offset is ``offset``, or why the
    seek cannot answer (the caller scans)."""
    reply = _script(client, "seek_partition.lua")(keys=[stream], args=[offset])
    start = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    if not start:
        why = reply[1]
        return why.decode() if isinstance(why, bytes) else why
    first, last, length = int(reply[1]), int(reply[2]), int(reply[3])
    if length and length != last - first + 1:
        return f"offsets {first}..{last} are not dense against the stream's {length} entries"
    return start, min(length, max(0, offset - first)) if length else 0


def plan_partition(
    client: redis.Redis,
    keys: MigrationKeys,
    target: GroupTarget,
    offset: int,
    consumed: set[str],
    latest: bool,
    snapshot: PartitionSnapshot,
) -> PartitionPlan:
    """The group's start on one partition's stream: the seek where it can prove its answer,
    else a scan (``consumed`` gains the Redis-first entries a ``latest`` reset passes over).
    ``entries_read`` counts the entries retention trimmed too, as Redis's lag does."""
    from ferry.live.handover import deleted_entries, scan_plan

    p = target.partition
    trimmed = deleted_entries(client, target.stream)
    if snapshot.may_hold_redis_first(p):
        why = "Redis-first since the cutover"
    else:
        found = seek_partition(client, target.stream, offset)
        if not isinstance(found, str):
            return PartitionPlan(p, found[0], trimmed + found[1], 0, "seek")
        why = found
    start, read, skipped = scan_plan(
        client, keys, {p: offset}, consumed, {p} if latest else set(), snapshot.last_id,
        stream=target.stream,
    )  # fmt: skip
    return PartitionPlan(p, start, trimmed + read, skipped, "scan", why)


def make_partition_group(
    client: redis.Redis,
    target: GroupTarget,
    group: str,
    plan: PartitionPlan,
    offset: int,
    committed: int | None,
    consumed: set[str],
) -> tuple[PartitionPlan, int]:
    """``translate.lua`` on one partition's stream (its slot only); returns the plan and
    offset in force. A partition a rerun finds done keeps its group, and its record's plan,
    unless Kafka's group committed since."""
    spec = {
        "offsets": {str(plan.partition): str(offset)},
        "shadows": sorted(consumed),
        "gaps": [],
        "actor": f"{socket.gethostname()}:translate-group",
        "record": {
            "start_id": plan.start_id,
            "entries_read": str(plan.entries_read),
            "committed": "" if committed is None else str(committed),
            "method": plan.method,
            "skipped_later": str(plan.skipped_later),
            "scan_reason": plan.scan_reason,
        },
    }
    try:
        (outcome,) = _script(client, "translate.lua")(
            keys=[target.stream, target.offsets, target.shadows, target.record],
            args=[group, plan.start_id, plan.entries_read, json.dumps(spec)],
        )
    except redis.ResponseError as exc:
        from ferry.live.handover import touched_error

        raise touched_error(exc, group, target.stream) from exc
    if outcome not in (b"done", "done"):
        return plan, offset
    record = {k.decode(): v.decode() for k, v in client.hgetall(target.record).items()}
    was = record.get("committed", "")
    if was != ("" if committed is None else str(committed)):
        raise HandoverError(
            f"group {group!r}: partition {plan.partition} was handed over with committed offset "
            f"{was or 'none'}, and Kafka's group now says {committed}: its consumers still read "
            "Kafka. Stop them; Redis consumers resume where the hand-over put them"
        )
    kept = PartitionPlan(
        plan.partition, record["start_id"], int(record["entries_read"]),
        int(record.get("skipped_later", 0)), record.get("method", "scan"),
        record.get("scan_reason", ""),
    )  # fmt: skip
    return kept, int(client.hget(target.offsets, str(plan.partition)))


def translate_partitions(
    config: StreamConfig,
    client: redis.Redis,
    keys: MigrationKeys,
    group: str,
    committed: dict[int, int],
    reset: str,
    accept_gap: bool,
):
    """``translate_group`` for the per-partition and spread layouts."""
    from ferry.live.handover import (
        Translation,
        check_mirror_caught_up,
        read_consumed_shadows_by_partition,
        resolve_offsets,
    )
    from ferry.live.phases import events_key

    targets = group_targets(keys, group, migration_partitions(client, keys))
    snapshots = {t.partition: read_snapshot(client, keys, t) for t in targets}
    starts = {p: s.start(p) for p, s in snapshots.items() if s.start(p) is not None}
    positions = {p: s.position(p) for p, s in snapshots.items()}
    check_mirror_caught_up(group, committed, positions)
    offsets, reset_offsets, gaps = resolve_offsets(
        group, committed, starts, positions, reset, accept_gap
    )
    shadows = read_consumed_shadows_by_partition(config, committed)
    latest = set(reset_offsets) if reset == "latest" else set()
    plans = []
    for t in targets:
        p = t.partition
        consumed = set(shadows.get(p, ()))
        plan = plan_partition(client, keys, t, offsets[p], consumed, p in latest, snapshots[p])
        plan, offset = make_partition_group(
            client, t, group, plan, offsets[p], committed.get(p), consumed
        )
        if p in reset_offsets:  # a rerun keeps the offset the partition was made with
            reset_offsets[p] = offset
        plans.append(plan)
    methods = sorted({plan.method for plan in plans})
    why = "; ".join(f"partition {pl.partition}: {pl.scan_reason}" for pl in plans if pl.scan_reason)
    translation = Translation(
        group, keys.stream, dict(committed), "", sum(pl.entries_read for pl in plans),
        sum(pl.skipped_later for pl in plans), reset, reset_offsets, gaps, "+".join(methods) or
        "seek", why, {pl.partition: pl.start_id for pl in plans},
    )  # fmt: skip
    record_translation(client, keys, translation, events_key(keys))
    logger.info(
        "group %s: %d partition stream(s), entries read %d, skipped later %d (%s%s)",
        group, len(plans), translation.entries_read, translation.skipped_later,
        translation.method, f": {why}" if why else "",
    )  # fmt: skip
    return translation


def record_translation(client: redis.Redis, keys: MigrationKeys, t, events: str) -> None:
    """The migration-wide record and events, in one MULTI in the migration's slot."""
    actor = f"{socket.gethostname()}:translate-group"
    pipe = client.pipeline(transaction=True)
    for p, (c, s) in t.gaps.items():
        pipe.xadd(events, {"type": "handover-gap", "group": t.group, "partition": p,
                           "committed": c, "start": s, "lost": s - c, "actor": actor})  # fmt: skip
    pipe.hset(
        handover_record_key(keys, t.group),
        mapping={
            "done": "1",
            "start_id": "",
            "starts": json.dumps({str(p): s for p, s in t.starts.items()}),
            "entries_read": str(t.entries_read),
            "skipped_later": str(t.skipped_later),
            "reset": t.reset,
            "committed": json.dumps({str(p): o for p, o in t.committed.items()}),
            "reset_offsets": json.dumps({str(p): o for p, o in t.reset_offsets.items()}),
            "gaps": json.dumps({str(p): list(g) for p, g in t.gaps.items()}),
            "at_ms": str(int(time.time() * 1000)),
            "method": t.method,
            "scan_reason": t.scan_reason,
        },
    )
    pipe.xadd(events, {"type": "handover", "group": t.group, "streams": len(t.starts),
                       "entries_read": t.entries_read, "outcome": "created", "actor": actor})  # fmt: skip
    pipe.execute()
