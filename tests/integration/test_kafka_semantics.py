"""What real Kafka clusters do every day, each proven on the broker matrix: transactions with
markers at the end of partitions, compaction, retention and DeleteRecords, a topic recreated
under the same name, partitions added while following, and Kafka's meaning of a timestamp
start. A case a broker cannot run is skipped on it with the reason."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from ferry.core.ingest import ArmRequest, arm_migration, migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.core.positions import first_offset_at_or_after
from ferry.core.validate import validate_stream
from ferry.errors import ConfigError, OffsetRangeError, TopicMismatchError
from ferry.live.cutover import mirror_lag
from ferry.services.seed import SeedRecord, create_topic, produce_records

from .helpers import Mirror, by_partition, ferry_cli, read_kafka_raw, read_redis_records

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000


def plain(partition: int, n: int, tag: str) -> list[SeedRecord]:
    return [
        SeedRecord(partition, b"k%d" % i, f"{tag}-{partition}-{i}".encode(), (), NOW_MS)
        for i in range(n)
    ]


def produce_transaction(bootstrap: str, topic: str, records, commit: bool, txn_id: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
    producer.init_transactions(30)
    producer.begin_transaction()
    for r in records:
        producer.produce(topic, value=r.value, key=r.key, partition=r.partition)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def committed_view(stream, partitions: int) -> dict:
    """What a read_committed reader sees, read with a bare consumer (not ferry's)."""
    return read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, partitions)


def redis_view(redis_client, stream) -> dict:
    return by_partition(r for _, r in read_redis_records(redis_client, stream.config.redis.stream))


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f}s waiting for {what}"
        threading.Event().wait(0.1)  # polling a condition, bounded by the deadline


@pytest.mark.requires_broker(
    ["apache"], reason="Tansu 0.6 sends no aborted-transaction list: aborted records reach readers"
)
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_transactions_markers_at_the_end_leave_no_lag(make_stream, redis_client, client):
    stream = make_stream([], partitions=2, client=client, kafka_extra={"transactional": True})
    topic, bootstrap, config = stream.config.kafka.topic, stream.bootstrap, stream.config
    produce_records(bootstrap, topic, plain(0, 5, "plain") + plain(1, 5, "plain"))
    produce_transaction(bootstrap, topic, plain(0, 4, "t1") + plain(1, 3, "t1"), True, "t1")
    produce_transaction(bootstrap, topic, plain(0, 6, "abort") + plain(1, 6, "abort"), False, "t2")
    produce_records(bootstrap, topic, plain(0, 2, "plain2"))
    produce_transaction(bootstrap, topic, plain(0, 3, "t3") + plain(1, 3, "t3"), True, "t3")

    summary = backfill(config, progress=False)
    assert summary.complete
    kafka = committed_view(stream, 2)
    assert redis_view(redis_client, stream) == kafka  # aborted records absent, order kept
    assert not any(b"abort" in r.value for recs in kafka.values() for r in recs)
    # the end of each partition is a commit marker: the position steps over it
    assert mirror_lag(config) == {0: 0, 1: 0}
    assert validate_stream(config).ok

    # tailing: a committed transaction after the mirror caught up also ends with no lag
    mirror = Mirror(config)
    try:
        produce_transaction(bootstrap, topic, plain(1, 2, "t4"), True, "t4")
        wait_until(lambda: mirror_lag(config) == {0: 0, 1: 0}, 60, "the marker after t4")
    finally:
        mirror.close()
    assert redis_view(redis_client, stream) == committed_view(stream, 2)


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 has no log cleaner")
def test_compaction_after_the_copy_is_reported_not_extra(make_stream, redis_client):
    stream = make_stream(
        [],
        partitions=1,
        topic_config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.0001",
            "delete.retention.ms": "100",
            "min.compaction.lag.ms": "0",
        },
    )
    topic, bootstrap = stream.config.kafka.topic, stream.bootstrap
    updates = [SeedRecord(0, b"key-%d" % (i % 5), b"v%d" % i, (), NOW_MS) for i in range(50)]
    produce_records(bootstrap, topic, updates)
    assert backfill(stream.config, progress=False).records == 50

    def cleaned() -> bool:
        # Kafka rolls a segment once a record's timestamp is segment.ms past the segment's
        # first one: each probe record carries the time now
        now = int(time.time() * 1000)
        produce_records(bootstrap, topic, [SeedRecord(0, b"roll", b"r", (), now)])
        held = committed_view(stream, 1)[0]
        return len([r for r in held if r.offset < 50]) < 50

    wait_until(cleaned, 90, "the log cleaner to compact the first segment")
    report = validate_stream(stream.config)
    row = report.partitions[0]
    assert report.ok, report.failures()
    assert row.compacted > 0 and row.extra == 0 and row.missing == 0
    assert row.compacted + row.kafka_count == 50


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 has no DeleteRecords")
def test_log_start_past_the_position_is_a_typed_error(make_stream, tmp_path):
    stream = make_stream(plain(0, 100, "a"), partitions=1)
    backfill(stream.config, progress=False)
    produce_records(stream.bootstrap, stream.config.kafka.topic, plain(0, 100, "b"))
    _delete_records(stream, 0, 150)
    with pytest.raises(OffsetRangeError, match=r"partition 0: .* records 100\.\.149 were deleted"):
        backfill(stream.config, progress=False)
    config_file = stream.write_config(tmp_path / "s.yaml")
    proc = subprocess.run(ferry_cli("backfill", config_file, "--no-progress"), capture_output=True)
    assert proc.returncode == 6  # data integrity: records gone before they were copied
    assert proc.stderr.decode().strip().count("\n") == 0, proc.stderr  # one line, no traceback
    assert b"records 100..149" in proc.stderr


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 has no DeleteRecords")
def test_records_kafka_deleted_after_the_copy_are_retired_not_missing(make_stream):
    stream = make_stream(plain(0, 100, "a") + plain(1, 10, "a"), partitions=2)
    backfill(stream.config, progress=False)
    _delete_records(stream, 0, 40)
    report = validate_stream(stream.config)
    assert report.ok, report.failures()
    rows = {r.partition: r for r in report.partitions}
    assert (rows[0].retired_by_kafka, rows[0].kafka_count, rows[0].log_start) == (40, 60, 40)
    assert rows[1].retired_by_kafka == 0


