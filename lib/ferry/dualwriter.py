"""``ferry.DualWriter``: what a Python producer uses instead of its bare Kafka producer.

- ``kafka-only``: Kafka only.
- ``dual-write``: produce to Kafka; each delivery report (partition, offset) sends the record
  through the ingest script as a batch of one with ``read_from = offset``: it lands only when
  it is the very next record, else it is a duplicate (the mirror had it) or deferred (ahead
  of the mirror, which will bring it). Redis is touched by a background thread only: the
  caller's ``send`` never waits for a Redis round trip.
- ``draining``: new sends are held (bounded) and the phase is acknowledged once every
  record already sent is delivered by Kafka and offered to Redis.

A follower thread reads the phase every ``poll_interval_s`` and heartbeats the writer
registry, so a phase change is followed within a second.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from ferry.config import StreamConfig
from ferry.entries import KafkaRecord, record_args
from ferry.errors import FerryError, KafkaError
from ferry.ingest import Ingestor, migration_keys, parse_reply
from ferry.kafka_source import resolve_bootstrap
from ferry.phases import (
    DRAINING,
    DUAL_WRITE,
    KAFKA_ONLY,
    WriterInfo,
    now_ms,
    read_phase,
    remove_writer,
    report_writer,
)
from ferry.redis_target import connect_redis


class WriterHoldTimeout(FerryError):
    """A send was held in ``draining`` for longer than the bound; the record was not sent."""


class PhaseNotSupported(FerryError):
    """The migration is in a phase this writer cannot serve yet."""


@dataclass
class WriterCounts:
    sent: int = 0
    delivered: int = 0
    written_redis: int = 0
    already_in_redis: int = 0
    deferred_to_mirror: int = 0
    failures: int = 0


class DualWriter:
    def __init__(
        self,
        config: StreamConfig,
        *,
        producer_settings: dict | None = None,
        writer_id: str | None = None,
        hold_bound_s: float = 5.0,
        poll_interval_s: float = 0.2,
        registry=None,
        track_latency: bool = False,
    ) -> None:
        from confluent_kafka import Producer

        self.config = config
        self.keys = migration_keys(config)
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.hold_bound_s = hold_bound_s
        self.poll_interval_s = poll_interval_s
        self.redis = connect_redis(config)
        self.ingestor = Ingestor(self.redis, self.keys)
        self.producer = Producer(
            {
                "bootstrap.servers": resolve_bootstrap(config.kafka),
                "enable.idempotence": True,
                "linger.ms": 5,  # Tansu reads back 1-record batches very slowly
                **(producer_settings or {}),
            }
        )
        self.counts = WriterCounts()
        self.holds_ms: list[float] = []
        self.last_drain_ms = 0.0
        self._drain_began: float | None = None
        # delivery report -> written to Redis, per record, when tracked (for the benchmark)
        self.visibility_ms: list[float] | None = [] if track_latency else None
        self._lock = threading.Lock()
        self._phase_changed = threading.Condition(self._lock)
        state = read_phase(self.redis, self.keys)
        self.phase, self.epoch = state.phase, state.epoch
        self.acked_epoch = state.epoch
        self._delivered: deque = deque()
        self._in_flight = 0
        self._closing = threading.Event()
        self._metrics = _Metrics(registry, self.writer_id) if registry is not None else None
        self._deliver_mirrored = self._on_delivery(True)  # built once: send() is the hot path
        self._deliver_plain = self._on_delivery(False)
        self._threads = [
            threading.Thread(target=self._poll_deliveries, daemon=True, name="ferry-deliveries"),
            threading.Thread(target=self._write_redis, daemon=True, name="ferry-redis"),
            threading.Thread(target=self._follow_phase, daemon=True, name="ferry-phase"),
        ]
        self._report()
        for t in self._threads:
            t.start()

    # --- the caller's side ---------------------------------------------------------------
    def send(
        self,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Produce one record according to the current phase (no Redis round trip)."""
        with self._lock:
            if self.phase == DRAINING:
                self._hold()
            if self.phase not in (KAFKA_ONLY, DUAL_WRITE):
                raise PhaseNotSupported(
                    f"the migration is in {self.phase}; DualWriter serves kafka-only, dual-write and "
                    "draining (redis-primary comes with the cutover work)"
                )
            mirror = self.phase == DUAL_WRITE
            self._in_flight += 1
        kwargs = {
            "key": key,
            "value": value,
            "headers": headers,
            "on_delivery": self._deliver_mirrored if mirror else self._deliver_plain,
        }
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self.producer.produce(self.config.kafka.topic, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.01)
        self.counts.sent += 1
        if self._metrics:
            self._metrics.sent.inc()

    def _hold(self) -> None:
        """Called with the lock held while draining: wait for the phase to move on."""
        began = time.monotonic()
        deadline = began + self.hold_bound_s
        while self.phase == DRAINING:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterHoldTimeout(
                    f"send held {self.hold_bound_s:.1f}s in draining without the cutover finishing or "
                    "aborting; the record was not sent, send it again"
                )
            self._phase_changed.wait(min(left, 0.05))
        self.holds_ms.append((time.monotonic() - began) * 1000)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every record sent is delivered by Kafka and offered to Redis."""
        deadline = time.monotonic() + timeout_s
        if self.producer.flush(timeout_s) > 0:
            raise KafkaError(f"{len(self.producer)} records not delivered within {timeout_s}s")
        while True:
            with self._lock:
                if self._in_flight == 0 and not self._delivered:
                    return
            if time.monotonic() > deadline:
                raise FerryError(f"records still being written to Redis after {timeout_s}s")
            time.sleep(0.005)  # waiting on the background writer, bounded by the deadline

    def close(self) -> None:
        self.flush()
        self._closing.set()
        for t in self._threads:
            t.join(timeout=5)
        remove_writer(self.redis, self.keys, self.writer_id)

    # --- background ----------------------------------------------------------------------
    def _on_delivery(self, mirror: bool):
        def report(err, msg):
            if err is not None:
                self.counts.failures += 1
                if self._metrics:
                    self._metrics.failures.inc()
                with self._lock:
                    self._in_flight -= 1
                return
            self.counts.delivered += 1
            headers = msg.headers()
            record = KafkaRecord(
                msg.partition(),
                msg.offset(),
                msg.timestamp()[1],
                msg.key(),
                msg.value(),
                tuple(headers or ()),
            )
            with self._lock:
                if mirror:
                    self._delivered.append((record, time.monotonic()))
                else:
                    self._in_flight -= 1

        return report

    def _poll_deliveries(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.01)

    def _write_redis(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                batch = list(self._delivered)
                self._delivered.clear()
            if not batch:
                time.sleep(0.002)  # idle: nothing delivered yet
                continue
            runs = consecutive_runs(batch)
            calls = []
            for run in runs:
                first = run[0][0]
                args: list = [first.partition, first.offset]
                for record, _ in run:
                    args += record_args(record)
                calls.append((first.partition, args))
            try:
                replies = self.ingestor.call_many(calls)
            except Exception:  # noqa: BLE001 - Redis down: Kafka has the records, the mirror brings them
                replies = [None] * len(calls)
            done = time.monotonic()
            for run, reply in zip(runs, replies, strict=True):
                appended = self._count_reply(run, reply)
                if self.visibility_ms is not None:
                    self.visibility_ms += [
                        (done - at) * 1000 for _, at in run[len(run) - appended :]
                    ]
            with self._lock:
                self._in_flight -= len(batch)

    def _count_reply(self, run: list, reply) -> int:
        """Count what Redis did with one run of consecutive offsets; returns how many of its
        records (the last ones) this writer appended."""
        n = len(run)
        if reply is None or isinstance(reply, Exception):
            self._add(deferred=n)
            return 0
        result = parse_reply(run[0][0].partition, reply)
        if result.refused:
            self._add(deferred=n)
            return 0
        self._add(written=result.appended, already=n - result.appended)
        return result.appended

    def _add(self, written: int = 0, deferred: int = 0, already: int = 0) -> None:
        self.counts.written_redis += written
        self.counts.deferred_to_mirror += deferred
        self.counts.already_in_redis += already
        if self._metrics:
            self._metrics.written.inc(written)
            self._metrics.deferred.inc(deferred)

    def _follow_phase(self) -> None:
        last_report = 0.0
        while not self._closing.wait(self.poll_interval_s):
            try:
                state = read_phase(self.redis, self.keys)
            except Exception:  # noqa: BLE001 - keep the last known phase; heartbeats stop, cutover waits
                continue
            with self._lock:
                if (state.phase, state.epoch) != (self.phase, self.epoch):
                    if state.phase == DRAINING:
                        self._drain_began = time.monotonic()
                    elif self.phase == DRAINING and self._drain_began is not None:
                        # the pause this writer's callers saw: draining as the writer saw it
                        self.last_drain_ms = (time.monotonic() - self._drain_began) * 1000
                    self.phase, self.epoch = state.phase, state.epoch
                    self._phase_changed.notify_all()
                drained = self._in_flight == 0 and not self._delivered
            if self._metrics:
                self._metrics.set_phase(self.phase)
            # acknowledge: in draining only once everything sent is in Kafka and offered to Redis
            if self.acked_epoch != self.epoch and (self.phase != DRAINING or drained):
                self.acked_epoch = self.epoch
                self._report()
                last_report = time.monotonic()
            elif time.monotonic() - last_report >= 1.0:
                self._report()
                last_report = time.monotonic()

    def _report(self) -> None:
        report_writer(
            self.redis,
            self.keys,
            WriterInfo(
                self.writer_id,
                now_ms(),
                self.acked_epoch,
                self.phase,
                max(self.holds_ms, default=0.0),
                self.counts.sent,
                self.last_drain_ms,
            ),
        )


def consecutive_runs(delivered: list) -> list[list]:
    """Group (record, delivered_at) pairs into runs of one partition with consecutive offsets.

    A run is safe as one ingest call with ``read_from`` = its first offset: there is no gap
    inside it that another producer's records could fill. Order within a partition is kept.
    """
    runs: list[list] = []
    last: dict[int, list] = {}
    for item in sorted(delivered, key=lambda pair: (pair[0].partition, pair[0].offset)):
        record = item[0]
        run = last.get(record.partition)
        if run is not None and run[-1][0].offset + 1 == record.offset:
            run.append(item)
        else:
            run = [item]
            runs.append(run)
            last[record.partition] = run
    return runs


class _Metrics:
    """Prometheus metrics of one writer (labelled by writer id)."""

    def __init__(self, registry, writer_id: str) -> None:
        from prometheus_client import Counter, Gauge

        labels = {"writer": writer_id}
        self.sent = Counter(
            "ferry_writer_sent", "records sent to Kafka", ["writer"], registry=registry
        ).labels(**labels)
        self.written = Counter(
            "ferry_writer_written_redis",
            "records written to Redis by the writer",
            ["writer"],
            registry=registry,
        ).labels(**labels)
        self.deferred = Counter(
            "ferry_writer_deferred", "records left to the mirror", ["writer"], registry=registry
        ).labels(**labels)
        self.failures = Counter(
            "ferry_writer_failures", "Kafka delivery failures", ["writer"], registry=registry
        ).labels(**labels)
        self.phase = Gauge(
            "ferry_writer_phase",
            "1 for the writer's current phase",
            ["writer", "phase"],
            registry=registry,
        )
        self.writer_id = writer_id

    def set_phase(self, phase: str) -> None:
        from ferry.phases import PHASES

        for p in PHASES:
            self.phase.labels(writer=self.writer_id, phase=p).set(1 if p == phase else 0)
