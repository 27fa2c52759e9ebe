"""The independent record-by-record check of a live migration: pure, no I/O.

Kafka (read raw, shadows included) and the Redis stream are matched record by record:
an ordinary Kafka record with the entry of the same ``(partition, offset)``; a shadow with
the entry whose ID its ``SHADOW_HEADER`` names (an entry written to Redis first). Each side
is kept in its own order, so the check finds what is lost, doubled, reordered or altered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ferry.core.entries import REDIS_ORIGIN, KafkaRecord, shadow_of, without_shadow_header

Identity = tuple[int, int] | bytes  # (partition, offset) of a Kafka-origin entry, else its ID


def record_identity(entry_id: bytes, record: KafkaRecord) -> Identity:
    """What names one migrated record across both sides and the hand-over."""
    if record.offset == REDIS_ORIGIN:
        return entry_id
    return (record.partition, record.offset)


def kafka_identity(record: KafkaRecord) -> Identity:
    entry_id = shadow_of(record)
    return entry_id if entry_id is not None else (record.partition, record.offset)


@dataclass(frozen=True)
class Reconciliation:
    kafka: int  # records Kafka holds (shadows included)
    redis: int  # entries in the stream
    redis_first: int  # of which written to Redis first (redis-primary, redis-only)
    lost: int  # in Kafka, not in Redis
    duplicated: int  # one record more than once on either side
    misordered: int  # entries of a partition in another order than Kafka's
    mismatched: int  # same record, different bytes
    extra: int  # Kafka-origin entries Kafka does not hold
    unshadowed: int  # written to Redis first, no shadow in Kafka (redis-only, or lost shadow)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.misordered or self.mismatched or self.extra
        )


def reconcile(
    kafka: Iterable[KafkaRecord], redis_entries: Iterable[tuple[bytes, KafkaRecord]]
) -> Reconciliation:
    """Compare every record of both sides; Kafka records in offset order per partition,
    Redis entries in stream order."""
    expected: dict[Identity, KafkaRecord] = {}
    kafka_order: dict[Identity, int] = {}
    duplicated = total = 0
    for position, record in enumerate(kafka):
        total += 1
        identity = kafka_identity(record)
        if identity in expected:
            duplicated += 1  # two shadows of one entry
            continue
        expected[identity] = without_shadow_header(record)
        kafka_order[identity] = position
    seen: set[Identity] = set()
    last_position: dict[int, int] = {}
    redis = redis_first = misordered = mismatched = extra = unshadowed = 0
    for entry_id, record in redis_entries:
        redis += 1
        identity = record_identity(entry_id, record)
        if record.offset == REDIS_ORIGIN:
            redis_first += 1
        if identity in seen:
            duplicated += 1
            continue
        seen.add(identity)
        want = expected.get(identity)
        if want is None:
            if record.offset == REDIS_ORIGIN:
                unshadowed += 1
            else:
                extra += 1
            continue
        if want._replace(offset=record.offset) != record:
            mismatched += 1
        position = kafka_order[identity]
        if position < last_position.get(record.partition, -1):
            misordered += 1
        last_position[record.partition] = max(position, last_position.get(record.partition, -1))
    return Reconciliation(
        kafka=total,
        redis=redis,
        redis_first=redis_first,
        lost=len(expected.keys() - seen),
        duplicated=duplicated,
        misordered=misordered,
        mismatched=mismatched,
        extra=extra,
        unshadowed=unshadowed,
    )
