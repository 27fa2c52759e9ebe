"""The consumer side of a hand-over: ``StreamConsumer`` reads a translated Redis consumer
group so that nothing the Kafka group consumed is delivered again, claims what a dead
consumer left pending, dead-letters what keeps failing, and (idempotent) records what it
processed in the same MULTI as the XACK."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.entries import REDIS_ORIGIN, KafkaRecord, entry_to_record
from ferry.core.ingest import migration_keys, migration_partitions
from ferry.errors import HandoverError
from ferry.live.group_keys import (  # noqa: F401 - group_offsets_key importable from here too
    GroupTarget,
    dead_letter_key,
    group_offsets_key,
    group_targets,
    handover_record_key,
)
from ferry.live.idempotency import DEFAULT_TTL_S, KeyFunction, ProcessedKeys, log_duplicates
from ferry.redis.target import connect_redis

logger = logging.getLogger("ferry.live.consumer")
# on a cluster, a group over many slots blocks on one stream at a time for at least this long
BLOCK_SLICE_MS = 20


def _consumed(entry_id: str, record: KafkaRecord, committed: dict, consumed_ids) -> bool:
    if record.offset == REDIS_ORIGIN:
        return entry_id in consumed_ids
    return record.offset < committed.get(record.partition, 0)


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    record: KafkaRecord
    processed_key: bytes | None = None  # its idempotency record (idempotent consumers only)
    stream: str = ""  # the Redis stream it came from (IDs are unique per stream only)


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

    In the per-partition and spread layouts the group is one Redis group per partition
    stream: a poll reads them in turn, and everything written with an entry's XACK (failure
    count, dead letter, idempotency key) sits beside its stream, in its slot. The handler's
    own writes must then share the partition's slot on a cluster (``keys.partition_tag(p)``).
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
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self.batch, self.block_ms = batch, block_ms
        self.claim_idle_ms, self.max_failures = claim_idle_ms, max_failures
        self.targets = self._translated_targets()
        self.by_stream = {t.stream: t for t in self.targets}
        self.stream = self.targets[0].stream  # the merged layout's one stream
        self.failures_key = self.targets[0].failures
        self.dead_letter = dead_letter_key(self.keys, group, self.targets[0])
        self.committed: dict[int, int] = {}
        self.consumed: dict[str, frozenset[str]] = {}
        for t in self.targets:
            raw = self.client.hgetall(t.offsets)
            self.committed.update({int(k): int(v) for k, v in raw.items() if k != b"translated"})
            self.consumed[t.stream] = frozenset(m.decode() for m in self.client.smembers(t.shadows))
        self.skipped = 0
        self.duplicates = 0
        self._turn = 0  # the stream a multi-stream poll starts from
        self._next_claim = 0.0  # several streams: when stale entries are next looked for
        self.processed_by_stream: dict[str, ProcessedKeys] = {}
        if idempotent or idempotency_key is not None:
            self.processed_by_stream = {
                t.stream: ProcessedKeys(
                    self.client, self._tag(t), group, idempotency_key, idempotency_ttl_s
                )
                for t in self.targets
            }
        # the merged layout's one record of processed keys (None: not idempotent)
        self.processed = self.processed_by_stream.get(self.stream)

    def _translated_targets(self) -> list[GroupTarget]:
        """The streams of the group (HGETALL only: the consumer role's commands)."""
        missing = HandoverError(
            f"group {self.group!r} was not translated: run 'ferry translate-group' first"
        )
        if self.keys.layout == "merged":
            targets = group_targets(self.keys, self.group, [])
            if not self.client.hgetall(targets[0].offsets):
                raise missing
            return targets
        record = self.client.hgetall(handover_record_key(self.keys, self.group))
        if b"done" not in record:
            raise missing
        partitions = [int(p) for p in json.loads(record.get(b"starts") or "{}")]  # translated
        added = sorted(set(migration_partitions(self.client, self.keys)) - set(partitions))
        if added:  # their entries would never be delivered: refuse rather than skip them
            raise HandoverError(
                f"partition(s) {added} joined the migration after group {self.group!r} was "
                "handed over and have no Redis group; ferry does not hand a grown topic over"
            )
        return group_targets(self.keys, self.group, partitions)

    def _tag(self, target: GroupTarget) -> str:
        return (
            self.keys.tag if target.partition is None else self.keys.partition_tag(target.partition)
        )

    def poll(self) -> list[Delivery]:
        """The next entries to process: stale pending ones first, then new ones. Empty only
        when nothing arrived within ``block_ms`` (skipped entries do not end a poll)."""
        while True:
            entries, deliveries = self._read_once()
            if deliveries or not entries:
                return deliveries

    def _read_once(self) -> tuple[list, list[Delivery]]:
        """One pass over the streams: claims and new entries, up to ``batch``. With several
        streams, each is read without blocking (stale entries claimed at most every quarter
        of ``claim_idle_ms``), and only a pass that found nothing blocks: on all of them in
        one call where they share a slot or the server is standalone, else on one stream at
        a time, in turn, for up to ``block_ms`` in all (an entry waits at most one round)."""
        got: list[tuple[GroupTarget, list]] = []
        room = self.batch
        n = len(self.targets)
        claim = n == 1 or time.monotonic() >= self._next_claim
        if claim and n > 1:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 4000
        for i in range(n):
            target = self.targets[(self._turn + i) % n]
            block = None if n > 1 else self.block_ms
            found = self._read_stream(target, room, block, claim)
            if found:
                got.append((target, found))
                room -= len(found)
            if room <= 0:
                break
        self._turn = (self._turn + 1) % n
        if not got and n > 1:
            got = self._block_for_any()
        entries, deliveries = [], []
        for target, found in got:
            entries += found
            deliveries += self._deliveries(target, found)
        return entries, deliveries

    def _read_stream(
        self, target: GroupTarget, count: int, block: int | None, claim: bool = True
    ) -> list:
        entries = []
        if claim:
            claimed = self.client.xautoclaim(
                target.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
            )
            entries = list(claimed[1]) if claimed else []
        if len(entries) < count:
            got = self.client.xreadgroup(
                self.group, self.consumer, {target.stream: ">"},
                count=count - len(entries), block=block,
            )  # fmt: skip
            for _, items in got or []:
                entries += items
        return entries

    def _block_for_any(self) -> list[tuple[GroupTarget, list]]:
        from redis.cluster import RedisCluster

        if (
            not isinstance(self.client, RedisCluster)
            or len({self._tag(t) for t in self.targets}) == 1
        ):
            got = self.client.xreadgroup(  # COUNT is per stream
                self.group, self.consumer, {t.stream: ">" for t in self.targets},
                count=max(1, self.batch // len(self.targets)), block=self.block_ms,
            )  # fmt: skip
            return [(self.by_stream[_text(s)], items) for s, items in got or [] if items]
        n = len(self.targets)
        slice_ms = max(BLOCK_SLICE_MS, self.block_ms // n)
        deadline = time.monotonic() + self.block_ms / 1000
        while True:
            target = self.targets[self._turn]
            self._turn = (self._turn + 1) % n
            found = self._read_stream(target, self.batch, slice_ms, claim=False)
            if found:
                return [(target, found)]
            if time.monotonic() >= deadline:
                return []

    def _deliveries(self, target: GroupTarget, entries: list) -> list[Delivery]:
        deliveries, skip = [], []
        consumed = self.consumed[target.stream]
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                skip.append(entry_id)
                continue
            record = entry_to_record(fields)
            if _consumed(entry_id.decode(), record, self.committed, consumed):
                skip.append(entry_id)  # the Kafka group already consumed it
            else:
                deliveries.append(Delivery(entry_id.decode(), record, None, target.stream))
        if skip:
            self.client.xack(target.stream, self.group, *skip)
            self.skipped += len(skip)
        if self.processed_by_stream and deliveries:
            deliveries = self._drop_processed(target, deliveries)
        return deliveries

    def _target(self, delivery: Delivery) -> GroupTarget:
        if not delivery.stream and len(self.targets) > 1:  # IDs repeat across streams
            raise HandoverError(
                f"entry {delivery.entry_id}: a Delivery without its stream, and group "
                f"{self.group!r} reads {len(self.targets)} streams; pass the deliveries poll() gave"
            )
        return self.by_stream[delivery.stream or self.stream]

    def _drop_processed(self, target: GroupTarget, deliveries: list[Delivery]) -> list[Delivery]:
        """Key each delivery; acknowledge those already processed (a key function that
        raises counts as a failure of that entry)."""
        processed = self.processed_by_stream[target.stream]
        scope = "" if target.partition is None else f"{target.partition}:"
        keyed = []
        for d in deliveries:
            try:
                name = processed.name_of(scope + d.entry_id, d.record)
                keyed.append(Delivery(d.entry_id, d.record, name, d.stream))
            except Exception as exc:  # noqa: BLE001 - the user's key function
                self.fail(d, f"idempotency key: {type(exc).__name__}: {exc}")
        seen = processed.recorded([d.processed_key for d in keyed])
        self._ack_duplicates([d for d, s in zip(keyed, seen, strict=True) if s])
        return [d for d, s in zip(keyed, seen, strict=True) if not s]

    def _ack_duplicates(self, duplicates: list[Delivery]) -> None:
        for target, group in self._by_target(duplicates):
            ids = [d.entry_id for d in group]
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(target.stream, self.group, *ids)
            pipe.hdel(target.failures, *ids)
            pipe.execute()
            self.duplicates += len(group)
            log_duplicates(self.group, [(d.entry_id, d.processed_key) for d in group])

    def _by_target(self, deliveries: Sequence[Delivery]) -> list[tuple[GroupTarget, list]]:
        out: dict[str, list[Delivery]] = {}
        for d in deliveries:
            out.setdefault(self._target(d).stream, []).append(d)
        return [(self.by_stream[s], group) for s, group in out.items()]

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
        name, target = delivery.processed_key, self._target(delivery)
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
                self.processed_by_stream[target.stream].record(tx, name, delivery.entry_id)
            tx.xack(target.stream, self.group, delivery.entry_id)
            tx.hdel(target.failures, delivery.entry_id)
            try:
                tx.execute()
            except redis.WatchError:  # another consumer recorded the key after our check
                self._ack_duplicates([delivery])
                return "duplicate"
        return "done"

    def ack(self, *deliveries: Delivery) -> None:
        """Acknowledge processed entries; an idempotent consumer records their keys in the
        same MULTI as the XACK."""
        for target, group in self._by_target(deliveries):
            ids = [d.entry_id for d in group]
            keyed = [d for d in group if d.processed_key is not None]
            pipe = self.client.pipeline(transaction=bool(keyed and self.processed_by_stream))
            for d in keyed if self.processed_by_stream else ():
                self.processed_by_stream[target.stream].record(pipe, d.processed_key, d.entry_id)
            pipe.xack(target.stream, self.group, *ids)
            pipe.hdel(target.failures, *ids)
            pipe.execute()

    def fail(self, delivery: Delivery, reason: str = "") -> bool:
        """Leave the entry pending for a retry; after ``max_failures`` move it to the
        dead-letter stream and acknowledge it. True when it was dead-lettered."""
        target = self._target(delivery)
        failures = self.client.hincrby(target.failures, delivery.entry_id, 1)
        if failures < self.max_failures:
            return False
        fields = self.client.xrange(target.stream, delivery.entry_id, delivery.entry_id)[0][1]
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            dead_letter_key(self.keys, self.group, target),
            {**fields, b"source_id": delivery.entry_id, b"failures": failures, b"reason": reason},
        )
        pipe.xack(target.stream, self.group, delivery.entry_id)
        pipe.hdel(target.failures, delivery.entry_id)
        pipe.execute()
        return True

    def lag(self) -> int:
        """Entries not yet delivered to the group (Redis's own count, right thanks to
        ENTRIESREAD), over its streams."""
        return sum(int(info.get("lag") or 0) for info in self._group_infos())

    def backlog(self) -> int:
        """Entries not yet delivered plus those delivered and not acknowledged, over its
        streams: zero once the group has processed everything in them."""
        return sum(int(i.get("lag") or 0) + int(i["pending"]) for i in self._group_infos())

    def _group_infos(self) -> list[dict]:
        out = []
        for target in self.targets:
            info = [
                i for i in self.client.xinfo_groups(target.stream) if _text(i["name"]) == self.group
            ]
            if not info:
                raise HandoverError(f"no group {self.group!r} on {target.stream}")
            out.append(info[0])
        return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
