"""The writer's Redis-first path (``redis-primary`` and ``redis-only``), on its own thread.

Records queue in ``send()`` order; each round takes what is queued, one batch per partition,
each with the writer's id and a new sequence number, and sends every batch through
``primary.lua`` in one round trip. The script is idempotent per (writer, partition, sequence):
a batch sent again after a lost reply gets the entry IDs of its first write and writes nothing.
A batch Redis refuses for a passing reason (unreachable, out of memory, loading, a failover, a
partition the mirror has not armed yet) is sent again, whole and before anything queued after
it, with capped exponential backoff (tenacity's), until the record's delivery timeout; then its
futures fail, saying whether Redis may hold it. A refusal no wait fixes (a wrong key type, an
ACL denial) fails its futures at once. Then each entry's Kafka shadow is produced, in order.
Nothing here ends the thread but ``close()``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import redis
import tenacity

from ferry.core.entries import SHADOW_HEADER, KafkaRecord, record_args
from ferry.core.ingest import _script, script_error
from ferry.live.delivery import Delivery, RedisWriteFailed, SendFuture, ShadowNotDelivered
from ferry.live.phases import DRAINING, DUAL_WRITE, REDIS_ONLY
from ferry.redis.faults import transient_cause

log = logging.getLogger("ferry.writer")
BACKOFF = tenacity.wait_exponential(multiplier=0.05, max=2.0)  # 50 ms, 100 ms, ... 2 s
ROUND_RECORDS = 2000  # taken from the queue per round: bounds a batch and its stored IDs


@dataclass
class Batch:
    partition: int
    seq: int
    items: list[tuple[KafkaRecord, SendFuture]]
    deadline: float  # monotonic: the first record's delivery timeout
    unknown: bool = False  # a round trip carrying it failed: Redis may hold it
    last_error: str = field(default="")


def retry_helps(error: BaseException) -> bool:
    """A refusal that passes: Redis unreachable, busy, out of memory, in a failover, or a
    partition not yet armed (the mirror arms partitions added to the topic)."""
    if isinstance(error, redis.exceptions.NoScriptError):
        return True  # a restarted Redis lost its script cache: loaded again, then resent
    return transient_cause(error) is not None or "FERRY_NOT_ARMED" in str(error)


def _backoff_s(failures: int) -> float:
    state = tenacity.RetryCallState(None, None, (), {})
    state.attempt_number = max(1, failures)
    return BACKOFF(state)


class PrimaryPath:
    def __init__(self, writer, delivery_timeout_s: float) -> None:
        self.w = writer
        self.delivery_timeout_s = delivery_timeout_s
        self.script = _script(writer.redis, "primary.lua")
        self.script.sha = writer.redis.script_load(self.script.script)
        self.queue: deque[tuple[KafkaRecord, SendFuture, float]] = deque()
        self.batches: list[Batch] = []  # taken from the queue, not yet answered by Redis
        self.seq = 0  # one counter for all partitions: increasing per partition too
        self.used: set[int] = set()  # partitions with a sequence in the state hash

    def enqueue(self, record: KafkaRecord, future: SendFuture) -> None:
        """Called with the writer's lock held."""
        self.queue.append((record, future, time.monotonic() + self.delivery_timeout_s))

    def pending_records(self) -> list[tuple[KafkaRecord, SendFuture]]:
        """Called with the writer's lock held: what Redis has not answered for."""
        taken = [item for b in self.batches for item in b.items]
        return taken + [(r, f) for r, f, _ in self.queue]

    def abandon(self, why: str) -> None:
        """At close, after the thread stopped: fail every record Redis has not answered for."""
        for b in self.batches:
            self._fail(b, why)
        self.batches = []
        with self.w._lock:
            rest = list(self.queue)
            self.queue.clear()
        for record, future, _ in rest:
            self._fail(Batch(record.partition, 0, [(record, future)], 0.0), why)

    def run(self) -> None:
        failures = 0
        while not self.w._closing.is_set():
            try:
                if not self.batches:
                    self.batches = self._take()
                if not self.batches:
                    time.sleep(0.002)  # idle: nothing queued
                    continue
                self._write_once()
            except Exception:  # noqa: BLE001 - a bug must not strand the queue: log, retry
                log.exception("writer %s: Redis-first round failed", self.w.writer_id)
            self._expire()
            failures = failures + 1 if self.batches else 0
            if self.batches:
                self.w._closing.wait(_backoff_s(failures))

    def _take(self) -> list[Batch]:
        with self.w._lock:
            take = min(len(self.queue), ROUND_RECORDS)
            items = [self.queue.popleft() for _ in range(take)]
        by_partition: dict[int, Batch] = {}
        for record, future, deadline in items:
            batch = by_partition.get(record.partition)
            if batch is None:
                self.seq += 1
                batch = by_partition[record.partition] = Batch(
                    record.partition, self.seq, [], deadline
                )
            batch.items.append((record, future))
        self.used.update(by_partition)
        return list(by_partition.values())

    def sequence_fields(self) -> dict[str, list[str]]:
        """The state-hash fields that make this writer's batches idempotent, per hash (the
        partition's state in the spread layout); removed when it closes (a batch is never
        sent again after that)."""
        w, keys = self.w.writer_id, self.w.keys
        fields: dict[str, list[str]] = {}
        for p in sorted(self.used):
            fields.setdefault(keys.partition_state(p), []).extend(
                f"{kind}:{w}:{p}" for kind in ("wseq", "wids")
            )
        return fields

    def _write_once(self) -> None:
        w = self.w
        pipe = w.redis.pipeline(transaction=False)
        for b in self.batches:
            args: list = [b.partition, w.writer_id, b.seq]
            for record, _ in b.items:
                args += record_args(record)[1:]
            # EVALSHA itself: a pipeline running a Script asks SCRIPT EXISTS on every execute
            pipe.execute_command(
                "EVALSHA",
                self.script.sha,
                2,
                w.keys.partition_state(b.partition),
                w.keys.stream_for(b.partition),
                *args,
            )
        try:
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - the round trip's outcome is unknown: send it again
            error = f"{type(exc).__name__}: {exc}"
            if error != self.batches[0].last_error:  # once per cause, not once per retry
                log.warning("writer %s: Redis-first write failed, retrying: %s", w.writer_id, exc)
            for b in self.batches:
                b.unknown, b.last_error = True, error
            return
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self.script.sha = w.redis.script_load(self.script.script)  # Redis restarted
        keep = []
        for b, reply in zip(self.batches, replies, strict=True):
            if not isinstance(reply, Exception):
                self._after_redis(b, reply)
            elif retry_helps(reply) and time.monotonic() < b.deadline:
                b.last_error = str(reply)
                keep.append(b)
            else:
                error = script_error(reply) if isinstance(reply, redis.ResponseError) else reply
                self._fail(b, f"Redis refused it: {error}")
        self.batches = keep

    def _expire(self) -> None:
        now = time.monotonic()
        for b in [b for b in self.batches if now >= b.deadline]:
            self.batches.remove(b)
            self._fail(b, f"Redis did not take it within {self.delivery_timeout_s:.0f}s")

    def _fail(self, b: Batch, why: str) -> None:
        n = len(b.items)
        maybe = " (Redis may hold it: a reply was lost)" if b.unknown else ""
        error = RedisWriteFailed(
            f"{n} record(s) of partition {b.partition} not written: {why}"
            + (f"; last error: {b.last_error}" if b.last_error and b.last_error not in why else "")
            + maybe,
            known=not b.unknown,
        )
        with self.w._lock:
            self.w.failed += [(r, str(error)) for r, _ in b.items]
            self.w.counts.failures += n
            self.w._in_flight -= n
            self.w._primary_pending -= n
            self.w._phase_changed.notify_all()
        for _, future in b.items:
            future.resolve(None, error)

    def _after_redis(self, b: Batch, reply) -> None:
        w, n = self.w, len(b.items)
        phase, ids = reply[0].decode(), [i.decode() for i in reply[1:]]
        if not ids:  # the phase went back toward Kafka meanwhile: send them the new phase's way
            with w._lock:
                w.counts.rerouted += n
            for record, future in b.items:
                w._produce_record(record, future, mirror=phase in (DUAL_WRITE, DRAINING))
            with w._lock:  # produced in order before any later send() may go to Kafka
                w._primary_pending -= n
                w._phase_changed.notify_all()
            return
        w.counts.written_redis_first += n
        if w._metrics:
            w._metrics.written.inc(n)
        if phase == REDIS_ONLY:
            with w._lock:
                w._in_flight -= n
                w._primary_pending -= n
                w._phase_changed.notify_all()
            for (record, future), entry_id in zip(b.items, ids, strict=True):
                future.resolve(Delivery(record.partition, None, entry_id, phase))
            return
        for (record, future), entry_id in zip(b.items, ids, strict=True):
            report = functools.partial(
                self.deliver_shadow, record=record, future=future, entry_id=entry_id, phase=phase
            )
            shadow = KafkaRecord(
                record.partition,
                -1,
                record.timestamp_ms,
                record.key,
                record.value,
                (*record.headers, (SHADOW_HEADER, entry_id.encode())),
            )
            w._produce_record(shadow, None, mirror=False, on_delivery=report)

    def deliver_shadow(self, err, msg, record, future, entry_id: str, phase: str) -> None:
        w = self.w
        with w._lock:
            if err is None:
                w.counts.shadowed += 1
            else:
                w.counts.failures += 1
                w.failed.append((record, f"shadow not delivered to Kafka: {err}"))
            w._in_flight -= 1
            w._primary_pending -= 1
            if not w._primary_pending:
                w._phase_changed.notify_all()
        if err is None:
            future.resolve(Delivery(record.partition, msg.offset(), entry_id, phase))
        else:
            future.resolve(
                None,
                ShadowNotDelivered(
                    f"record in Redis as {entry_id} (partition {record.partition}) but its Kafka "
                    f"shadow was not delivered ({err}): do not send it again; a rollback cannot "
                    "bring it back to Kafka"
                ),
            )
