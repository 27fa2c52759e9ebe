"""The two reads of validation, each streamed once in chunks: the stream (XRANGE with COUNT,
up to the last entry at the start) and Kafka (per-partition ranges); each folded into
per-block tallies (:mod:`ferry.core.tallies`), then the blocks that differ read again and compared
record by record. Memory: the tallies, the Redis-first entries' digests (after the switch
only) and, on a compacted topic, the latest offset of each key; not the number of entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from ferry.core import tallies
from ferry.core.entries import (
    KafkaRecord,
    entry_id_key,
    entry_to_record,
    record_digest,
    shadow_of,
    without_shadow_header,
)
from ferry.core.ingest import MigrationKeys, read_state
from ferry.errors import FerryError, KafkaError
from ferry.kafka.source import KafkaSource

logger = logging.getLogger("ferry.core.validate")

SCAN_COUNT = 10_000
STALL_KICK_S = 5.0  # no record for this long: the partitions left are assigned again
STALL_TIMEOUT_S = 30.0


def scan_stream(
    client: redis.Redis, key: str, upto: bytes | str = "+", start: bytes | str = "-"
) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of a stream (from ``start`` up to ``upto``, both included), in ID order,
    read in chunks."""
    lower = start
    while True:
        chunk = client.xrange(key, min=lower, max=upto, count=SCAN_COUNT)
        yield from chunk
        if len(chunk) < SCAN_COUNT:
            return
        lower = "(" + chunk[-1][0].decode()


def read_kafka_range(
    source: KafkaSource, ranges: dict[int, tuple[int, int]], batch: int = 20_000
) -> Iterator[KafkaRecord]:
    """Every record Kafka holds in ``[first, last]`` per partition, in order per partition
    (``batch``: records taken from the client per poll)."""
    todo = {p: r for p, r in ranges.items() if r[1] >= r[0]}
    if not todo:
        return
    source.assign({p: first for p, (first, _) in todo.items()})
    last_progress = last_kick = time.monotonic()
    while todo:
        records = source.poll_records(batch, 0.2)
        if records:
            last_progress = time.monotonic()
        elif time.monotonic() - max(last_progress, last_kick) > STALL_KICK_S:
            # a fetcher that went quiet after pauses (seen with kafka-python on Kafka 4.x under
            # live traffic): assign the partitions still to read at their positions again
            positions = {p: source.position(p) for p in todo}
            logger.warning(
                "Kafka delivered nothing for %.0fs (%s) while reading partitions at %s: "
                "assigning them again",
                time.monotonic() - last_progress,
                source.client_name,
                positions,
            )
            source.assign(positions)
            last_kick = time.monotonic()
        for record in records:
            rng = todo.get(record.partition)
            if rng is None:
                continue
            if record.offset <= rng[1]:
                yield record
            if record.offset >= rng[1]:
                del todo[record.partition]
                source.pause([record.partition])
        if not records:
            for p in list(todo):
                if source.position(p) > todo[p][1]:
                    del todo[p]
                    source.pause([p])
            if todo and time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise KafkaError(
                    f"Kafka delivered nothing for {STALL_TIMEOUT_S:.0f}s while reading partitions "
                    f"{sorted(todo)}; expected offsets up to "
                    + ", ".join(f"{p}:{todo[p][1]}" for p in sorted(todo))
                )


def retired_by_retention(entry_id: bytes, trimmed_id: bytes | None) -> bool:
    """True when retention removed entries up to ``trimmed_id`` and ``entry_id`` is one of them."""
    return trimmed_id is not None and entry_id_key(entry_id) <= entry_id_key(trimmed_id)


def read_state_and_bounds(client: redis.Redis, keys: MigrationKeys):
    """Starts and frontiers (:func:`ferry.core.ingest.read_state`), then each stream's last
    entry ID. In that order: an entry at or below a frontier was written with it (one script),
    so it lies at or below the last ID read after; entries past those IDs came later, and an
    entry between them and the frontier read first is past that frontier (``beyond``)."""
    starts, frontiers = read_state(client, keys)
    bounds = {}
    for stream in keys.streams(sorted(set(starts) | set(frontiers))):
        last = client.xrevrange(stream, count=1)
        bounds[stream] = last[0][0] if last else None
    return starts, frontiers, bounds


