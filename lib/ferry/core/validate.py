"""The validation core: re-read Kafka and scan Redis independently, compare per partition.

For each partition p the Kafka range is ``[start[p], position[p])``, and nothing here trusts
the mirror's view of it: Kafka is read with a fresh consumer of the client the mirror did not
use, the log start and end come from the broker, and the start is checked against what the
config's start rule means on Kafka's terms (``offsets_for_times`` at the recorded target
time); a start that differs is a failed check, not a smaller range. Records Kafka removed
after the copy (retention or DeleteRecords below the log start, the cleaner on a compacted
topic) are reported as such, not as extra. Redis is read with XRANGE.
A Kafka shadow (redis-primary) is compared with the entry its header names; entries written
to Redis first whose shadow is not in the range yet are counted, not failed (``unshadowed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.entries import (
    REDIS_ORIGIN,
    KafkaRecord,
    entry_id_key,
    entry_to_record,
    record_digest,
    shadow_of,
    without_shadow_header,
)
from ferry.core.ingest import MigrationKeys, migration_keys, read_state
from ferry.errors import FerryError, KafkaError
from ferry.kafka.source import KafkaSource, open_source
from ferry.redis.retention import read_trimmed, read_trimmed_ids
from ferry.redis.target import connect_redis

SCAN_COUNT = 10_000
STALL_KICK_S = 5.0  # no record for this long: the partitions left are assigned again
STALL_TIMEOUT_S = 30.0

# The JSON keys of one partition's row, documented in the README.
COUNTERS = (
    "missing",
    "duplicates",
    "out_of_order",
    "mismatched",
    "extra",
    "unexplained_gaps",
    "start_mismatch",
    "unarmed",
)


@dataclass(frozen=True)
class PartitionReport:
    partition: int
    start: int
    frontier: int
    kafka_count: int
    redis_count: int
    missing: int
    duplicates: int
    out_of_order: int
    mismatched: int
    extra: int
    unexplained_gaps: int
    first_missing: int | None = None
    trimmed_to: int | None = None  # retention removed this partition's entries up to here
    redis_first: int = 0  # entries written to Redis first whose shadow is in the range
    unshadowed: int = 0  # entries written to Redis first whose shadow is not (yet) in it
    start_mismatch: int = 0  # 1 when start differs from the config's start rule on Kafka's terms
    expected_start: int | None = None  # Kafka's answer for the start rule (None: not checkable)
    start_found: str | None = None  # how the start was found when the migration was armed
    retired_by_kafka: int = 0  # entries below Kafka's log start now (retention, DeleteRecords)
    compacted: int = 0  # entries whose record the cleaner removed after the copy
    unarmed: int = 0  # 1 for a partition Kafka has and the migration never armed
    log_start: int | None = None  # Kafka's log start offset of the partition

    @property
    def ok(self) -> bool:
        return all(getattr(self, name) == 0 for name in COUNTERS) and (
            self.kafka_count == self.redis_count
        )


@dataclass(frozen=True)
class ValidationReport:
    stream: str
    topic: str
    stream_keys: tuple[str, ...]
    client: str
    partitions: tuple[PartitionReport, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)

    def failures(self) -> list[str]:
        """One line per failing partition, naming the partition and what failed."""
        out = []
        for p in self.partitions:
            if not p.ok:
                bad = [f"{n}={getattr(p, n)}" for n in COUNTERS if getattr(p, n)]
                if p.kafka_count != p.redis_count:
                    bad.append(f"kafka_count={p.kafka_count} redis_count={p.redis_count}")
                if p.first_missing is not None:
                    bad.append(f"first missing offset {p.first_missing}")
                if p.start_mismatch:
                    bad.append(
                        f"started at offset {p.start} but the start rule means "
                        f"{p.expected_start} on Kafka's terms"
                    )
                if p.unarmed:
                    bad.append("Kafka has this partition but the migration never armed it")
                out.append(f"partition {p.partition}: " + ", ".join(bad))
        return out

    def as_json(self) -> dict:
        totals = {n: sum(getattr(p, n) for p in self.partitions) for n in COUNTERS}
        return {
            "stream": self.stream,
            "topic": self.topic,
            "stream_keys": list(self.stream_keys),
            "client": self.client,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "kafka_count": sum(p.kafka_count for p in self.partitions),
            "redis_count": sum(p.redis_count for p in self.partitions),
            "retired_by_kafka": sum(p.retired_by_kafka for p in self.partitions),
            "compacted": sum(p.compacted for p in self.partitions),
            **totals,
            "partitions": [asdict(p) for p in self.partitions],
        }


class _RedisSide:
    """What the stream holds for one partition, gathered while scanning."""

    def __init__(self) -> None:
        self.digests: dict[int, bytes] = {}
        self.keys: dict[int, bytes | None] = {}  # offset -> key, on compacted topics only
        self.count = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.last = -1
        self.primary: dict[bytes, bytes] = {}  # entries written to Redis first: ID -> digest


def scan_stream(client: redis.Redis, key: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of a stream, in ID order, read in chunks."""
    lower = "-"
    while True:
        chunk = client.xrange(key, min=lower, max="+", count=SCAN_COUNT)
        yield from chunk
        if len(chunk) < SCAN_COUNT:
            return
        lower = "(" + chunk[-1][0].decode()


