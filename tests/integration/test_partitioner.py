"""One partitioner across phases: the Python partitioners against librdkafka's own choices,
the same key on the same partition through the producer (dual-write) and the Redis-first path
(redis-primary), and partitions added while a writer runs Redis-first."""

import random

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

import ferry
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.kafka.partitioner import DEFAULT_PARTITIONER, PARTITIONERS, is_keyed, partition_for
from ferry.live.cutover import run_cutover
from ferry.live.phases import REDIS_PRIMARY, start_dual_write
from ferry.services.seed import payment_events

from .helpers import Mirror, read_kafka_raw, read_redis_records, wait_until
from .test_primary import check_both_sides, wait_for_no_lag


def _producer(bootstrap: str, name: str, **extra) -> Producer:
    """A bare application producer; the default partitioner is left to librdkafka itself."""
    settings = {"bootstrap.servers": bootstrap, "linger.ms": 5, **extra}
    if name != DEFAULT_PARTITIONER:
        settings["partitioner"] = name
    return Producer(settings)


def _produce_and_read_back(stream, name: str, keys: list, **extra) -> list[int]:
    """Produce keys[i] with value i, read the topic back: the partition each one landed in."""
    producer = _producer(stream.bootstrap, name, **extra)
    for i, key in enumerate(keys):
        producer.produce(stream.config.kafka.topic, b"%d" % i, key=key)
    assert producer.flush(30) == 0
    partitions = 7
    found = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, partitions)
    where = {int(r.value): r.partition for p in found.values() for r in p}
    assert sorted(where) == list(range(len(keys)))
    return [where[i] for i in range(len(keys))]


@pytest.mark.parametrize("name", PARTITIONERS)
def test_each_python_partitioner_picks_what_librdkafka_picks(make_stream, name):
    stream = make_stream([], partitions=7)
    rng = random.Random(name)
    keys = [b"", None] + [rng.randbytes(rng.randrange(1, 48)) for _ in range(198)]
    landed = _produce_and_read_back(stream, name, keys)
    keyed = [(k, p) for k, p in zip(keys, landed, strict=True) if is_keyed(name, k)]
    assert len(keyed) >= (0 if name == "random" else 198)
    wrong = [(k, p, partition_for(name, k, 7)) for k, p in keyed if partition_for(name, k, 7) != p]
    assert not wrong, f"{len(wrong)} keys differ, e.g. (key, librdkafka, python) {wrong[:3]}"
    if name in ("consistent", "murmur2", "fnv1a"):  # a null key is hashed as the empty key
        assert landed[1] == landed[0] == partition_for(name, None, 7)


@pytest.mark.parametrize("name", [n for n in PARTITIONERS if n.endswith("random")])
def test_where_librdkafka_picks_at_random_the_python_side_does_too(make_stream, name):
    stream = make_stream([], partitions=7)
    random_keys = [None] * 40 + ([b""] * 40 if name == "consistent_random" else [])
    # no stickiness: every keyless record is placed on its own
    landed = _produce_and_read_back(
        stream, name, random_keys, **{"sticky.partitioning.linger.ms": 0}
    )
    assert len(set(landed)) > 2
    assert not any(is_keyed(name, k) for k in random_keys)
    rng = random.Random(1)
    assert len({partition_for(name, k, 7, rng) for k in random_keys}) > 2


def _wait_for_phase(writer, phase):
    wait_until(lambda: writer.phase == phase, f"the writer to follow to {phase}", 20)