def _delete_records(stream, partition: int, before: int) -> None:
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})
    tp = TopicPartition(stream.config.kafka.topic, partition, before)
    for future in admin.delete_records([tp]).values():
        future.result(30)


def test_topic_recreated_under_the_same_name_stops_every_verb(make_stream, tmp_path):
    stream = make_stream(plain(0, 30, "old") + plain(1, 30, "old"), partitions=2)
    backfill(stream.config, progress=False)
    topic, bootstrap = stream.config.kafka.topic, stream.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 30, "topic deletion")
    create_topic(bootstrap, topic, 2)
    produce_records(bootstrap, topic, plain(0, 80, "new") + plain(1, 80, "new"))
    for verb in (
        lambda: backfill(stream.config, progress=False),
        lambda: validate_stream(stream.config),
    ):
        with pytest.raises(TopicMismatchError, match="recreated"):
            verb()
    config_file = stream.write_config(tmp_path / "s.yaml")
    for args in (("backfill", config_file, "--no-progress"), ("validate", config_file)):
        proc = subprocess.run(ferry_cli(*args), capture_output=True)
        assert proc.returncode == 6, proc.stderr  # data integrity: not the armed topic
        assert b"recreated" in proc.stderr and b"Traceback" not in proc.stderr


def test_position_beyond_the_end_of_a_partition_is_refused(make_stream, redis_client):
    """A broker whose data was reset: the topic is back, shorter than what was copied."""
    stream = make_stream(plain(0, 20, "a"), partitions=1)
    backfill(stream.config, progress=False)
    keys = migration_keys(stream.config)
    redis_client.hdel(keys.state, "topic_id")  # as on a broker without topic IDs
    redis_client.hset(keys.state, "frontier:0", 499)
    with pytest.raises(TopicMismatchError, match="position is 500 but Kafka's end is 20"):
        backfill(stream.config, progress=False)


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 has no CreatePartitions")
def test_partitions_added_while_following_are_copied_from_their_first_offset(
    make_stream, redis_client
):
    stream = make_stream(plain(0, 50, "a") + plain(1, 50, "a"), partitions=2)
    topic, bootstrap = stream.config.kafka.topic, stream.bootstrap
    mirror = Mirror(stream.config)
    try:
        wait_until(lambda: mirror_lag(stream.config) == {0: 0, 1: 0}, 60, "the first copy")
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(30)
        wait_until(lambda: len(admin.list_topics(topic, 10).topics[topic].partitions) == 4, 30, "")
        produce_records(bootstrap, topic, plain(2, 40, "new") + plain(3, 7, "new"))
        wait_until(
            lambda: mirror_lag(stream.config) == {0: 0, 1: 0, 2: 0, 3: 0}, 60, "new partitions"
        )
    finally:
        mirror.close()
    assert redis_view(redis_client, stream) == committed_view(stream, 4)
    starts, _ = read_state(redis_client, migration_keys(stream.config))
    assert starts == {0: 0, 1: 0, 2: 0, 3: 0}
    report = validate_stream(stream.config)
    assert report.ok and len(report.partitions) == 4, report.failures()


