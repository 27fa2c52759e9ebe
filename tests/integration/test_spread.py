"""The spread layout: a hash tag per partition (``{name:p}``), so one topic's partitions
spread over a cluster's shards while each ingest stays one script on one shard.

One test body per behaviour, run on a standalone server and on a local 3-primary cluster
(the session's shared cluster of the stack's Redis kind, on the Tansu stacks)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from ferry.core.ingest import (
    Ingestor,
    _script,
    migration_keys,
    read_state,
    read_state_counters,
)
from ferry.core.mirror import backfill
from ferry.core.reconcile import reconcile
from ferry.core.validate import validate_stream
from ferry.live.cutover import run_cutover
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    REDIS_PRIMARY,
    LeaseExpired,
    PhaseState,
    complete_cutover,
    expire_draining,
    read_phase,
    read_phase_copies,
    server_ms,
    set_phase,
    start_draining,
    start_dual_write,
)
from ferry.live.rollback import plan_rollback, roll_back
from ferry.redis.target import partition_owners
from ferry.services.seed import BASE_TS_MS, payment_events, produce_records

from .cluster import cluster_client, owner_port, shared_cluster
from .conftest import stream_factory
from .helpers import (
    dual_writing,
    expected_records,
    read_kafka_raw,
    read_redis_records,
    wait_until,
)
from .test_primary import wait_for_no_lag

pytestmark = pytest.mark.redis_side

PARTITIONS = 12  # all 12 slots on one of 3 shards by chance: about 6 in a million


@pytest.fixture(params=["standalone", "cluster"])
def target(request, services, redis_client):
    """(client, make_stream, local cluster or None) on the topology of the parameter."""
    if request.param == "standalone":
        yield redis_client, None, {"url": services.redis_url}
        return
    local = shared_cluster(request, services)
    client = cluster_client(local)
    yield client, local, {"cluster": {"addresses": local.addresses}}
    client.close()


@pytest.fixture
def make_spread(services, target, request):
    client, _, doc = target
    yield from stream_factory(services, client, request, doc, prefix="s")


def test_backfill_spreads_partitions_and_validates(make_spread, target):
    client, local, _ = target
    stream = make_spread(list(payment_events(3000, PARTITIONS)), PARTITIONS, layout="spread")
    keys = migration_keys(stream.config)
    summary = backfill(stream.config, progress=False)
    assert summary.records == 3000

    expected = expected_records(stream.records)
    name = stream.config.name
    for p in range(PARTITIONS):
        key = keys.stream_for(p)
        assert key.startswith("{" + f"{name}:{p}" + "}")
        assert [r for _, r in read_redis_records(client, key)] == expected.get(p, [])
        assert key_slot(key.encode()) == key_slot(keys.partition_state(p).encode())
    starts, frontiers = read_state(client, keys)
    assert frontiers == {p: len(expected.get(p, [])) - 1 for p in range(PARTITIONS)}
    assert starts == dict.fromkeys(range(PARTITIONS), 0)
    assert not client.exists(stream.config.redis.stream)  # the template names no key
    owners = partition_owners(client, keys, list(range(PARTITIONS)))
    if local is not None:  # each partition on the primary that owns its slot, several in all
        ports = {p: owner_port(local, key_slot(keys.stream_for(p).encode())) for p in owners}
        assert {p: int(o.rsplit(":", 1)[1]) for p, o in owners.items()} == ports
        assert len(set(ports.values())) > 1, "every partition landed on one shard"
    else:
        assert len(set(owners.values())) == 1
    assert validate_stream(stream.config).ok


def test_rerun_and_replay_write_nothing_twice(make_spread, target):
    client, _, _ = target
    stream = make_spread(list(payment_events(600, 4)), 4, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    assert backfill(stream.config, progress=False).records == 0

    more = list(payment_events(200, 4, seed=7))
    produce_records(stream.services.kafka_bootstrap, stream.config.kafka.topic, more)
    assert backfill(stream.config, progress=False).records == 200
    expected = expected_records(stream.records + more)

    # a batch sent again (a stale worker, a lost reply) is skipped by the partition's frontier
    ingestor = Ingestor(client, keys)
    replies = ingestor.call_many(
        [(p, ingestor.batch_args(p, 0, expected[p][:5])) for p in range(4)]
    )
    assert [int(r[0]) for r in replies] == [0, 0, 0, 0]
    for p in range(4):
        assert [r for _, r in read_redis_records(client, keys.stream_for(p))] == expected[p]
    assert validate_stream(stream.config).ok


def _check_copies(client, keys, partitions: int) -> PhaseState:
    """Every partition's copy of the phase is the migration's phase."""
    main = read_phase(client, keys)
    copies = read_phase_copies(client, keys)
    assert copies == dict.fromkeys(range(partitions), main), (main, copies)
    return main


def _check_both_sides(stream, client, keys, partitions: int) -> list:
    """Reconciled partition by partition: a shadow names its entry by ID, unique per stream."""
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, partitions)
    return [
        reconcile(kafka.get(p, []), read_redis_records(client, keys.stream_for(p)))
        for p in range(partitions)
    ]


def test_cutover_rollback_and_cutover_again_with_phase_copies_per_slot(make_spread, target):
    client, _, _ = target
    stream = make_spread(list(payment_events(300, 4)), 4, layout="spread")
    keys = migration_keys(stream.config)
    with dual_writing(client, stream.config) as writer:
        assert _check_copies(client, keys, 4).phase == DUAL_WRITE
        for i in range(200):
            writer.send(b"dual %d" % i, key=b"k%d" % (i % 7))
        writer.flush()
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        assert _check_copies(client, keys, 4).phase == REDIS_PRIMARY
        for i in range(300):
            writer.send(b"primary %d" % i, key=b"k%d" % (i % 7), headers=[("trace", b"%d" % i)])
        writer.flush()
        wait_for_no_lag(stream.config)
        assert writer.counts.written_redis_first == 300 and writer.counts.shadowed == 300
        assert read_state_counters(client, keys, "primary_written", "shadowed") == (300, 300)
        plan = plan_rollback(stream.config)
        assert plan.target == DUAL_WRITE and plan.unshadowed == 0
        for i in range(100):  # queued Redis-first, then the rollback: the rest go to Kafka
            writer.send(b"around rollback %d" % i, key=b"k%d" % (i % 7))
        assert roll_back(stream.config, plan)[0] == DUAL_WRITE
        assert _check_copies(client, keys, 4).phase == DUAL_WRITE
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
    results = _check_both_sides(stream, client, keys, 4)
    assert all(r.ok and r.unshadowed == 0 for r in results), results
    total = 300 + 200 + 300 + 100 + 100 + 100
    assert sum(r.kafka for r in results) == sum(r.redis for r in results) == total
    assert validate_stream(stream.config).ok
    for p in range(4):  # the writer's sequence fields left with it, from every partition's hash
        assert not [f for f in client.hkeys(keys.partition_state(p)) if f.startswith(b"wseq:")]


def test_a_partition_whose_copy_says_dual_write_refuses_redis_first(make_spread, target):
    """The slot's copy is the fence: a writer that still believes redis-primary after the
    rollback gets the copy's phase back and nothing is written."""
    client, _, _ = target
    stream = make_spread(list(payment_events(40, 2)), 2, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(client, keys)
    start_draining(client, keys, lease_s=30)
    complete_cutover(client, keys)
    primary = _script(client, "primary.lua")
    batch = [1, "stale-writer", 1, BASE_TS_MS, 0, b"k", b"v", b""]
    reply = primary(keys=[keys.partition_state(1), keys.stream_for(1)], args=batch)
    assert reply[0] == b"redis-primary" and len(reply) == 2
    set_phase(client, keys, DUAL_WRITE, "rollback")
    batch[2] = 2
    reply = primary(keys=[keys.partition_state(1), keys.stream_for(1)], args=batch)
    assert reply == [b"dual-write"]
    copied = len(expected_records(stream.records)[1])
    assert client.xlen(keys.stream_for(1)) == copied + 1  # + the one written Redis-first


def test_a_switch_refused_for_its_lease_puts_the_copies_back(make_spread, target):
    client, _, _ = target
    stream = make_spread(list(payment_events(20, 3)), 3, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(client, keys)
    start_draining(client, keys, lease_s=0.05)
    lease_end = int(client.hget(keys.state, "lease_until"))
    wait_until(lambda: server_ms(client) > lease_end, "the lease to pass on the server's clock")
    with pytest.raises(LeaseExpired):
        complete_cutover(client, keys)
    assert _check_copies(client, keys, 3).phase == DRAINING
    assert expire_draining(client, keys, "test").phase == DUAL_WRITE
    _check_copies(client, keys, 3)


def test_a_partition_armed_after_the_hand_over_makes_the_consumer_refuse(make_spread, target):
    """A partition the topic gained after a group's hand-over has no Redis group: the
    consumer refuses, naming it, instead of never delivering its entries."""
    from ferry.core.ingest import arm_migration
    from ferry.errors import HandoverError
    from ferry.live.handover import StreamConsumer, translate_group

    client, _, _ = target
    stream = make_spread(list(payment_events(40, 2)), 2, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    translate_group(stream.config, "billing", committed={0: 3, 1: 4})
    consumer = StreamConsumer(stream.config, "billing", batch=5)
    waiting = consumer.lag()
    assert waiting == consumer.backlog() > 5  # over both partition streams
    delivered = consumer.poll()  # delivered, not acknowledged: still in the backlog
    assert (consumer.lag(), consumer.backlog()) == (waiting - len(delivered), waiting)
    consumer.ack(*delivered)
    assert consumer.backlog() == waiting - len(delivered)
    arm_migration(client, keys, stream.config.kafka.topic, {2: 0})
    with pytest.raises(HandoverError, match=r"partition\(s\) \[2\] joined the migration after"):
        StreamConsumer(stream.config, "billing")


def test_a_group_that_read_shadows_is_handed_over_exactly_after_redis_first_writes(
    make_spread, target
):
    """A spread migration in redis-primary, its writer gone (its sequence fields with it): a
    Kafka group that read part of the shadows is handed over, and the Redis groups deliver
    exactly the entries it had not consumed, Redis-first ones included, each once."""
    from ferry.core.entries import REDIS_ORIGIN, shadow_of
    from ferry.live.handover import StreamConsumer, translate_group

    from .test_live import commit_group

    client, _, _ = target
    stream = make_spread(list(payment_events(200, 3)), 3, layout="spread")
    keys = migration_keys(stream.config)
    with dual_writing(client, stream.config) as writer:
        for i in range(90):
            writer.send(b"dual %d" % i, key=b"k%d" % i)
        writer.flush()
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        for i in range(240):
            writer.send(b"primary %d" % i, key=b"k%d" % i)
        writer.flush()
        writer.close()  # its wseq fields go: only primary_from says Redis-first entries exist
        wait_for_no_lag(stream.config)
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, 3)
    committed, consumed = {}, set()
    for p, records in kafka.items():  # the group read up to the middle of the shadows
        shadows = [r for r in records if shadow_of(r) is not None]
        assert len(shadows) > 20, p
        committed[p] = shadows[len(shadows) // 2].offset
        for r in records[: committed[p]]:
            sid = shadow_of(r)
            consumed.add((p, "r", sid.decode()) if sid else (p, "k", r.offset))
    commit_group(stream.bootstrap, stream.config.kafka.topic, "billing", committed)
    translate_group(stream.config, "billing")

    def identity(entry_id, record):
        if record.offset == REDIS_ORIGIN:
            return (record.partition, "r", getattr(entry_id, "decode", lambda: entry_id)())
        return (record.partition, "k", record.offset)

    everything = {
        p: [identity(i, r) for i, r in read_redis_records(client, keys.stream_for(p))]
        for p in range(3)
    }
    consumer = StreamConsumer(stream.config, "billing", batch=50, block_ms=50)
    delivered: dict[int, list] = {p: [] for p in range(3)}
    while batch := consumer.poll():
        for d in batch:
            delivered[d.record.partition].append(identity(d.entry_id, d.record))
        consumer.ack(*batch)
    for p in range(3):
        assert delivered[p] == [i for i in everything[p] if i not in consumed], p
    assert any(i[1] == "r" for i in consumed) and any(
        i[1] == "r" for p in range(3) for i in delivered[p]
    )
    assert consumer.backlog() == 0


def test_a_group_handed_over_after_retention_trimmed_counts_lag_as_redis_does(make_spread, target):
    """Redis counts a group's lag from every entry ever added: a hand-over after retention
    trimmed the head still reports exactly the entries left to read, and zero once read."""
    from dataclasses import replace

    from ferry.config import TrimPolicy
    from ferry.live.handover import StreamConsumer, translate_group
    from ferry.redis.retention import trim_stream

    client, _, _ = target
    stream = make_spread(list(payment_events(300, 3)), 3, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    assert trim_stream(client, replace(stream.config, trim=TrimPolicy(max_len=40))).removed
    lows = {p: int(client.xrange(keys.stream_for(p), count=1)[0][1][b"o"]) for p in range(3)}
    committed = {p: lows[p] + 10 for p in range(3)}
    translation = translate_group(stream.config, "billing", committed=committed)
    assert translation.method == "seek"
    consumer = StreamConsumer(stream.config, "billing", batch=500, block_ms=50)
    assert consumer.lag() == 3 * 30  # each stream keeps 40, the group had read 10 of them
    while batch := consumer.poll():
        consumer.ack(*batch)
    assert (consumer.lag(), consumer.backlog()) == (0, 0)


def test_a_rerun_after_a_crash_records_the_starts_the_partitions_were_made_with(
    make_spread, target
):
    """A crash after the partitions' groups were made, before the record: records arrive in
    a partition the group never committed (reset latest) and the rerun finishes the hand-over.
    The record and the returned translation say where the groups really start."""
    from ferry.live.group_keys import handover_record_key
    from ferry.live.handover import translate_group

    client, _, _ = target
    stream = make_spread(list(payment_events(60, 2)), 2, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    first = translate_group(stream.config, "billing", committed={0: 5})
    client.delete(handover_record_key(keys, "billing"))  # the crash: no record yet
    produce_records(stream.bootstrap, stream.config.kafka.topic, list(payment_events(40, 2)))
    backfill(stream.config, progress=False)  # partition 1 grows past its 'latest' position
    again = translate_group(stream.config, "billing", committed={0: 5})
    real = {
        p: client.xinfo_groups(keys.stream_for(p))[0]["last-delivered-id"].decode()
        for p in range(2)
    }
    assert again.starts == first.starts == real
    assert again.reset_offsets == first.reset_offsets
    assert again.entries_read == first.entries_read