def scan_redis(
    client: redis.Redis,
    keys: MigrationKeys,
    partitions: list[int],
    since: dict[int, int] | None = None,
    keep_keys: bool = False,
) -> dict[int, _RedisSide]:
    """What the stream holds per partition; with ``since``, Kafka-origin entries of offsets
    below ``since[p]`` are outside the window and left out (a window check, not a skip).
    ``keep_keys`` remembers each entry's key (a compacted topic's check needs them)."""
    since = since or {}
    sides = {p: _RedisSide() for p in partitions}
    for key in keys.streams(partitions):
        for _id, fields in scan_stream(client, key):
            try:
                record = entry_to_record(fields)
            except ValueError as exc:
                raise FerryError(f"stream {key} entry {_id.decode()}: {exc}") from exc
            side = sides.setdefault(record.partition, _RedisSide())
            if record.offset == REDIS_ORIGIN:
                side.primary[_id] = record_digest(record)
                continue
            if record.offset < since.get(record.partition, 0):
                continue
            side.count += 1
            if record.offset in side.digests:
                side.duplicates += 1
            else:
                side.digests[record.offset] = record_digest(record)
                if keep_keys:
                    side.keys[record.offset] = record.key if record.value is not None else None
            if record.offset <= side.last:
                side.out_of_order += 1
            side.last = max(side.last, record.offset)
    return sides


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
            source.assign({p: source.position(p) for p in todo})
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


def other_client(config: StreamConfig) -> str:
    """The Kafka client the mirror did not use: validation reads with it."""
    return "kafka-python" if config.kafka.client == "confluent" else "confluent"


def expected_starts(source: KafkaSource, armed, info) -> dict[int, int | None]:
    """What each armed partition's start should be on Kafka's terms, read now with the
    validating client: the log start for ``earliest``, else the earliest offset whose
    timestamp is at or after the recorded target time. None where it cannot be checked
    any more (Kafka's log start has moved past the answer)."""
    from ferry.core.positions import choose_start

    hints = source.offsets_for_time(armed.start_ts) if armed.start_ts is not None else {}
    out: dict[int, int | None] = {}
    for p, start in armed.starts.items():
        if p not in info.high:
            continue
        if armed.start_ts is None or armed.start_found.get(p) == "added":
            out[p] = None if start < info.low[p] else info.low[p]
            continue
        choice = choose_start(source, p, info.low[p], info.high[p], armed.start_ts, hints.get(p))
        # an answer at the log start may be retention's doing: only a later one is certain
        out[p] = choice.offset if choice.offset > info.low[p] or start >= info.low[p] else None
    return out