@dataclass
class Window:
    """Which Kafka-origin entries validation compares: offsets from ``since[p]`` on, not
    below Kafka's log start where Kafka deleted records after the copy (``retire_below``),
    and up to the frontier read at the start."""

    since: dict[int, int]
    retire_below: dict[int, int]
    frontiers: dict[int, int]

    def drop_live_appends(self, side: RedisSide, after: dict[int, int]) -> None:
        """Entries past the frontier read at the start but at or below the one read after the
        scan were appended meanwhile (outside the range); the rest past it are extra."""
        for p, offsets in side.beyond.items():
            late = sum(1 for o in offsets if o <= after.get(p, -1))
            side.extra[p] = side.extra.get(p, 0) + len(offsets) - late
            side.count[p] = side.count.get(p, 0) + len(offsets) - late
        side.beyond = {}


@dataclass
class RedisSide:
    blocks: tallies.Blocks = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)
    out_of_order: dict[int, int] = field(default_factory=dict)
    retired: dict[int, int] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)
    beyond: dict[int, list[int]] = field(default_factory=dict)
    primary: dict[int, dict[bytes, bytes]] = field(default_factory=dict)  # ID -> digest
    primary_count: dict[int, int] = field(default_factory=dict)


def _bump(counter: dict[int, int], p: int) -> None:
    counter[p] = counter.get(p, 0) + 1


def classify(window: Window, p: int, offset: int) -> str:
    """Where a Kafka-origin entry of the window stands: ``out`` (before ``since``),
    ``retired``, ``beyond`` (past the frontier read at the start) or ``in``."""
    if offset < window.since.get(p, 0):
        return "out"
    if offset < window.retire_below.get(p, -1):
        return "retired"
    if offset > window.frontiers.get(p, -1):
        return "beyond"
    return "in"


def scan_redis_of(config, streams: list[str], bounds: dict, window: Window) -> RedisSide:
    """:func:`scan_redis` with a client of its own (run in another process beside the Kafka
    read, so the two reads take the time of the longer one, not their sum)."""
    from ferry.redis.target import connect_redis

    client = connect_redis(config)
    try:
        return scan_redis(client, streams, bounds, window)
    finally:
        client.close()


def scan_redis(client: redis.Redis, streams: list[str], bounds: dict, window: Window) -> RedisSide:
    side = RedisSide()
    last: dict[int, int] = {}
    for stream in streams:
        if bounds.get(stream) is None:
            continue
        for entry_id, fields in scan_stream(client, stream, upto=bounds[stream]):
            try:
                p, raw_offset = int(fields[b"p"]), fields[b"o"]
                if not raw_offset:
                    record = entry_to_record(fields)
                    side.primary.setdefault(p, {})[entry_id] = record_digest(record)
                    _bump(side.primary_count, p)
                    continue
                offset = int(raw_offset)
                where = classify(window, p, offset)
                if where == "out":
                    continue
                if offset <= last.get(p, -1):
                    _bump(side.out_of_order, p)
                else:
                    last[p] = offset
                if where == "retired":
                    _bump(side.retired, p)
                elif where == "beyond":
                    side.beyond.setdefault(p, []).append(offset)
                else:
                    _bump(side.count, p)
                    tallies.add(side.blocks, p, offset, tallies.entry_fields_hash(fields), entry_id)
            except (KeyError, ValueError) as exc:
                raise FerryError(f"stream {stream} entry {entry_id.decode()}: {exc}") from exc
    return side


