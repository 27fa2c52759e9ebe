"""Step 02, dual-write: writers enter the phase, canary events reach both sides, and the two
sides do not diverge over a window of live traffic."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from ferry.config import StreamConfig
from ferry.core.entries import record_digest
from ferry.core.ingest import migration_keys
from ferry.core.positions import read_record_at
from ferry.core.validate import ValidationReport, validate_stream
from ferry.errors import FerryError
from ferry.kafka.source import open_source
from ferry.live.cutover import mirror_lag
from ferry.live.phases import (
    DUAL_WRITE,
    KAFKA_ONLY,
    PhaseState,
    live_writers,
    read_phase,
    start_dual_write,
)
from ferry.redis.target import connect_redis

CANARY_HEADER = "ferry-canary"


@dataclass(frozen=True)
class DualWriteEntry:
    state: PhaseState
    live_writers: tuple[str, ...]
    behind: tuple[str, ...]  # live writers that did not acknowledge within the wait


def enter_dual_write(config: StreamConfig, ack_timeout_s: float = 10.0) -> DualWriteEntry:
    """kafka-only -> dual-write (a rerun in dual-write keeps it), then wait until every live
    writer acknowledged the epoch."""
    client = connect_redis(config)
    keys = migration_keys(config)
    state = read_phase(client, keys)
    if state.phase == KAFKA_ONLY:
        state = start_dual_write(client, keys, reason="runbook step 02")
    elif state.phase != DUAL_WRITE:
        raise FerryError(
            f"step 02 starts dual-write from kafka-only, but the migration is in {state.phase}"
        )
    deadline = time.monotonic() + ack_timeout_s
    while True:
        live = live_writers(client, keys)  # by the Redis server's clock
        behind = tuple(w.writer_id for w in live if w.acked_epoch != state.epoch)
        if not behind or time.monotonic() > deadline:
            return DualWriteEntry(state, tuple(w.writer_id for w in live), behind)
        time.sleep(0.05)  # the writers' phase poll, bounded by ack_timeout_s


@dataclass
class CanaryResult:
    sent: int
    delivered: int
    in_redis: int = 0
    identical_in_kafka: int = 0
    missing: list[str] = field(default_factory=list)
    seconds_to_redis: float = 0.0
    written_by_writer: int = 0  # landed by the canary writer itself (the next offset)
    deferred_to_mirror: int = 0
    lag_after: dict[int, int] = field(default_factory=dict)  # the mirror's, when the search ended

    @property
    def ok(self) -> bool:
        return self.sent == self.delivered == self.in_redis == self.identical_in_kafka


def send_canaries(config: StreamConfig, count: int = 20, timeout_s: float = 30.0) -> CanaryResult:
    """Send ``count`` canary events through a DualWriter of its own (one per partition round
    robin), then find each in Redis and check the record Kafka holds at its offset is
    byte-identical."""
    from ferry.live.dualwriter import DualWriter

    run = uuid.uuid4().hex[:12]
    writer = DualWriter(config, writer_id=f"canary-{run}", poll_interval_s=0.1)
    try:
        ids = [f"{run}-{i}" for i in range(count)]
        for i, canary in enumerate(ids):
            writer.send(
                json.dumps({"canary": canary}).encode(),
                key=b"ferry-canary",
                partition=i % writer.partitions,
                headers=[(CANARY_HEADER, canary.encode())],
            )
        began = time.monotonic()
        writer.flush()
        delivered = writer.counts.delivered
    finally:
        writer.close()
    result = CanaryResult(
        sent=count,
        delivered=delivered,
        written_by_writer=writer.counts.written_redis,
        deferred_to_mirror=writer.counts.deferred_to_mirror,
    )
    found = _find_canaries(config, set(ids), began + timeout_s)
    result.lag_after = mirror_lag(config)
    result.seconds_to_redis = round(time.monotonic() - began, 3)
    result.missing = sorted(set(ids) - set(found))
    result.in_redis = len(found)
    source = open_source(config)
    try:
        high = source.describe_topic().high
        for record in found.values():
            kafka = read_record_at(source, record.partition, record.offset, high[record.partition])
            if kafka is not None and record_digest(kafka) == record_digest(record):
                result.identical_in_kafka += 1
    finally:
        source.close()
    return result


def _find_canaries(config: StreamConfig, ids: set[str], deadline: float) -> dict:
    """Canary ID -> its record in the stream, scanning the newest entries until all are there."""
    from ferry.core.entries import entry_to_record
    from ferry.core.ingest import read_state

    client = connect_redis(config)
    keys = migration_keys(config)
    streams = keys.streams(sorted(read_state(client, keys)[0]))
    found: dict = {}
    while True:
        for key in streams:
            for _, fields in client.xrevrange(key, count=5000):
                record = entry_to_record(fields)
                for name, value in record.headers:
                    if name == CANARY_HEADER and value and value.decode() in ids:
                        found[value.decode()] = record
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)  # the mirror or the writer brings them; bounded by the deadline


@dataclass(frozen=True)
class DivergenceWindow:
    seconds: float
    samples: list[dict]  # {t, lag} every half second
    report: ValidationReport  # the window's records, Kafka vs Redis

    @property
    def divergence(self) -> int:
        rows = self.report.partitions
        return sum(
            r.missing + r.duplicates + r.out_of_order + r.mismatched + r.extra for r in rows
        ) + sum(abs(r.kafka_count - r.redis_count) for r in rows)

    @property
    def records(self) -> int:
        return sum(r.kafka_count for r in self.report.partitions)


def watch_divergence(
    config: StreamConfig, window_s: float = 5.0, settle_s: float = 30.0
) -> DivergenceWindow:
    """Watch the lag for ``window_s`` of live traffic, let the mirror reach the window's end,
    then compare every record of the window on both sides."""
    from ferry.core.ingest import read_state

    client = connect_redis(config)
    keys = migration_keys(config)
    source = open_source(config)
    try:
        began = time.monotonic()
        _, frontiers = read_state(client, keys)
        since = {p: f + 1 for p, f in frontiers.items()}
        samples = []
        while time.monotonic() - began < window_s:
            lag = mirror_lag(config, source, client)
            samples.append({"t": round(time.monotonic() - began, 2), "lag": sum(lag.values())})
            time.sleep(0.5)  # one lag sample every half second over the window
        deadline = time.monotonic() + settle_s
        ends = source.describe_topic().high
        while True:
            _, frontiers = read_state(client, keys)
            if all(frontiers[p] + 1 >= ends[p] for p in ends) or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the mirror reaching the window's end, bounded
    finally:
        source.close()
    report = validate_stream(config, since=since)
    return DivergenceWindow(round(time.monotonic() - began, 2), samples, report)
