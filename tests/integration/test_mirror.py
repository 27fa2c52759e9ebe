"""The mirror copies every awkward record byte-identical, in order, exactly once."""

from datetime import UTC, datetime

import pytest

from ferry.core.entries import entry_id_ms
from ferry.core.ingest import migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.services.seed import BASE_TS_MS, SeedRecord, awkward_records, payment_events

from .helpers import by_partition, expected_records, read_kafka_raw, read_redis_records

PARTITIONS = 4  # the last one stays empty


def awkward_topic():
    records = awkward_records(PARTITIONS)
    records += list(payment_events(3000, PARTITIONS - 1))
    return records


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_awkward_records_round_trip(make_stream, redis_client, client):
    stream = make_stream(awkward_topic(), partitions=PARTITIONS, client=client)
    summary = backfill(stream.config, progress=False)
    assert summary.records == len(stream.records)

    expected = expected_records(stream.records)
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, PARTITIONS)
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    redis_side = by_partition(r for _, r in entries)

    assert kafka == expected  # the broker holds what was produced
    assert redis_side == expected  # byte-identical, in offset order, exactly once
    assert PARTITIONS - 1 not in redis_side  # the empty partition stays empty

    ids = [entry_id for entry_id, _ in entries]
    assert len(set(ids)) == len(ids)
    for entry_id, record in entries:  # ID = max(timestamp, last id): close to event time
        assert entry_id_ms(entry_id) >= record.timestamp_ms
    backwards = [r for _, r in entries if r.key in (b"back-1", b"back-2")]
    assert [r.timestamp_ms for r in backwards] == [
        BASE_TS_MS + 5_000 - 60_000,
        BASE_TS_MS + 5_000 - 120_000,
    ]

    big = next(r for r in redis_side[0] if r.key == b"big")
    assert len(big.value) == 900_000

    report = validate_stream(stream.config, client=client)
    assert report.ok, report.failures()
    assert sum(p.kafka_count for p in report.partitions) == len(stream.records)


def test_finished_backfill_writes_nothing_again(make_stream, redis_client):
    stream = make_stream(list(payment_events(5000, 3)), partitions=3)
    first = backfill(stream.config, progress=False)
    key = stream.config.redis.stream
    before = (redis_client.xlen(key), redis_client.xinfo_stream(key)["last-generated-id"])
    second = backfill(stream.config, progress=False)
    assert (first.records, second.records) == (5000, 0)
    assert (redis_client.xlen(key), redis_client.xinfo_stream(key)["last-generated-id"]) == before


def test_backfill_continues_with_new_records(make_stream, redis_client):
    from ferry.services.seed import produce_records

    stream = make_stream(list(payment_events(1000, 2)), partitions=2)
    backfill(stream.config, progress=False)
    more = [
        SeedRecord(p, b"late", b"late %d" % i, (), BASE_TS_MS + 10**6 + i)
        for i in range(50)
        for p in (0, 1)
    ]
    produce_records(stream.bootstrap, stream.config.kafka.topic, more)
    summary = backfill(stream.config, progress=False)
    assert summary.records == 100
    assert validate_stream(stream.config).ok


def test_per_partition_layout(make_stream, redis_client):
    stream = make_stream(list(payment_events(2000, 3)), partitions=3, layout="per-partition")
    backfill(stream.config, progress=False)
    expected = expected_records(stream.records)
    for p in range(3):
        key = f"{stream.config.redis.stream}:{p}"
        assert [r for _, r in read_redis_records(redis_client, key)] == expected[p]
    assert not redis_client.exists(stream.config.redis.stream)
    assert validate_stream(stream.config).ok


