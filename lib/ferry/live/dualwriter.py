"""``ferry.DualWriter``: what a Python producer uses instead of its bare Kafka producer.

- ``kafka-only``: Kafka only.
- ``dual-write``: produce to Kafka; each delivery report (partition, offset) sends the record
  through the ingest script as a batch of one with ``read_from = offset``: it lands only when
  it is the very next record, else it is a duplicate (the mirror had it) or deferred (ahead
  of the mirror, which will bring it). Redis is touched by a background thread only: the
  caller's ``send`` never waits for a Redis round trip.
- ``draining``: new sends are held (bounded) and the phase is acknowledged once every
  record already sent is delivered by Kafka and offered to Redis.
- ``redis-primary``: a background thread appends the records to Redis first (``primary.lua``,
  fenced by the phase: after a rollback it refuses and the records go to Kafka the way the new
  phase says), then produces each to Kafka as the rollback *shadow*, with the entry's ID in a
  last header; the mirror moves the frontier over shadows without appending them again.
  The partition is chosen before Redis sees the record: the one given, else the one the
  application's partitioner picks for the key (``ferry.kafka.partitioner``: the librdkafka
  partitioner the producer is given in the Kafka phases too, ``consistent_random`` unless the
  config's ``writer.partitioner``, the ``partitioner`` argument or ``producer_settings`` say
  otherwise), among the topic's partitions as last read from Kafka (every
  ``partition_refresh_s``, and as soon as a delivery names a partition beyond them or the
  phase turns Redis-first); a partition added to the topic is used once the mirror armed it.
- ``redis-only``: Redis only.

A follower thread reads the phase every ``poll_interval_s`` and heartbeats the writer
registry, so a phase change is followed within a second.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.entries import KafkaRecord, record_args
from ferry.core.ingest import Ingestor, migration_keys, parse_reply
from ferry.errors import ConfigError, FerryError, KafkaError
from ferry.kafka.partitioner import PARTITIONERS
from ferry.kafka.partitioner import partitioner as partitioner_function
from ferry.kafka.source import resolve_bootstrap
from ferry.live.delivery import (
    DeliveryFailed,
    OnDelivery,
    RecordTooLarge,
    SendFuture,
    WriterClosed,
    WriterFenced,
)
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    REDIS_ONLY,
    REDIS_PRIMARY,
    PhaseState,
    WriterInfo,
    events_key,
    expire_draining,
    now_ms,
    read_phase,
    read_phase_lease,
    remove_writer,
    report_writer,
)
from ferry.live.primary_path import PrimaryPath
from ferry.redis.target import connect_redis


class WriterHoldTimeout(FerryError):
    """A send was held in ``draining`` for longer than the bound; the record was not sent."""


@dataclass
class WriterCounts:
    sent: int = 0
    delivered: int = 0
    written_redis: int = 0
    already_in_redis: int = 0
    deferred_to_mirror: int = 0
    failures: int = 0
    written_redis_first: int = 0  # redis-primary and redis-only
    shadowed: int = 0  # Kafka shadows delivered
    rerouted: int = 0  # refused by Redis after a rollback, sent to Kafka instead


REDIS_FIRST = (REDIS_PRIMARY, REDIS_ONLY)
# phases a writer may not act in on an old reading: it could miss a switch or a rollback
FENCED_PHASES = (DRAINING, REDIS_PRIMARY, REDIS_ONLY)


class DualWriter:
    def __init__(
        self,
        config: StreamConfig,
        *,
        producer_settings: dict | None = None,
        writer_id: str | None = None,
        hold_bound_s: float = 10.0,
        poll_interval_s: float = 0.2,
        registry=None,
        track_latency: bool = False,
        partitioner: str | None = None,
        partition_refresh_s: float = 10.0,
        delivery_timeout_s: float = 120.0,
        fence_after_s: float = 4.0,
    ) -> None:
        from confluent_kafka import Producer

        from ferry.kafka.confluent_client import client_settings

        self.partitioner = _partitioner_name(config, partitioner, producer_settings)
        self._partition_for = partitioner_function(self.partitioner)
        self.partition_refresh_s = partition_refresh_s
        self.config = config
        self._topic = config.kafka.topic
        self.keys = migration_keys(config)
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.hold_bound_s = hold_bound_s
        self.poll_interval_s = poll_interval_s
        self.redis = connect_redis(config)
        self.ingestor = Ingestor(self.redis, self.keys)
        self._producer_settings = {
            **client_settings(config.kafka, resolve_bootstrap(config.kafka)),
            "enable.idempotence": True,
            "linger.ms": 5,  # Tansu reads back 1-record batches very slowly
            **(producer_settings or {}),
            # the application's partitioner, which the Redis-first path reproduces in Python
            "partitioner": self.partitioner,
        }
        self.producer = Producer(self._producer_settings)
        self.counts = WriterCounts()
        # the partition count the Redis-first path hashes keys over (refresh_partitions)
        self.partitions = self._usable_partitions(
            _partition_count(self.producer, config.kafka.topic), 0
        )
        self._refresh_now = threading.Event()
        self._rng = random.Random()
        self.failed: list[tuple[KafkaRecord, str]] = []  # records whose send failed, and why
        # Redis-first records (queued, being written, or waiting for their shadow's delivery)
        self._primary = PrimaryPath(self, delivery_timeout_s)
        self._primary_pending = 0
        self._max_bytes = int(self.producer_setting("message.max.bytes", 1_000_000))
        # the phase is only trusted this long after it was last read (monotonic clock)
        self.fence_after_s = fence_after_s
        self.holds_ms: list[float] = []
        self.last_drain_ms = 0.0
        self._drain_began: float | None = None
        # delivery report -> written to Redis, per record, when tracked (for the benchmark)
        self.visibility_ms: list[float] | None = [] if track_latency else None
        self._lock = threading.Lock()
        self._phase_changed = threading.Condition(self._lock)
        self._delivery_ready = threading.Condition(self._lock)  # a delivery to copy to Redis
        self._fates = threading.Condition()  # every SendFuture of this writer waits on it
        # the writer's own lease runs from the phase read behind its last heartbeat, so it
        # fences itself before the coordinator stops counting it (heartbeat + WRITER_TTL_S)
        self._phase_read_at = self._last_read_asked = time.monotonic()
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
            threading.Thread(target=self._primary.run, daemon=True, name="ferry-primary"),
            threading.Thread(target=self._follow_partitions, daemon=True, name="ferry-partitions"),
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
        on_delivery: OnDelivery | None = None,
    ) -> SendFuture:
        """Send one record the way the current phase says, like ``Producer.produce``: no Redis
        round trip on the caller's thread. The returned future (and ``on_delivery(err,
        delivery)``, called once on a writer thread) tells the record's fate
        (``ferry.live.delivery``). Raises at once, with nothing sent, for a record over
        ``message.max.bytes``, a send held in ``draining`` past its bound, or a writer that lost
        Redis in a phase that needs it (``WriterFenced``)."""
        if len(value or b"") + len(key or b"") + 64 > self._max_bytes or headers:
            self._check_size(value, key, headers)
        future = SendFuture(self._fates, on_delivery)
        sent_headers = (
            tuple((k, v.encode() if isinstance(v, str) else v) for k, v in headers)
            if headers
            else ()
        )
        with self._lock:
            self._check_fence()
            if self.phase == DRAINING:
                self._hold()
            if self._primary_pending and self.phase not in REDIS_FIRST:
                self._wait_for_shadows()  # keep this writer's order across a rollback
            self._in_flight += 1
            self.counts.sent += 1
            if self.phase in REDIS_FIRST:
                if partition is None:
                    partition = self._choose_partition(key)
                ts = timestamp_ms if timestamp_ms is not None else now_ms()
                future.record = KafkaRecord(partition, -1, ts, key, value, sent_headers)
                self._primary.enqueue(future.record, future)
                self._primary_pending += 1
                if self._metrics:
                    self._metrics.sent.inc()
                return future
            future._report = (
                self._deliver_mirrored if self.phase == DUAL_WRITE else self._deliver_plain
            )
        future._headers = sent_headers
        while True:  # the hot path: no record object, no closure, no keyword dict
            try:
                self.producer.produce(
                    self._topic,
                    value,
                    key,
                    partition=-1 if partition is None else partition,
                    timestamp=timestamp_ms or 0,
                    headers=headers,
                    on_delivery=future,
                )
                break
            except BufferError:
                self.producer.poll(0.01)
            except Exception as exc:  # noqa: BLE001 - librdkafka's KafkaException: refused at once
                with self._lock:
                    self._in_flight -= 1
                    self.counts.sent -= 1
                raise DeliveryFailed(f"Kafka refused the record at once: {exc}") from exc
        if self._metrics:
            self._metrics.sent.inc()
        return future

    def _check_size(self, value, key, headers) -> None:
        size = (
            len(value or b"")
            + len(key or b"")
            + sum(len(k) + len(v or b"") for k, v in headers or ())
        )
        if size > self._max_bytes:
            raise RecordTooLarge(
                f"record of {size} bytes is over the producer's message.max.bytes "
                f"({self._max_bytes}); nothing was sent"
            )

    def _check_fence(self) -> None:
        """Called with the lock held: in the phases that need Redis, a writer that has not read
        the phase for ``fence_after_s`` may have missed a change; it refuses the send."""
        if self.phase in FENCED_PHASES:
            silent = time.monotonic() - self._phase_read_at
            if silent > self.fence_after_s:
                raise WriterFenced(
                    f"writer {self.writer_id} has not reached Redis for {silent:.1f}s in phase "
                    f"{self.phase} (its lease is {self.fence_after_s:.1f}s): it may have missed a "
                    "phase change, so it refuses sends until Redis answers; nothing was sent"
                )

    def producer_setting(self, name: str, default):
        return self._producer_settings.get(name, default)

    def _produce_record(self, record: KafkaRecord, future, mirror: bool, on_delivery=None) -> None:
        """Produce ``record`` off the caller's path (a rerouted record, a shadow; partition -1:
        the partitioner's choice): its delivery report resolves ``future``, as send() does, or
        goes to ``on_delivery``. A refusal librdkafka raises at once is reported the same way."""
        if on_delivery is None:
            future._report = self._deliver_mirrored if mirror else self._deliver_plain
            future._headers = record.headers
            on_delivery = future
        kwargs = {"key": record.key, "value": record.value, "on_delivery": on_delivery}
        if record.headers:
            kwargs["headers"] = list(record.headers)
        if record.partition >= 0:
            kwargs["partition"] = record.partition
        if record.timestamp_ms is not None:
            kwargs["timestamp"] = record.timestamp_ms
        while True:
            try:
                self.producer.produce(self.config.kafka.topic, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.01)
            except Exception as exc:  # noqa: BLE001 - librdkafka's KafkaException: refused at once
                error = DeliveryFailed(f"Kafka refused the record at once: {exc}")
                if future is not None:
                    future.resolve(None, error)
                    self._record_failure(record, str(error))
                else:
                    on_delivery(error, None)
                return

    def _record_failure(self, record: KafkaRecord, why: str) -> None:
        with self._lock:
            self.failed.append((record, why))
            self.counts.failures += 1
            self._in_flight -= 1
        if self._metrics:
            self._metrics.failures.inc()

    def _choose_partition(self, key: bytes | None) -> int:
        """Called with the lock held: the partition the application's partitioner picks (at
        random where librdkafka picks at random)."""
        return self._partition_for(key, self.partitions, self._rng)

    def _follow_partitions(self) -> None:
        """Keep the partition count fresh: every ``partition_refresh_s``, and at once when a
        delivery or the phase asks (``_refresh_now``)."""
        while not self._closing.is_set():
            self._refresh_now.wait(self.partition_refresh_s)
            self._refresh_now.clear()
            if self._closing.is_set():
                return
            try:
                self.refresh_partitions()
            except Exception as exc:  # noqa: BLE001 - keep the count known; the next refresh retries
                logging.getLogger("ferry.writer").warning(
                    "writer %s could not refresh the partitions of %s: %s",
                    self.writer_id,
                    self.config.kafka.topic,
                    exc,
                )

    def refresh_partitions(self) -> int:
        """Read the topic's partition count from Kafka (through the producer, so librdkafka's
        own metadata follows too) and use the partitions the migration has armed."""
        found = _partition_count(self.producer, self.config.kafka.topic, timeout_s=5)
        usable = self._usable_partitions(found, self.partitions)
        if usable != self.partitions:
            logging.getLogger("ferry.writer").info(
                "writer %s: topic %s now has %d partitions (was %d)",
                self.writer_id,
                self.config.kafka.topic,
                usable,
                self.partitions,
            )
            self.partitions = usable
        return usable

    def _usable_partitions(self, found: int, known: int) -> int:
        """Of the ``found`` partitions, those the Redis-first path may write to: beyond the
        ``known`` ones, a new partition counts once the migration armed it (the mirror arms a
        partition added while it follows; before that, Redis refuses a Redis-first write to
        it). An unarmed migration does not restrict the count."""
        if found <= known:
            return known
        pipe = self.redis.pipeline(transaction=False)  # one round trip, any layout
        for p in range(found):
            pipe.hget(self.keys.partition_state(p), f"frontier:{p}")
        armed = pipe.execute()
        if not any(armed):
            return found
        usable = max(known, 0)
        while usable < found and armed[usable] is not None:
            usable += 1
        return usable

    def _hold(self) -> None:
        """Called with the lock held while draining: wait for the phase to move on."""
        began = time.monotonic()
        deadline = began + self.hold_bound_s
        while self.phase == DRAINING:
            self._check_fence()  # Redis gone: the lease may have ended unseen
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterHoldTimeout(
                    f"send held {self.hold_bound_s:.1f}s in draining without the cutover finishing or "
                    "aborting; the record was not sent, send it again"
                )
            self._phase_changed.wait(min(left, 0.05))
        self.holds_ms.append((time.monotonic() - began) * 1000)

    def _wait_for_shadows(self) -> None:
        """Called with the lock held after a rollback from redis-primary: a send waits until the
        records sent before it are in Redis and Kafka (or were sent the new phase's way)."""
        deadline = time.monotonic() + self.hold_bound_s
        while self._primary_pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterHoldTimeout(
                    f"{self._primary_pending} records sent in redis-primary are not yet in Kafka "
                    f"after {self.hold_bound_s:.1f}s; the record was not sent, send it again"
                )
            self._phase_changed.wait(min(left, 0.05))

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
                raise FerryError(
                    f"{self._in_flight} records still being written after {timeout_s}s "
                    f"({len(self._primary.queue)} waiting for Redis)"
                )
            time.sleep(0.005)  # waiting on the background writer, bounded by the deadline

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver everything sent (within ``timeout_s``), then leave the registry. What did not
        make it is handed back: ``WriterClosed.unsent`` lists exactly those records (their
        futures failed, each saying whether the record may be somewhere)."""
        failed_before = len(self.failed)
        try:
            self.flush(timeout_s)
            stuck = False
        except FerryError:
            stuck = True
        if stuck:  # fail what librdkafka still holds; their reports name them
            self.producer.purge(in_queue=True, in_flight=True, blocking=True)
            self.producer.flush(1.0)
        self._closing.set()
        self._refresh_now.set()
        for t in self._threads:
            t.join(timeout=5)
        if stuck:
            self._primary.abandon("the writer closed before Redis took it")
        try:
            remove_writer(self.redis, self.keys, self.writer_id)
            if self._primary.used and not stuck:
                for state, fields in self._primary.sequence_fields().items():
                    self.redis.hdel(state, *fields)
        except redis.RedisError as exc:  # its heartbeat stops; the cutover treats it as gone
            logging.getLogger("ferry.redis").warning(
                "writer %s could not leave the registry: %s", self.writer_id, exc
            )
        unsent = [record for record, _ in self.failed[failed_before:]]
        if unsent:
            raise WriterClosed(
                f"writer {self.writer_id} closed with {len(unsent)} record(s) not delivered "
                f"within {timeout_s:.0f}s; they are handed back (WriterClosed.unsent)",
                unsent,
            )

    # --- background ----------------------------------------------------------------------
    def _on_delivery(self, mirror: bool):
        def report(err, msg, future: SendFuture | None = None, headers: tuple = ()):
            if err is not None:
                record = KafkaRecord(
                    msg.partition(), -1, msg.timestamp()[1], msg.key(), msg.value(), headers
                )
                if future is not None:
                    future.record = record
                error = DeliveryFailed(f"Kafka did not take the record: {err}")
                self._record_failure(record, str(error))
                if future is not None:
                    future.resolve(None, error)
                return
            self.counts.delivered += 1
            if msg.partition() >= self.partitions:  # librdkafka knows of more partitions
                self._refresh_now.set()
            phase = DUAL_WRITE if mirror else self.phase
            if future is not None:
                future.resolve_kafka(msg.partition(), msg.offset(), phase)
            if not mirror:
                with self._lock:
                    self._in_flight -= 1
                return
            record = KafkaRecord(
                msg.partition(), msg.offset(), msg.timestamp()[1], msg.key(), msg.value(), headers
            )
            with self._lock:
                self._delivered.append((record, time.monotonic()))
                self._delivery_ready.notify()

        return report

    def _poll_deliveries(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.01)

    def _write_redis(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                if not self._delivered:  # woken by the next delivery report, not by a timer
                    self._delivery_ready.wait(0.05)
                batch = list(self._delivered)
                self._delivered.clear()
            if not batch:
                continue
            runs = consecutive_runs(batch)
            calls = []
            for run in runs:
                first = run[0][0]
                args: list = [first.partition, first.offset, run[-1][0].offset + 1]
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
        """Read the phase, acknowledge it, then sleep until the events stream has something new
        (every phase change appends to it: a blocking XREAD wakes at once) or for
        ``poll_interval_s``. While draining, acknowledge as soon as this writer has drained."""
        last_report = [0.0]
        seen = None
        while not self._closing.is_set():
            try:
                if seen is None:
                    last = self.redis.xrevrange(events_key(self.keys), count=1)
                    seen = last[0][0] if last else b"0-0"
                self._follow_once(last_report)
                if self.phase == DRAINING and self.acked_epoch != self.epoch:
                    self._wait_until_drained(self.poll_interval_s)
                    continue
                seen = self._wait_for_event(seen)
            except Exception as exc:  # noqa: BLE001 - keep the last known phase; heartbeats stop, cutover waits
                logging.getLogger("ferry.writer").debug(
                    "writer %s cannot read the phase: %s", self.writer_id, exc
                )
                self._closing.wait(self.poll_interval_s)

    def _wait_for_event(self, seen: bytes) -> bytes:
        reply = self.redis.xread(
            {events_key(self.keys): seen}, count=100, block=max(1, int(self.poll_interval_s * 1000))
        )
        return reply[0][1][-1][0] if reply else seen

    def _wait_until_drained(self, timeout_s: float) -> None:
        """Everything this writer sent is delivered and offered to Redis (no Redis call)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._closing.is_set():
            with self._lock:
                if self._in_flight == 0 and not self._delivered:
                    return
            time.sleep(0.001)  # the delivery and Redis threads move records on

    def _read_phase(self) -> PhaseState:
        """The phase, by the Redis server's clock: a draining whose lease ran out (its
        coordinator died or stalled) is ended here, back to dual-write, by whichever writer
        sees it first. Marks when the phase was last known (the writer's own lease)."""
        asked = time.monotonic()
        lease = read_phase_lease(self.redis, self.keys)
        state = PhaseState(lease.phase, lease.epoch)
        if lease.phase == DRAINING and lease.lease_until_ms is not None:
            if lease.server_ms >= lease.lease_until_ms:
                state = expire_draining(self.redis, self.keys, actor=self.writer_id)
        self._last_read_asked = asked
        return state

    def _follow_once(self, last_report: list[float]) -> None:
        state = self._read_phase()
        with self._lock:
            if (state.phase, state.epoch) != (self.phase, self.epoch):
                if state.phase == DRAINING:
                    self._drain_began = time.monotonic()
                elif self.phase == DRAINING and self._drain_began is not None:
                    # the pause this writer's callers saw: draining as the writer saw it
                    self.last_drain_ms = (time.monotonic() - self._drain_began) * 1000
                if state.phase in REDIS_FIRST and self.phase not in REDIS_FIRST:
                    self._refresh_now.set()  # the Python partitioner takes over
                self.phase, self.epoch = state.phase, state.epoch
                self._phase_changed.notify_all()
            drained = self._in_flight == 0 and not self._delivered
            # after a rollback from redis-primary: only once every Redis-first record has
            # its shadow in Kafka, so Kafka's order is Redis's order
            shadows_done = self.phase in REDIS_FIRST or self._primary_pending == 0
        if self._metrics:
            self._metrics.set_phase(self.phase)
        # acknowledge: in draining only once everything sent is in Kafka and offered to Redis
        if self.acked_epoch != self.epoch and (self.phase != DRAINING or drained) and shadows_done:
            self.acked_epoch = self.epoch
            self._report()
            last_report[0] = time.monotonic()
        elif time.monotonic() - last_report[0] >= 1.0:
            self._report()
            last_report[0] = time.monotonic()

    def _report(self) -> None:
        read_at = self._last_read_asked
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
        self._phase_read_at = read_at


def _partitioner_name(config: StreamConfig, given: str | None, producer_settings) -> str:
    """The application's partitioner: the argument, else ``producer_settings``, else the
    config's ``writer.partitioner``; a name librdkafka does not have is refused."""
    settings = producer_settings or {}
    for name, where in (
        (given, "DualWriter partitioner"),
        (settings.get("partitioner"), "DualWriter producer_settings['partitioner']"),
    ):
        if name is not None and name not in PARTITIONERS:
            raise ConfigError(
                f"{where}: {name!r} is not one of {', '.join(PARTITIONERS)} (librdkafka's)"
            )
    if given is not None and settings.get("partitioner", given) != given:
        raise ConfigError(
            f"DualWriter: two partitioners, {given!r} (partitioner) and "
            f"{settings['partitioner']!r} (producer_settings); give one"
        )
    return given or settings.get("partitioner") or config.writer.partitioner


def _partition_count(producer, topic: str, timeout_s: float = 10) -> int:
    try:
        metadata = producer.list_topics(topic, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - librdkafka's KafkaException
        raise KafkaError(f"cannot read the metadata of topic {topic!r}: {exc}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise KafkaError(
            f"topic {topic!r} does not exist or has no partitions"
            + (f" ({found.error})" if found is not None and found.error else "")
        )
    return len(found.partitions)


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
        from ferry.live.phases import PHASES

        for p in PHASES:
            self.phase.labels(writer=self.writer_id, phase=p).set(1 if p == phase else 0)