@pytest.mark.parametrize(
    "how",
    ["default", "config:murmur2", "argument:fnv1a", "producer_settings:consistent"],
)
def test_one_account_one_partition_before_during_and_after_the_cutover(
    make_stream, redis_client, how
):
    """A rolling deploy: the application's old producer (a bare confluent-kafka Producer with
    its own settings), the DualWriter in dual-write (librdkafka picks) and in redis-primary
    (ferry picks before Kafka sees the record) put each account on the same partition."""
    where, _, name = how.partition(":")
    name = name or DEFAULT_PARTITIONER
    stream = make_stream(
        list(payment_events(30, 5)),
        partitions=5,
        extra={"writer": {"partitioner": name}} if where == "config" else None,
    )
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, migration_keys(stream.config), "test")
    accounts = [b"acct-%d" % i for i in range(60)]
    old_app = _producer(stream.bootstrap, name)
    for key in accounts:
        old_app.produce(stream.config.kafka.topic, b"old app", key=key)
    assert old_app.flush(30) == 0
    kwargs = {
        "argument": {"partitioner": name},
        "producer_settings": {"producer_settings": {"partitioner": name}},
    }.get(where, {})
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05, **kwargs)
    mirror = None
    try:
        mirror = Mirror(stream.config)
        for key in accounts:
            writer.send(b"dual", key=key)
        writer.flush()
        wait_for_no_lag(stream.config)
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        _wait_for_phase(writer, REDIS_PRIMARY)
        for key in accounts:
            writer.send(b"primary", key=key)
        writer.flush()
        wait_for_no_lag(stream.config)
    finally:
        writer.close()
        if mirror is not None:
            mirror.close()
    assert not writer.failed
    assert writer.counts.written_redis_first == len(accounts)
    entries = [r for _, r in read_redis_records(redis_client, stream.config.redis.stream)]
    phases = {
        value: {r.key: r.partition for r in entries if r.value == value}
        for value in (b"old app", b"dual", b"primary")
    }
    assert all(len(seen) == len(accounts) for seen in phases.values())
    assert phases[b"old app"] == phases[b"dual"] == phases[b"primary"]
    assert phases[b"primary"] == {k: partition_for(name, k, 5) for k in accounts}
    assert len(set(phases[b"primary"].values())) == 5
    result = check_both_sides(stream, redis_client, 5)
    assert result.ok, result


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 has no CreatePartitions")
def test_partitions_added_while_redis_primary_get_their_keys(make_stream, redis_client):
    stream = make_stream(list(payment_events(20, 2)), partitions=2)
    topic = stream.config.kafka.topic
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, migration_keys(stream.config), "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05, partition_refresh_s=0.5)
    accounts = [b"acct-%d" % i for i in range(200)]
    mirror = None
    try:
        mirror = Mirror(stream.config)
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        _wait_for_phase(writer, REDIS_PRIMARY)
        for key in accounts:
            writer.send(b"before", key=key)
        writer.flush()
        admin = AdminClient({"bootstrap.servers": stream.bootstrap})
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(30)
        # the writer learns the new count from Kafka, and uses it once the mirror armed them
        wait_until(lambda: writer.partitions == 4, "the writer to use 4 partitions", 30)
        for key in accounts:
            writer.send(b"after", key=key)
        writer.flush()
        wait_for_no_lag(stream.config)
    finally:
        writer.close()
        if mirror is not None:
            mirror.close()
    assert not writer.failed
    entries = [r for _, r in read_redis_records(redis_client, stream.config.redis.stream)]
    before = {r.key: r.partition for r in entries if r.value == b"before"}
    after = {r.key: r.partition for r in entries if r.value == b"after"}
    assert before == {k: partition_for("consistent_random", k, 2) for k in accounts}
    assert after == {k: partition_for("consistent_random", k, 4) for k in accounts}
    assert set(after.values()) == {0, 1, 2, 3}
    kafka = read_kafka_raw(stream.bootstrap, topic, 4)
    assert {r.key: r.partition for p in (2, 3) for r in kafka.get(p, [])} == {
        k: p for k, p in after.items() if p >= 2
    }  # the shadows of the new partitions' entries are in Kafka
    result = check_both_sides(stream, redis_client, 4)
    assert result.ok and result.unshadowed == 0, result
    report = validate_stream(stream.config)
    assert report.ok, report.failures()
