"""redis-primary and redis-only: Redis first, Kafka shadows the mirror passes over, and the
ways back (a rollback while writers keep sending)."""

import pytest

import ferry
from ferry.core.entries import SHADOW_HEADER
from ferry.core.ingest import migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.core.reconcile import reconcile
from ferry.core.validate import validate_stream
from ferry.errors import IntegrityError
from ferry.live.cutover import mirror_lag, run_cutover
from ferry.live.phases import DUAL_WRITE, REDIS_ONLY, finish_migration, start_dual_write
from ferry.live.rollback import plan_rollback, roll_back
from ferry.services.seed import payment_events

from .helpers import Mirror, dual_writing, read_kafka_raw, read_redis_records, wait_until


def wait_for_no_lag(config, attempts=3000):
    for _ in range(attempts):
        if not any(mirror_lag(config).values()):
            return
        import time

        time.sleep(0.01)  # polling the mirror's progress, bounded
    raise AssertionError(f"mirror still behind: {mirror_lag(config)}")


def check_both_sides(stream, redis_client, partitions):
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, partitions)
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    return reconcile((r for p in sorted(kafka) for r in kafka[p]), entries)


def test_redis_primary_then_rollback_then_cutover_again_keeps_every_record_once(
    make_stream, redis_client
):
    stream = make_stream(list(payment_events(300, 2)), partitions=2)
    keys = migration_keys(stream.config)
    with dual_writing(redis_client, stream.config) as writer:
        for i in range(200):
            writer.send(b"dual %d" % i, key=b"k%d" % (i % 7))
        writer.flush()
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        for i in range(300):  # redis-primary, sent while the writer may still see draining
            writer.send(b"primary %d" % i, key=b"k%d" % (i % 7), headers=[("trace", b"%d" % i)])
        writer.flush()
        wait_for_no_lag(stream.config)
        assert writer.counts.written_redis_first == 300 and writer.counts.shadowed == 300
        starts, frontiers = read_state(redis_client, keys)
        assert int(redis_client.hget(keys.state, "shadowed")) == 300
        plan = plan_rollback(stream.config)
        assert plan.target == DUAL_WRITE and plan.unshadowed == 0
        assert "300 entries were written to Redis first" in plan.cannot
        for i in range(100):  # queued Redis-first, then the rollback: the rest go to Kafka
            writer.send(b"around rollback %d" % i, key=b"k%d" % (i % 7))
        assert roll_back(stream.config, plan)[0] == DUAL_WRITE
        for i in range(100):
            writer.send(b"after rollback %d" % i, key=b"k%d" % (i % 7))
        writer.flush()
        wait_for_no_lag(stream.config)
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        for i in range(100):
            writer.send(b"second cutover %d" % i)
        writer.flush()
        wait_for_no_lag(stream.config)
    assert not writer.failed
    result = check_both_sides(stream, redis_client, 2)
    assert result.ok, result
    assert result.unshadowed == 0
    assert result.kafka == result.redis == 300 + 200 + 300 + 100 + 100 + 100
    assert result.redis_first == writer.counts.written_redis_first >= 400
    report = validate_stream(stream.config)
    assert report.ok, report.failures()
    assert sum(p.redis_first for p in report.partitions) == result.redis_first


def test_redis_only_writes_no_shadow_and_the_partition_follows_the_key(make_stream, redis_client):
    stream = make_stream(list(payment_events(50, 3)), partitions=3)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    mirror = Mirror(stream.config)
    try:
        keys_sent = [b"acct_%d" % i for i in range(40)]
        for key in keys_sent:  # dual-write: librdkafka's partitioner picks the partition
            writer.send(b"dual", key=key)
        writer.flush()
        wait_for_no_lag(stream.config)
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        finish_migration(redis_client, keys, "test")
        wait_until(lambda: writer.phase == REDIS_ONLY, "the writer follows to redis-only")
        for key in keys_sent:
            writer.send(b"redis only", key=key)
        writer.flush()
    finally:
        writer.close()
        mirror.close()
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    dual = {r.key: r.partition for _, r in entries if r.value == b"dual"}
    only = {r.key: r.partition for _, r in entries if r.value == b"redis only"}
    assert dual == only and len(only) == 40 and len(set(only.values())) == 3
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, 3)
    assert sum(len(v) for v in kafka.values()) == 50 + 40  # no shadow in redis-only
    result = check_both_sides(stream, redis_client, 3)
    assert result.ok and result.unshadowed == 40 and result.redis_first == 40


def test_a_shadow_of_an_entry_redis_never_had_stops_the_mirror(make_stream, redis_client):
    from confluent_kafka import Producer

    stream = make_stream(list(payment_events(20, 1)), partitions=1)
    backfill(stream.config, progress=False)
    producer = Producer({"bootstrap.servers": stream.bootstrap})
    producer.produce(
        stream.config.kafka.topic, b"forged", partition=0, headers=[(SHADOW_HEADER, b"1-1")]
    )
    producer.flush(10)
    with pytest.raises(IntegrityError, match="shadow of entry 1-1, which is not in"):
        backfill(stream.config, progress=False)
    assert read_state(redis_client, migration_keys(stream.config))[1][0] == 19  # not passed


def test_records_the_dual_writer_lands_keep_their_headers(make_stream, redis_client):
    """Delivery reports carry no headers: the writer must keep the ones it sent."""
    stream = make_stream(list(payment_events(10, 2)), partitions=2)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, migration_keys(stream.config), "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    headers = [("trace", b"t-1"), ("empty", b""), ("null", None), ("text", "caf\u00e9")]
    try:
        for i in range(20):
            writer.send(b"v%d" % i, key=b"k", partition=i % 2, headers=headers)
        writer.flush()
    finally:
        writer.close()
    assert writer.counts.written_redis == 20  # landed by the writer itself, no mirror ran
    landed = [r for _, r in read_redis_records(redis_client, stream.config.redis.stream)][10:]
    assert [r.headers for r in landed] == [
        (("trace", b"t-1"), ("empty", b""), ("null", None), ("text", "caf\u00e9".encode()))
    ] * 20
    assert validate_stream(stream.config).ok