def test_start_by_timestamp_is_exact(make_stream, redis_client):
    # one producer batch: the broker's own timestamp lookup cannot tell these records apart
    records = [SeedRecord(0, b"k", b"v%d" % i, (), BASE_TS_MS + i * 1000) for i in range(20)]
    records += [SeedRecord(1, b"k", b"w%d" % i, (), BASE_TS_MS + i * 1000) for i in range(5)]
    start = datetime.fromtimestamp((BASE_TS_MS + 12_500) / 1000, UTC).isoformat()
    stream = make_stream(records, partitions=3, extra={"start": start})
    summary = backfill(stream.config, progress=False)
    starts, frontiers = read_state(redis_client, migration_keys(stream.config))
    # partition 0: first record at or after +12.5 s is offset 13; partitions 1 and 2 have none
    assert starts == {0: 13, 1: 5, 2: 0}
    assert frontiers == {0: 19, 1: 4, 2: -1}
    assert summary.records == 7
    values = [r.value for _, r in read_redis_records(redis_client, stream.config.redis.stream)]
    assert values == [b"v%d" % i for i in range(13, 20)]
    assert validate_stream(stream.config).ok


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_partition_ends_come_from_fetches_not_list_offsets(make_stream, client):
    # many records per producer batch: Tansu's ListOffsets(latest) answers the last batch's
    # base offset + 1, which would hide up to a batch per partition
    from ferry.kafka.source import open_source

    stream = make_stream(list(payment_events(4000, 3)), partitions=3, client=client)
    expected = expected_records(stream.records)
    source = open_source(stream.config)
    try:
        info = source.describe_topic()
    finally:
        source.close()
    assert info.high == {p: len(expected[p]) for p in range(3)}
    assert info.low == {0: 0, 1: 0, 2: 0}


def test_follow_tails_new_records_until_stopped(make_stream, redis_client):
    import threading

    from ferry.services.seed import produce_records

    stream = make_stream(list(payment_events(500, 2)), partitions=2)
    stop = threading.Event()
    frontiers: dict[int, int] = {}
    result = {}

    def run():
        result["summary"] = backfill(
            stream.config,
            follow=True,
            progress=False,
            should_stop=stop.is_set,
            on_batch=lambda p, f, n: frontiers.__setitem__(p, f),
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        late = [
            SeedRecord(i % 2, b"live", b"live %d" % i, (), BASE_TS_MS + 10**7 + i)
            for i in range(300)
        ]
        produce_records(stream.bootstrap, stream.config.kafka.topic, late)
        expected = expected_records(stream.records + late)
        want = {p: len(expected[p]) - 1 for p in expected}
        for _ in range(3000):  # watch the frontier reach the end (bounded)
            if all(frontiers.get(p) == want[p] for p in want):
                break
            stop.wait(0.01)
        assert {p: frontiers.get(p) for p in want} == want
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert result["summary"].records == 800
    redis_side = by_partition(
        r for _, r in read_redis_records(redis_client, stream.config.redis.stream)
    )
    assert redis_side == expected


def test_follow_loses_nothing_while_two_producers_append_to_the_same_partitions(
    make_stream, redis_client
):
    """Tansu 0.6 can answer a fetch with a later batch while an earlier one is not readable
    yet when several producers append to one partition; a client then skips that batch
    silently. The mirror reads such gaps again before believing them."""
    import os
    import random
    import threading

    from confluent_kafka import Producer

    stream = make_stream([], partitions=4)
    topic = stream.config.kafka.topic
    stop = threading.Event()
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "summary", backfill(stream.config, follow=True, progress=False, should_stop=stop.is_set)
        )
    )
    thread.start()
    producers = [
        Producer({"bootstrap.servers": stream.bootstrap, "linger.ms": 0}),
        Producer(
            {
                "bootstrap.servers": stream.bootstrap,
                "linger.ms": 20,
                "batch.num.messages": 500,
                "compression.type": "gzip",
            }
        ),
    ]
    delivered: dict[int, int] = {}

    def report(err, msg):
        assert err is None, err
        delivered[msg.partition()] = delivered.get(msg.partition(), 0) + 1

    rng = random.Random(11)
    try:
        for i in range(20_000):
            size = rng.choice([10, 100, 1000, 5000]) if rng.random() > 0.002 else 200_000
            value = os.urandom(size)
            producer = producers[rng.random() < 0.5]
            producer.produce(
                topic, value=value, key=b"%d" % i, partition=rng.randrange(4), on_delivery=report
            )
            producer.poll(0)
            if i % 50 == 0:
                stop.wait(0.01)  # pacing the producers so the mirror tails a live topic
        for producer in producers:
            assert producer.flush(30) == 0
        want = {p: n - 1 for p, n in delivered.items()}
        for _ in range(3000):  # bounded wait for the frontier to reach every delivered record
            _, frontiers = read_state(redis_client, migration_keys(stream.config))
            if all(frontiers.get(p) == want[p] for p in want):
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert frontiers == {p: want.get(p, -1) for p in range(4)}
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    per = by_partition(r for _, r in entries)
    for p, records in per.items():
        assert [r.offset for r in records] == list(range(delivered[p]))
    assert validate_stream(stream.config).ok
    print("gap rechecks:", result["summary"].gap_rechecks)