def validate_stream(
    config: StreamConfig,
    *,
    client: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    since: dict[int, int] | None = None,
) -> ValidationReport:
    """Compare the Kafka range ``[start, position)`` with the stream, partition by partition
    (from just past ``trimmed_to`` where retention removed the oldest entries; from Kafka's
    log start where Kafka deleted records after the copy; from ``since[p]`` when given, to
    check a window of live traffic). Reads Kafka with the client the mirror did not use
    unless ``client`` says otherwise."""
    from ferry.core.identity import check_source

    began = time.monotonic()
    target = connect_redis(config)
    keys = migration_keys(config)
    starts, frontiers = read_state(target, keys)
    if not starts:
        raise FerryError(
            f"stream {config.name!r} was never backfilled: no migration state at {keys.state}"
        )
    source = open_source(config, client or other_client(config))
    try:
        info = source.describe_topic()
        armed = check_source(target, keys, source, info, frontiers)
        if armed.start_rule is not None and armed.start_rule != config.start.describe():
            raise FerryError(
                f"stream {config.name!r}: the config's start rule is {config.start.describe()!r} "
                f"but the migration was armed with {armed.start_rule!r}; the start is chosen once. "
                "Put the armed rule back in the config, or start a new migration"
            )
        partitions = list(info.partitions)
        armed_partitions = [p for p in partitions if p in starts]
        want = expected_starts(source, armed, info)
        sides = scan_redis(target, keys, partitions, since, keep_keys=info.compacted)
        _leave_out_live_appends(sides, frontiers, read_state(target, keys)[1])
        gaps_allowed = info.compacted or config.kafka.transactional
        trimmed = read_trimmed(target, config)
        # what retention removed on purpose is not expected in the stream any more; what
        # Kafka deleted below its log start after the copy is reported, not compared
        first = {
            p: max(starts[p], trimmed.get(p, -1) + 1, (since or {}).get(p, 0), info.low[p])
            for p in armed_partitions
        }
        retired = {
            p: _drop_below(sides[p], info.low[p]) if info.low[p] > starts[p] else 0
            for p in armed_partitions
        }
        ranges = {p: (first[p], frontiers[p]) for p in armed_partitions}
        seen = {p: 0 for p in partitions}
        missing = dict.fromkeys(partitions, 0)
        mismatched = dict.fromkeys(partitions, 0)
        gaps = dict.fromkeys(partitions, 0)
        first_missing: dict[int, int] = {}
        matched: dict[int, set[int]] = {p: set() for p in partitions}
        shadows: dict[int, set[bytes]] = {p: set() for p in partitions}
        latest_of_key: dict[int, dict[bytes | None, int]] = {p: {} for p in partitions}
        trimmed_id = read_trimmed_ids(target, keys, partitions)
        expected = dict(first)
        for record in read_kafka_range(source, ranges):
            p = record.partition
            if record.offset != expected[p] and not gaps_allowed:
                gaps[p] += 1
            expected[p] = record.offset + 1
            if info.compacted:
                latest_of_key[p][record.key] = record.offset
            entry_id = shadow_of(record)
            if entry_id is not None:  # compared with the entry written to Redis first
                digest = sides[p].primary.get(entry_id)
                if digest is None and retired_by_retention(entry_id, trimmed_id.get(p)):
                    continue  # its entry was retired by retention, like a trimmed offset
                found, key, record = shadows[p], entry_id, without_shadow_header(record)
            else:
                digest = sides[p].digests.get(record.offset)
                found, key = matched[p], record.offset
            seen[p] += 1
            if digest is None:
                missing[p] += 1
                first_missing.setdefault(p, record.offset)
            else:
                found.add(key)
                if digest != record_digest(record):
                    mismatched[p] += 1
            if on_progress is not None:
                on_progress(1)
        rows = []
        for p in partitions:
            side = sides[p]
            if p not in starts:
                rows.append(_unarmed_row(p, info))
                continue
            unmatched = set(side.digests) - matched[p]
            compacted = _removed_by_cleaner(unmatched, side.keys, latest_of_key[p])
            rows.append(
                PartitionReport(
                    partition=p,
                    start=starts[p],
                    frontier=frontiers[p],
                    kafka_count=seen[p],
                    redis_count=side.count - len(compacted) + len(shadows[p]),
                    missing=missing[p],
                    duplicates=side.duplicates,
                    out_of_order=side.out_of_order,
                    mismatched=mismatched[p],
                    extra=len(unmatched) - len(compacted),
                    unexplained_gaps=gaps[p],
                    first_missing=first_missing.get(p),
                    trimmed_to=trimmed.get(p),
                    redis_first=len(shadows[p]),
                    unshadowed=len(side.primary) - len(shadows[p]),
                    start_mismatch=int(want.get(p) is not None and want[p] != starts[p]),
                    expected_start=want.get(p),
                    start_found=armed.start_found.get(p),
                    retired_by_kafka=retired[p],
                    compacted=len(compacted),
                    log_start=info.low[p],
                )
            )
        return ValidationReport(
            stream=config.name,
            topic=config.kafka.topic,
            stream_keys=tuple(keys.streams(partitions)),
            client=source.client_name,
            partitions=tuple(rows),
            seconds=time.monotonic() - began,
        )
    finally:
        source.close()


def _drop_below(side: _RedisSide, low: int) -> int:
    """Leave out entries of offsets Kafka deleted after the copy; returns how many."""
    gone = [o for o in side.digests if o < low]
    for offset in gone:
        del side.digests[offset]
    side.count -= len(gone)
    return len(gone)


def _removed_by_cleaner(
    unmatched: set[int], keys: dict[int, bytes | None], latest: dict[bytes | None, int]
) -> set[int]:
    """Of the entries Kafka no longer returns, those the log cleaner removed: a later record
    of the same key is in Kafka, or the entry is a tombstone (removed after
    delete.retention.ms). Only on compacted topics (``keys`` is empty otherwise)."""
    out = set()
    for offset in unmatched:
        if offset not in keys:
            continue
        key = keys[offset]
        if key is None or latest.get(key, -1) > offset:
            out.add(offset)
    return out


def _unarmed_row(p: int, info) -> PartitionReport:
    held = info.high[p] - info.low[p]
    return PartitionReport(
        partition=p,
        start=info.low[p],
        frontier=info.low[p] - 1,
        kafka_count=held,
        redis_count=0,
        missing=held,
        duplicates=0,
        out_of_order=0,
        mismatched=0,
        extra=0,
        unexplained_gaps=0,
        unarmed=int(held > 0),
        log_start=info.low[p],
    )


def _leave_out_live_appends(sides: dict, before: dict, after: dict) -> None:
    """With live traffic the mirror appends while the stream is scanned. Entries between the
    frontier read before the scan and the one read after it are beyond the validated range;
    anything past the later frontier stays (the script never writes there: it is extra)."""
    for p, side in sides.items():
        late = [o for o in side.digests if before.get(p, -1) < o <= after.get(p, -1)]
        for offset in late:
            del side.digests[offset]
        side.count -= len(late)


def retired_by_retention(entry_id: bytes, trimmed_id: bytes | None) -> bool:
    """True when retention removed entries up to ``trimmed_id`` and ``entry_id`` is one of them."""
    return trimmed_id is not None and entry_id_key(entry_id) <= entry_id_key(trimmed_id)
