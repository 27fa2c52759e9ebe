"""Demo and test data: payment events plus the awkward records a faithful copy must survive."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.core.entries import Header
from ferry.errors import KafkaError

BASE_TS_MS = 1_790_000_000_000  # 2026-09-21, fixed so runs are comparable


@dataclass(frozen=True)
class SeedRecord:
    """A record to produce: partition, key, value, headers, timestamp (ms)."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    timestamp_ms: int = 0


def create_topic(bootstrap: str, topic: str, partitions: int, config: dict | None = None) -> None:
    """Create a topic and wait until the broker confirms it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})]
    )
    try:
        futures[topic].result(timeout=30)
    except KafkaException as exc:
        raise KafkaError(f"cannot create topic {topic!r} on {bootstrap}: {exc}") from exc


def awkward_records(partitions: int, big_value_bytes: int = 900_000) -> list[SeedRecord]:
    """One of each record shape that breaks naive copies. Partition ``partitions - 1`` gets
    nothing from here (and nothing from :func:`payment_events` when asked), so it can stay empty."""
    p = 0
    t = BASE_TS_MS + 5_000
    return [
        SeedRecord(p, b"tombstone-key", None, (), t),  # null value
        SeedRecord(p, b"empty-value", b"", (), t + 1),  # empty, not null
        SeedRecord(p, None, b"no key at all", (), t + 2),  # null key
        SeedRecord(p, b"", b"empty key", (), t + 3),  # empty key
        SeedRecord(
            p, b"\x00bin\xff\xfekey", b"\x00\x01\x02\xff\xc3\x28 invalid utf-8 \x00", (), t + 4
        ),
        SeedRecord(
            p,
            b"headers",
            b"dup headers",
            (("trace", b"a"), ("trace", b"b"), ("nullhdr", None), ("empty", b""), ("trace", b"c")),
            t + 5,
        ),
        SeedRecord(
            p,
            b"big",
            bytes(random.Random(7).getrandbits(8) for _ in range(big_value_bytes)),
            (),
            t + 6,
        ),
        SeedRecord(p, b"back-1", b"timestamp goes backwards", (), t - 60_000),
        SeedRecord(p, b"back-2", b"and further back", (), t - 120_000),
        SeedRecord(p, b"forward", b"and forward again", (), t + 7),
    ]


def payment_events(count: int, partitions: int, seed: int = 42) -> Iterator[SeedRecord]:
    """Deterministic payment events spread over ``partitions`` partitions by account."""
    rng = random.Random(seed)
    currencies = ("EUR", "USD", "GBP", "CHF", "JPY")
    kinds = ("authorized", "captured", "refunded", "settled")
    for i in range(count):
        account = rng.randrange(10_000)
        event = {
            "id": f"pay_{i:09d}",
            "account": f"acct_{account:05d}",
            "type": kinds[rng.randrange(4)],
            "amount_minor": rng.randrange(1, 5_000_000),
            "currency": currencies[rng.randrange(5)],
        }
        yield SeedRecord(
            account % partitions,
            event["account"].encode(),
            json.dumps(event, separators=(",", ":")).encode(),
            (("schema", b"payment.v1"),),
            BASE_TS_MS + i,
        )


def produce_records(bootstrap: str, topic: str, records: Iterable[SeedRecord]) -> int:
    """Produce records in order, wait for every delivery report; any failure is an error."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "message.max.bytes": 2_000_000,
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
        }
    )
    failures: list[str] = []
    delivered = 0

    def report(err, msg):
        nonlocal delivered
        if err is not None:
            failures.append(f"partition {msg.partition()}: {err}")
        else:
            delivered += 1

    sent = 0
    for r in records:
        while True:
            try:
                producer.produce(
                    topic,
                    value=r.value,
                    key=r.key,
                    partition=r.partition,
                    headers=list(r.headers) or None,
                    timestamp=r.timestamp_ms,
                    on_delivery=report,
                )
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        raise KafkaError(
            f"producing to {topic!r}: {remaining} undelivered, {len(failures)} failed "
            f"({'; '.join(failures[:3])})"
        )
    return delivered


def seed_demo_topic(bootstrap: str, topic: str, count: int, partitions: int = 6) -> int:
    """Create ``topic`` and fill it with payment events and awkward records; the last
    partition stays empty."""
    create_topic(bootstrap, topic, partitions)
    awkward = awkward_records(partitions)
    produced = produce_records(bootstrap, topic, awkward)
    produced += produce_records(
        bootstrap, topic, payment_events(count - len(awkward), partitions - 1)
    )
    return produced
