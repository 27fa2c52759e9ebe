"""What ``DualWriter.send`` hands back: each record's fate, as the Kafka producer it replaces
reports it (a future, and an optional ``on_delivery(err, delivery)`` callback).

- Kafka phases (``kafka-only``, ``dual-write``, a rerouted record): the fate is Kafka's
  delivery report; Kafka is the source of truth, the copy to Redis follows (the writer or
  the mirror brings it).
- ``redis-primary``: the record is in Redis (its entry ID) *and* its Kafka shadow is
  delivered (its offset), so a rollback can bring it back.
- ``redis-only``: the record is in Redis.

A failure says whether the record is anywhere: ``ShadowNotDelivered`` is in Redis (do not
send it again), ``RedisWriteFailed`` says whether Redis may hold it (``known``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ferry.errors import FerryError, KafkaError


@dataclass(frozen=True)
class Delivery:
    partition: int
    offset: int | None  # the Kafka offset of the record or its shadow; None in redis-only
    entry_id: str | None  # the Redis entry ID when Redis took it first; None in Kafka phases
    phase: str  # the phase the record was written in


class DeliveryFailed(KafkaError):
    """Kafka did not take the record (its delivery report's error); it is nowhere."""


class RecordTooLarge(FerryError):
    """The record is larger than the producer may send (``message.max.bytes``); not sent."""


class WriterFenced(FerryError):
    """The writer has not reached Redis for longer than its lease in a phase that needs Redis
    (``draining``, ``redis-primary``, ``redis-only``): it may have missed a phase change, so
    it refuses new sends until Redis answers again. Nothing was sent."""


class ShadowNotDelivered(KafkaError):
    """The record is in Redis (the primary) but its Kafka shadow was not delivered: do not send
    it again; a rollback cannot bring it back to Kafka (the rollback plan counts it)."""


class RedisWriteFailed(FerryError):
    """Redis did not take a Redis-first record. ``known`` is False when a reply was lost, so
    Redis may hold it: a writer with the same id sending the same batch again writes nothing."""

    def __init__(self, message: str, *, known: bool = True) -> None:
        super().__init__(message)
        self.known = known


class WriterClosed(FerryError):
    """``close()`` could not deliver everything: ``unsent`` are the records of no side."""

    def __init__(self, message: str, unsent: list) -> None:
        super().__init__(message)
        self.unsent = unsent


OnDelivery = Callable[[BaseException | None, Delivery | None], None]
log = logging.getLogger("ferry.writer")


class SendFuture:
    """One record's fate. Lighter than ``concurrent.futures.Future`` (the send path is hot):
    the writer's futures share one condition, created once."""

    __slots__ = (
        "_board",
        "_callback",
        "_done",
        "_error",
        "_headers",
        "_kafka",
        "_report",
        "_result",
        "_waiting",
        "record",
    )

    def __init__(self, board: threading.Condition, callback: OnDelivery | None, record=None):
        self._board = board
        self._callback = callback
        self._done = False
        self._waiting = False  # someone waits: resolving must notify the board
        self._result: Delivery | None = None
        self._kafka: tuple | None = None  # (partition, offset, phase): Delivery made on demand
        self._error: BaseException | None = None
        self.record = record  # what was sent (KafkaRecord), for close()'s hand-back
        self._report = None  # the writer's handler of this record's Kafka delivery report
        self._headers: tuple = ()  # the headers sent (librdkafka's reports carry none)

    def __call__(self, err, msg) -> None:
        """librdkafka's per-record delivery callback: the future itself, so a send builds no
        closure (one object per record, not two)."""
        self._report(err, msg, self, self._headers)

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Delivery:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        if self._result is None:
            self._result = Delivery(self._kafka[0], self._kafka[1], None, self._kafka[2])
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        with self._board:
            self._waiting = True
            if not self._board.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"the record's fate is not known after {timeout}s")

    def resolve_kafka(self, partition: int, offset: int, phase: str) -> None:
        """Kafka's delivery report (the hot path: no Delivery is built unless asked for)."""
        if self._callback is not None:
            self.resolve(Delivery(partition, offset, None, phase))
            return
        self._kafka = (partition, offset, phase)
        self._done = True
        if self._waiting:
            with self._board:
                self._board.notify_all()

    def resolve(self, result: Delivery | None, error: BaseException | None = None) -> None:
        """Called once by the writer's threads."""
        if self._done:
            return
        self._result, self._error = result, error
        self._done = True
        if self._waiting:  # set under the board before a waiter sleeps: it is woken
            with self._board:
                self._board.notify_all()
        if self._callback is not None:
            try:
                self._callback(error, result)
            except Exception:  # noqa: BLE001 - the application's callback must not stop the writer
                log.exception("the on_delivery callback raised")
