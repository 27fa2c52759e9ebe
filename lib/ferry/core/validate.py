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
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ferry.config import StreamConfig
from ferry.core.ingest import migration_keys, read_state
from ferry.core.tallies import BlockResult
from ferry.core.validate_scan import (  # noqa: F401 - read_kafka_range, scan_stream: imported from here
    RedisScanProcess,
    Window,
    compare_differing,
    read_kafka_range,
    read_state_and_bounds,
    retired_by_retention,
    scan_kafka,
    scan_redis,
    scan_stream,
)
from ferry.errors import FerryError
from ferry.kafka.source import KafkaSource, open_source
from ferry.redis.retention import read_trimmed, read_trimmed_ids
from ferry.redis.target import connect_redis

PARALLEL_ABOVE = 200_000  # entries: the stream is read in another process beside Kafka

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
    starts, frontiers, bounds = read_state_and_bounds(target, keys)
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
        gaps_allowed = info.compacted or config.kafka.transactional
        trimmed = read_trimmed(target, config)
        # what retention removed on purpose is not expected in the stream any more; what
        # Kafka deleted below its log start after the copy is reported, not compared
        first = {
            p: max(starts[p], trimmed.get(p, -1) + 1, (since or {}).get(p, 0), info.low[p])
            for p in armed_partitions
        }
        window = Window(
            since=since or {},
            retire_below={p: info.low[p] for p in armed_partitions if info.low[p] > starts[p]},
            frontiers=frontiers,
        )
        streams = keys.streams(partitions)
        ranges = {p: (first[p], frontiers[p]) for p in armed_partitions}
        trimmed_id = read_trimmed_ids(target, keys, partitions)
        side, kafka = _read_both(
            config, target, source, streams, bounds, window, ranges, gaps_allowed, info.compacted,
            on_progress,
        )  # fmt: skip
        window.drop_live_appends(side, read_state(target, keys)[1])
        kafka.resolve_shadows(side.primary, trimmed_id)
        by_partition = {p: keys.stream_for(p) for p in partitions}
        detail = compare_differing(target, source, by_partition, side, kafka, window, ranges)
        rows = []
        for p in partitions:
            if p not in starts:
                rows.append(_unarmed_row(p, info))
                continue
            found = detail.get(p, BlockResult())
            compacted = _removed_by_cleaner(
                found.unmatched, kafka.latest_of_key.get(p, {}), info.compacted
            )
            shadows = kafka.shadows.get(p, 0)
            extra = len(found.unmatched) - len(compacted) + side.extra.get(p, 0)
            rows.append(
                PartitionReport(
                    partition=p,
                    start=starts[p],
                    frontier=frontiers[p],
                    kafka_count=kafka.seen.get(p, 0),
                    redis_count=side.count.get(p, 0) - len(compacted) + shadows,
                    missing=found.missing + kafka.missing.get(p, 0),
                    duplicates=found.duplicates,
                    out_of_order=side.out_of_order.get(p, 0),
                    mismatched=found.mismatched + kafka.mismatched.get(p, 0),
                    extra=extra,
                    unexplained_gaps=kafka.gaps.get(p, 0),
                    first_missing=_lowest(found.first_missing, kafka.first_missing.get(p)),
                    trimmed_to=trimmed.get(p),
                    redis_first=shadows,
                    unshadowed=side.primary_count.get(p, 0) - shadows,
                    start_mismatch=int(want.get(p) is not None and want[p] != starts[p]),
                    expected_start=want.get(p),
                    start_found=armed.start_found.get(p),
                    retired_by_kafka=side.retired.get(p, 0),
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


def _read_both(
    config, target, source, streams, bounds, window, ranges, gaps_allowed, compacted, on_progress
):
    """The stream's tallies and Kafka's. On a stream of ``PARALLEL_ABOVE`` entries or more the
    stream is read in another process while this one reads Kafka (each read is CPU-bound in
    Python: beside each other they take the longer one's time, not the sum); below, one after
    the other, sparing a process start."""
    entries = sum(target.xlen(s) for s in streams if bounds.get(s) is not None)
    if entries < PARALLEL_ABOVE:
        side = scan_redis(target, streams, bounds, window)
        return side, scan_kafka(source, ranges, gaps_allowed, compacted, on_progress)
    with RedisScanProcess(config, streams, bounds, window) as redis_side:
        kafka = scan_kafka(source, ranges, gaps_allowed, compacted, on_progress)
        return redis_side.result(), kafka


def _removed_by_cleaner(
    unmatched: dict[int, bytes | None], latest: dict[bytes | None, int], compacted: bool
) -> set[int]:
    """Of the entries Kafka no longer returns, those the log cleaner removed: a later record
    of the same key is in Kafka, or the entry is a tombstone (removed after
    delete.retention.ms). Only on compacted topics."""
    if not compacted:
        return set()
    return {o for o, key in unmatched.items() if key is None or latest.get(key, -1) > o}


def _lowest(a: int | None, b: int | None) -> int | None:
    return min(x for x in (a, b) if x is not None) if a is not None or b is not None else None


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