@dataclass
class KafkaSide:
    blocks: tallies.Blocks = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    gaps: dict[int, int] = field(default_factory=dict)
    latest_of_key: dict[int, dict[bytes | None, int]] = field(default_factory=dict)
    shadows: dict[int, int] = field(default_factory=dict)  # shadows matched with their entry
    missing: dict[int, int] = field(default_factory=dict)  # shadows whose entry is missing
    mismatched: dict[int, int] = field(default_factory=dict)
    first_missing: dict[int, int] = field(default_factory=dict)
    # shadows read, per partition: (entry ID they name, offset, digest without the header);
    # compared with the Redis-first entries once the stream is read (resolve_shadows)
    pending: dict[int, list[tuple[bytes, int, bytes]]] = field(default_factory=dict)

    def resolve_shadows(
        self, primary: dict[int, dict[bytes, bytes]], trimmed_id: dict[int, bytes]
    ) -> None:
        """Each shadow compared with the entry written to Redis first that it names."""
        for p, shadows in self.pending.items():
            for entry_id, offset, digest in shadows:
                ours = primary.get(p, {}).get(entry_id)
                if ours is None and retired_by_retention(entry_id, trimmed_id.get(p)):
                    continue  # its entry was retired by retention, like a trimmed offset
                _bump(self.seen, p)
                if ours is None:
                    _bump(self.missing, p)
                    if offset < self.first_missing.get(p, offset + 1):
                        self.first_missing[p] = offset
                else:
                    _bump(self.shadows, p)
                    if ours != digest:
                        _bump(self.mismatched, p)
        self.pending = {}


def scan_kafka(
    source: KafkaSource,
    ranges: dict[int, tuple[int, int]],
    gaps_allowed: bool,
    compacted: bool,
    on_progress: Callable[[int], None] | None = None,
) -> KafkaSide:
    """One read of every Kafka range, folded into tallies; shadows are kept for
    :meth:`KafkaSide.resolve_shadows` (the stream may still be being read)."""
    side = KafkaSide()
    expected = {p: first for p, (first, _) in ranges.items()}
    for record in read_kafka_range(source, ranges):
        p = record.partition
        if record.offset != expected[p] and not gaps_allowed:
            _bump(side.gaps, p)
        expected[p] = record.offset + 1
        if compacted:
            side.latest_of_key.setdefault(p, {})[record.key] = record.offset
        entry_id = shadow_of(record)
        if entry_id is None:
            _bump(side.seen, p)
            tallies.add(side.blocks, p, record.offset, tallies.record_hash(record))
        else:
            digest = record_digest(without_shadow_header(record))
            side.pending.setdefault(p, []).append((entry_id, record.offset, digest))
        if on_progress is not None:
            on_progress(1)
    return side


def compare_differing(
    client: redis.Redis,
    source: KafkaSource,
    streams: dict[int, str],
    redis_side: RedisSide,
    kafka_side: KafkaSide,
    window: Window,
    ranges: dict[int, tuple[int, int]],
) -> dict[int, tallies.BlockResult]:
    """Every block whose tallies differ, read again from both sides and compared record by
    record; results summed per partition."""
    out: dict[int, tallies.BlockResult] = {}
    for p, block in tallies.differing(redis_side.blocks, kafka_side.blocks):
        lo, hi = tallies.block_range(block)
        ours = redis_side.blocks.get((p, block))
        entries = []
        if ours is not None:
            for _, fields in scan_stream(
                client, streams[p], upto=ours.last_id, start=ours.first_id
            ):
                record = entry_to_record(fields)
                if record.partition == p and lo <= record.offset <= hi:
                    if classify(window, p, record.offset) == "in":
                        entries.append(record)
        first, last = ranges.get(p, (0, -1))
        kafka_range = {p: (max(lo, first), min(hi, last))}
        records = [
            r for r in read_kafka_range(source, kafka_range, batch=BLOCK_BATCH) if not shadow_of(r)
        ]
        found = tallies.compare_block(entries, records)
        total = out.setdefault(p, tallies.BlockResult())
        total.duplicates += found.duplicates
        total.missing += found.missing
        total.mismatched += found.mismatched
        if total.first_missing is None:
            total.first_missing = found.first_missing
        total.unmatched.update(found.unmatched)
    return out


BLOCK_BATCH = tallies.BLOCK
