"""The consumer side of a hand-over: ``StreamConsumer`` reads a translated Redis consumer
group so that nothing the Kafka group consumed is delivered again, claims what a dead
consumer left pending, dead-letters what keeps failing, and (idempotent) records what it
processed in the same MULTI as the XACK."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.entries import REDIS_ORIGIN, KafkaRecord, entry_to_record
from ferry.core.ingest import migration_keys
from ferry.errors import HandoverError
from ferry.live.group_keys import group_offsets_key  # noqa: F401 - importable from here too
from ferry.live.idempotency import DEFAULT_TTL_S, KeyFunction, ProcessedKeys, log_duplicates
from ferry.redis.target import connect_redis

logger = logging.getLogger("ferry.live.consumer")


def _consumed(entry_id: str, record: KafkaRecord, committed: dict, consumed_ids) -> bool:
    if record.offset == REDIS_ORIGIN:
        return entry_id in consumed_ids
    return record.offset < committed.get(record.partition, 0)


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    record: KafkaRecord
    processed_key: bytes | None = None  # its idempotency record (idempotent consumers only)


@dataclass(frozen=True)
class Processed:
    """What one ``StreamConsumer.process`` call did with its entries."""

    done: int = 0  # handled: effect, processed key and XACK committed together
    duplicates: int = 0  # already processed (key recorded): acknowledged, handler not run
    failed: int = 0  # the handler raised: left pending for a retry
    dead_lettered: int = 0  # the handler raised for the last time

    def __bool__(self) -> bool:
        return bool(self.done or self.duplicates or self.failed or self.dead_lettered)


# handler(delivery, tx): queue the effect's Redis writes on tx (inside MULTI); reads go
# through another client, as tx only queues
Handler = Callable[[Delivery, "redis.client.Pipeline"], None]


class StreamConsumer:
    """Reads a translated Redis consumer group in batches.

    Entries the Kafka group had consumed are acknowledged without being delivered; entries
    left pending by a dead consumer are claimed after ``claim_idle_ms``; an entry that failed
    ``max_failures`` times goes to the dead-letter stream instead of being acknowledged.

    Idempotent (``idempotent=True``, or an ``idempotency_key`` function of the record): every
    entry has a key (see ``ferry.live.idempotency``), recorded for ``idempotency_ttl_s`` once the
    entry is processed; an entry whose key is recorded is acknowledged without being delivered
    and counted in ``duplicates``. ``process(handler)`` commits the handler's Redis writes,
    the key and the XACK in one MULTI (exactly once); ``ack`` records the keys with the XACK,
    after an effect outside Redis (at least once, with the window narrowed to a crash
    between the effect and the ack).
    """

    def __init__(
        self,
        config: StreamConfig,
        group: str,
        consumer: str | None = None,
        *,
        batch: int = 100,
        block_ms: int = 500,
        claim_idle_ms: int = 30_000,
        max_failures: int = 3,
        idempotent: bool = False,
        idempotency_key: KeyFunction | None = None,
        idempotency_ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        self.client = connect_redis(config)
        self.keys = migration_keys(config)
        self.stream = self.keys.stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self.batch, self.block_ms = batch, block_ms
        self.claim_idle_ms, self.max_failures = claim_idle_ms, max_failures
        self.failures_key = f"{group_offsets_key(self.keys, group)}:failures"
        self.dead_letter = f"{self.keys.tag}:ferry:dead:{group}"
        raw = self.client.hgetall(group_offsets_key(self.keys, group))
        if not raw:
            raise HandoverError(
                f"group {group!r} was not translated: run 'ferry translate-group' first"
            )
        self.committed = {int(k): int(v) for k, v in raw.items() if k != b"translated"}
        self.consumed_ids = frozenset(
            m.decode()
            for m in self.client.smembers(f"{group_offsets_key(self.keys, group)}:shadows")
        )
        self.skipped = 0
        self.duplicates = 0
        self.processed: ProcessedKeys | None = None
        if idempotent or idempotency_key is not None:
            self.processed = ProcessedKeys(
                self.client, self.keys.tag, group, idempotency_key, idempotency_ttl_s
            )

    def poll(self) -> list[Delivery]:
        """The next entries to process: stale pending ones first, then new ones. Empty only
        when nothing arrived within ``block_ms`` (skipped entries do not end a poll)."""
        while True:
            entries, deliveries = self._read_once()
            if deliveries or not entries:
                return deliveries

    def _read_once(self) -> tuple[list, list[Delivery]]:
        claimed = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
        )
        entries = list(claimed[1]) if claimed else []
        if len(entries) < self.batch:
            got = self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self.batch - len(entries),
                block=self.block_ms,
            )
            for _, items in got or []:
                entries += items
        deliveries, skip = [], []
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                skip.append(entry_id)
                continue
            record = entry_to_record(fields)
            if _consumed(entry_id.decode(), record, self.committed, self.consumed_ids):
                skip.append(entry_id)  # the Kafka group already consumed it
            else:
                deliveries.append(Delivery(entry_id.decode(), record))
        if skip:
            self.client.xack(self.stream, self.group, *skip)
            self.skipped += len(skip)
        if self.processed is not None and deliveries:
            deliveries = self._drop_processed(deliveries)
        return entries, deliveries

    def _drop_processed(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Key each delivery; acknowledge those already processed (a key function that
        raises counts as a failure of that entry)."""
        keyed = []
        for d in deliveries:
            try:
                keyed.append(
                    Delivery(d.entry_id, d.record, self.processed.name_of(d.entry_id, d.record))
                )
            except Exception as exc:  # noqa: BLE001 - the user's key function
                self.fail(d, f"idempotency key: {type(exc).__name__}: {exc}")
        seen = self.processed.recorded([d.processed_key for d in keyed])
        self._ack_duplicates([d for d, s in zip(keyed, seen, strict=True) if s])
        return [d for d, s in zip(keyed, seen, strict=True) if not s]

    def _ack_duplicates(self, duplicates: list[Delivery]) -> None:
        if duplicates:
            ids = [d.entry_id for d in duplicates]
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *ids)
            pipe.hdel(self.failures_key, *ids)
            pipe.execute()
            self.duplicates += len(duplicates)
            log_duplicates(self.group, [(d.entry_id, d.processed_key) for d in duplicates])

    def process(self, handler: Handler, deliveries: Sequence[Delivery] | None = None) -> Processed:
        """Run ``handler(delivery, tx)`` on each delivery (``poll()``'s when none are given) and
        commit what it queued on ``tx``, the processed key and the XACK in one MULTI. The key
        is WATCHed and checked first, so an entry another consumer committed meanwhile is a
        duplicate: its queued writes are dropped. A handler that raises leaves nothing
        written and goes through ``fail``. Redis does not undo the other commands of an EXEC
        when one of them fails (a wrong key type, say): that error is raised."""
        before = self.duplicates
        counts = {"done": 0, "failed": 0, "dead_lettered": 0}
        for delivery in self.poll() if deliveries is None else deliveries:
            outcome = self._process_one(handler, delivery)
            if outcome in counts:
                counts[outcome] += 1
        return Processed(duplicates=self.duplicates - before, **counts)

    def _process_one(self, handler: Handler, delivery: Delivery) -> str:
        name = delivery.processed_key
        with self.client.pipeline(transaction=True) as tx:
            if name is not None:
                tx.watch(name)
                if tx.get(name) is not None:  # processed since the poll
                    tx.reset()
                    self._ack_duplicates([delivery])
                    return "duplicate"
            tx.multi()
            try:
                handler(delivery, tx)
            except Exception as exc:  # noqa: BLE001 - the handler's failure is the entry's
                tx.reset()  # nothing queued is sent
                logger.warning("group %s: entry %s failed: %s", self.group, delivery.entry_id, exc)
                reason = f"{type(exc).__name__}: {exc}"
                return "dead_lettered" if self.fail(delivery, reason) else "failed"
            if name is not None:
                self.processed.record(tx, name, delivery.entry_id)
            tx.xack(self.stream, self.group, delivery.entry_id)
            tx.hdel(self.failures_key, delivery.entry_id)
            try:
                tx.execute()
            except redis.WatchError:  # another consumer recorded the key after our check
                self._ack_duplicates([delivery])
                return "duplicate"
        return "done"

    def ack(self, *deliveries: Delivery) -> None:
        """Acknowledge processed entries; an idempotent consumer records their keys in the
        same MULTI as the XACK."""
        if not deliveries:
            return
        ids = [d.entry_id for d in deliveries]
        keyed = [d for d in deliveries if d.processed_key is not None]
        if self.processed is None or not keyed:
            self.client.xack(self.stream, self.group, *ids)
            self.client.hdel(self.failures_key, *ids)
            return
        pipe = self.client.pipeline(transaction=True)
        for d in keyed:
            self.processed.record(pipe, d.processed_key, d.entry_id)
        pipe.xack(self.stream, self.group, *ids)
        pipe.hdel(self.failures_key, *ids)
        pipe.execute()

    def fail(self, delivery: Delivery, reason: str = "") -> bool:
        """Leave the entry pending for a retry; after ``max_failures`` move it to the
        dead-letter stream and acknowledge it. True when it was dead-lettered."""
        failures = self.client.hincrby(self.failures_key, delivery.entry_id, 1)
        if failures < self.max_failures:
            return False
        fields = self.client.xrange(self.stream, delivery.entry_id, delivery.entry_id)[0][1]
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            self.dead_letter,
            {**fields, b"source_id": delivery.entry_id, b"failures": failures, b"reason": reason},
        )
        pipe.xack(self.stream, self.group, delivery.entry_id)
        pipe.hdel(self.failures_key, delivery.entry_id)
        pipe.execute()
        return True

    def lag(self) -> int:
        """Entries not yet delivered to the group (Redis's own count, right thanks to ENTRIESREAD)."""
        for info in self.client.xinfo_groups(self.stream):
            if info["name"].decode() == self.group:
                return int(info.get("lag") or 0)
        raise HandoverError(f"no group {self.group!r} on {self.stream}")