def back_and_forth(partition: int, n: int) -> list[SeedRecord]:
    """CreateTime timestamps that go back and forth around seven days ago."""
    base = NOW_MS - 7 * DAY_MS
    offsets = [-3, 2, -5, 1, -1, 4, -2, 3, -4, 5]
    return [
        SeedRecord(
            partition,
            b"k",
            b"%d" % i,
            (),
            base + offsets[i % len(offsets)] * 3_600_000 + (i // 10) * 60_000,
        )
        for i in range(n)
    ]


def kafkas_answer(bootstrap: str, topic: str, partitions: int, target_ms: int) -> dict[int, int]:
    """offsets_for_times asked with a bare consumer: the broker's own answer."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "answer"})
    try:
        query = [TopicPartition(topic, p, target_ms) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in consumer.offsets_for_times(query, 10)}
    finally:
        consumer.close()


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_age_start_on_timestamps_going_back_and_forth_is_kafkas_answer(
    make_stream, redis_client, client, services
):
    records = back_and_forth(0, 60) + back_and_forth(1, 45)
    stream = make_stream(records, partitions=2, client=client, extra={"start": "7d"})
    backfill(stream.config, progress=False)
    keys = migration_keys(stream.config)
    starts, _ = read_state(redis_client, keys)
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.state).items()}
    target = int(state["start_ts"])
    expected = {
        p: first_offset_at_or_after(
            [(i, r.timestamp_ms) for i, r in enumerate(r for r in records if r.partition == p)],
            target,
        )
        for p in (0, 1)
    }
    if services.kafka_kind == "apache":  # the broker's own time index agrees
        assert kafkas_answer(stream.bootstrap, stream.config.kafka.topic, 2, target) == expected
    assert starts == expected
    found = "offsets_for_times" if services.kafka_kind == "apache" else "scan"
    assert state["start_found:0"] == found and state["start_rule"] == "age 604800000ms"
    copied = redis_view(redis_client, stream)
    assert {p: [r.offset for r in recs] for p, recs in copied.items()} == {
        p: list(range(expected[p], 60 if p == 0 else 45)) for p in (0, 1)
    }
    assert validate_stream(stream.config).ok


def test_a_start_that_is_not_kafkas_answer_fails_validation(make_stream, redis_client):
    """As armed by the old binary search: a start a few records off Kafka's answer."""
    records = back_and_forth(0, 60)
    stream = make_stream(records, partitions=1, extra={"start": "7d"})
    target = NOW_MS - 7 * DAY_MS
    right = first_offset_at_or_after([(i, r.timestamp_ms) for i, r in enumerate(records)], target)
    keys = migration_keys(stream.config)
    arm_migration(
        redis_client,
        keys,
        ArmRequest(
            stream.config.kafka.topic, None, "age 604800000ms", target, {0: right + 3}, {}, {}
        ),
    )
    backfill(stream.config, progress=False)
    report = validate_stream(stream.config)
    row = report.partitions[0]
    assert not report.ok
    assert (row.start_mismatch, row.expected_start, row.start) == (1, right, right + 3)
    assert "the start rule means" in report.failures()[0]


def test_a_start_in_the_future_is_refused(make_stream):
    stream = make_stream(plain(0, 5, "a"), partitions=1, extra={"start": "2099-01-01T00:00:00Z"})
    with pytest.raises(ConfigError, match="in the future"):
        backfill(stream.config, progress=False)
