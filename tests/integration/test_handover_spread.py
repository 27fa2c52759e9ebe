"""Consumer hand-over in the per-partition and spread layouts: a Kafka group becomes one Redis
consumer group per partition stream, and ``StreamConsumer`` reads them all.

Offsets are committed through the real Kafka group coordinator. The spread bodies run on a
standalone server and on the session's shared 3-primary cluster (partitions on several
shards, so every step must stay within one partition's slot); the per-partition layout, whose
streams share one slot, on the standalone server."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pytest
import yaml
from redis.crc import key_slot

from ferry.cli import main
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.errors import HandoverError
from ferry.live.consumer import StreamConsumer
from ferry.live.finish import check_handed_over
from ferry.live.group_keys import dead_letter_key, group_targets, handover_record_key
from ferry.live.handover import (
    group_translated,
    hand_over_group,
    handover_requested,
    translate_group,
)
from ferry.runbook.keda import (
    groups_on_streams,
    handed_over_groups,
    render_scaled_object,
    stream_partitions,
)
from ferry.services.seed import payment_events, produce_records

from .cluster import cluster_client, owner_port, shared_cluster, slot_of
from .conftest import stream_factory
from .helpers import Mirror, expected_records, read_redis_records, wait_until
from .test_live import commit_group

pytestmark = pytest.mark.redis_side

PARTITIONS = 12
CASES = {
    "spread-standalone": ("spread", "standalone"),
    "spread-cluster": ("spread", "cluster"),
    "per-partition-standalone": ("per-partition", "standalone"),
}


@dataclass
class Target:
    layout: str
    client: object
    local: object  # the LocalCluster, or None on a standalone server
    doc: dict  # the config's redis block, without layout


@pytest.fixture(params=list(CASES.values()), ids=list(CASES))
def target(request, services, redis_client):
    layout, where = request.param
    if where == "standalone":
        yield Target(layout, redis_client, None, {"url": services.redis_url})
        return
    local = shared_cluster(request, services)
    client = cluster_client(local)
    yield Target(layout, client, local, {"cluster": {"addresses": local.addresses}})
    client.close()


@pytest.fixture
def make(services, target, request):
    """``stream_factory``'s factory with the target's layout; deletes the keys afterwards."""
    for factory in stream_factory(services, target.client, request, target.doc, prefix="h"):
        yield functools.partial(factory, layout=target.layout)


def migrated(make, target, n: int = 600, partitions: int = PARTITIONS):
    """A topic of ``n`` payment events over ``partitions`` partitions, backfilled: (stream,
    keys, expected records per partition)."""
    stream = make(list(payment_events(n, partitions)), partitions)
    backfill(stream.config, progress=False)
    expected = expected_records(stream.records)
    assert sorted(expected) == list(range(partitions))  # every partition has history
    return stream, migration_keys(stream.config), expected


def drain(consumer: StreamConsumer, keys) -> dict[int, list[int]]:
    """Every delivery until the group is caught up, acknowledged: offsets per partition, in
    the order delivered; each delivery came from its partition's stream."""
    got: dict[int, list[int]] = {}
    while batch := consumer.poll():
        for d in batch:
            assert d.stream == keys.stream_for(d.record.partition), d
            got.setdefault(d.record.partition, []).append(d.record.offset)
        consumer.ack(*batch)
    return got


def after(expected, offsets: dict[int, int]) -> dict[int, list[int]]:
    """The offsets at or after ``offsets[p]`` in each partition (none left out)."""
    out = {p: [r.offset for r in rs if r.offset >= offsets[p]] for p, rs in expected.items()}
    return {p: o for p, o in out.items() if o}


def ids_by_offset(client, stream: str) -> dict[int, str]:
    return {r.offset: entry_id.decode() for entry_id, r in read_redis_records(client, stream)}


def groups_on(client, stream: str) -> dict[str, dict]:
    return {g["name"].decode(): g for g in client.xinfo_groups(stream)}


def snapshot(client, keys, group: str, partitions: list[int]):
    """What a hand-over wrote: each stream's groups and every key kept beside them."""
    out = {"record": client.hgetall(handover_record_key(keys, group))}
    for t in group_targets(keys, group, partitions):
        out[t.stream] = (
            groups_on(client, t.stream),
            client.hgetall(t.offsets),
            client.smembers(t.shadows),
            client.hgetall(t.record),
        )
    return out


def test_each_partition_stream_gets_the_group_at_its_committed_offset(make, target):
    client = target.client
    stream, keys, expected = migrated(make, target)
    config = stream.config
    if target.local is not None:  # the partition streams live on several shards
        owners = {owner_port(target.local, slot_of(keys.stream_for(p))) for p in expected}
        assert len(owners) > 1, "every partition landed on one shard"
    size = {p: len(rs) for p, rs in expected.items()}
    # different offsets per partition: nothing consumed, one, half, all, all but one...;
    # partitions 8..11 never committed
    committed = {0: 0, 1: 1, 2: size[2] // 2, 3: size[3], 4: 5, 5: size[5] - 1, 6: 2, 7: 10}
    commit_group(stream.bootstrap, config.kafka.topic, "billing", committed)
    commit_group(stream.bootstrap, config.kafka.topic, "audit", {0: 3})

    translation = translate_group(config, "billing")  # latest: Kafka's default
    assert translation.group == "billing" and translation.stream == config.redis.stream
    assert translation.committed == committed
    assert translation.reset_offsets == {p: size[p] for p in range(8, PARTITIONS)}
    offsets = {**committed, **translation.reset_offsets}
    # each partition's group starts after the last entry the Kafka group consumed there
    starts = {}
    for p in range(PARTITIONS):
        ids = ids_by_offset(client, keys.stream_for(p))
        starts[p] = ids[offsets[p] - 1] if offsets[p] else "0-0"
    assert translation.starts == starts
    targets = group_targets(keys, "billing", list(range(PARTITIONS)))
    assert [t.stream for t in targets] == [keys.stream_for(p) for p in range(PARTITIONS)]
    for t in targets:
        info = groups_on(client, t.stream)
        assert set(info) == {"billing"}, t.stream
        assert info["billing"]["last-delivered-id"].decode() == starts[t.partition]
        assert int(client.hget(t.offsets, str(t.partition))) == offsets[t.partition]
        assert key_slot(t.offsets.encode()) == key_slot(t.stream.encode())
    assert client.hget(handover_record_key(keys, "billing"), "done") is not None

    consumer = StreamConsumer(config, "billing", "c1", batch=64, block_ms=50)
    want = after(expected, offsets)
    assert consumer.lag() == sum(map(len, want.values()))
    got = drain(consumer, keys)
    assert got == want  # each once, in offset order; nothing of 8..11
    assert consumer.lag() == 0
    for p in range(PARTITIONS):
        assert groups_on(client, keys.stream_for(p))["billing"]["pending"] == 0

    # another group, earliest: every partition it never committed from its start
    audit = translate_group(config, "audit", reset="earliest")
    assert audit.reset_offsets == dict.fromkeys(range(1, PARTITIONS), 0)
    got = drain(StreamConsumer(config, "audit", "c1", batch=64, block_ms=50), keys)
    assert got == after(expected, {0: 3, **dict.fromkeys(range(1, PARTITIONS), 0)})


def test_live_records_reach_the_handed_over_group_once(make, target):
    client = target.client
    stream, keys, expected = migrated(make, target, n=240, partitions=6)
    config = stream.config
    committed = {p: len(expected[p]) // 2 for p in range(4)}  # 4, 5: latest
    commit_group(stream.bootstrap, config.kafka.topic, "billing", committed)
    translation = translate_group(config, "billing")
    consumer = StreamConsumer(config, "billing", "c1", batch=50, block_ms=50)
    assert drain(consumer, keys) == after(expected, {**committed, **translation.reset_offsets})

    more = list(payment_events(120, 6, seed=7))
    before = {p: len(rs) for p, rs in expected.items()}
    whole = expected_records(stream.records + more)
    want = {p: [r.offset for r in rs[before.get(p, 0) :]] for p, rs in whole.items()}
    want = {p: o for p, o in want.items() if o}
    got: dict[int, list[int]] = {}
    mirror = Mirror(config)
    try:
        produce_records(stream.bootstrap, config.kafka.topic, more)

        def arrived() -> bool:
            for d in (batch := consumer.poll()):
                assert d.stream == keys.stream_for(d.record.partition)
                got.setdefault(d.record.partition, []).append(d.record.offset)
            consumer.ack(*batch)
            return sum(map(len, got.values())) >= len(more)

        wait_until(arrived, "the live records to reach the Redis group")
    finally:
        mirror.close()
    assert drain(consumer, keys) == {}  # nothing more, nothing twice
    assert got == want
    assert consumer.lag() == 0
    assert sum(client.xlen(keys.stream_for(p)) for p in range(6)) == 240 + 120


def test_a_rerun_changes_nothing_and_a_commit_since_is_refused(make, target):
    client = target.client
    stream, keys, expected = migrated(make, target, n=240, partitions=6)
    config = stream.config
    committed = {0: 3, 1: 7, 3: 1}
    commit_group(stream.bootstrap, config.kafka.topic, "billing", committed)
    first = translate_group(config, "billing")
    partitions = list(range(6))
    # a consumer has read some and acknowledged part of it: a rerun must not move anything
    consumer = StreamConsumer(config, "billing", "c1", batch=30, block_ms=50)
    batch = consumer.poll()
    consumer.ack(*batch[:10])
    made = snapshot(client, keys, "billing", partitions)
    assert all(made[keys.stream_for(p)][0] for p in partitions)  # a group on every stream
    assert sum(made[keys.stream_for(p)][0]["billing"]["pending"] for p in partitions) == 20

    assert translate_group(config, "billing") == first
    assert translate_group(config, "billing", committed=committed) == first
    assert snapshot(client, keys, "billing", partitions) == made

    commit_group(stream.bootstrap, config.kafka.topic, "billing", {1: 9})
    with pytest.raises(HandoverError, match="committed since") as refused:
        translate_group(config, "billing")
    assert "partition 1: 7 -> 9" in str(refused.value)
    assert snapshot(client, keys, "billing", partitions) == made


def _crash_half_way(client, keys, group: str, partitions: list[int], lost: list[int]) -> None:
    """What a hand-over interrupted after its other partitions looks like: no record, and
    partitions ``lost`` never got their group or the keys beside it."""
    client.delete(handover_record_key(keys, group))
    for t in group_targets(keys, group, partitions):
        if t.partition in lost:
            client.xgroup_destroy(t.stream, group)
            for key in (t.offsets, t.shadows, t.failures, t.record):
                client.delete(key)


def test_a_hand_over_interrupted_half_way_is_completed_by_a_rerun(make, target):
    client = target.client
    stream, keys, expected = migrated(make, target, n=240, partitions=6)
    config = stream.config
    committed = {p: 2 * p + 1 for p in range(6)}
    commit_group(stream.bootstrap, config.kafka.topic, "billing", committed)
    partitions = list(range(6))
    first = translate_group(config, "billing")
    made = snapshot(client, keys, "billing", partitions)

    _crash_half_way(client, keys, "billing", partitions, lost=[4, 5])
    assert "billing" not in groups_on(client, keys.stream_for(5))
    # partition 4's group made but not its part (nobody read it): set to its start
    client.xgroup_create(keys.stream_for(4), "billing", id="0")
    again = translate_group(config, "billing")
    assert (again.committed, again.starts, again.reset_offsets) == (
        first.committed,
        first.starts,
        first.reset_offsets,
    )
    now = snapshot(client, keys, "billing", partitions)
    for p in partitions:  # the groups made before the crash untouched, the others as before
        assert now[keys.stream_for(p)][:3] == made[keys.stream_for(p)][:3], p
    assert client.hget(handover_record_key(keys, "billing"), "done") is not None
    got = drain(StreamConsumer(config, "billing", "c1", batch=64, block_ms=50), keys)
    assert got == after(expected, committed)


def test_a_half_made_group_someone_read_is_refused_naming_its_stream(make, target):
    """Half made: a partition's group without the record of its part (what an interrupted
    earlier release leaves, or a consumer's own XGROUP CREATE). Read since, it is refused:
    moving it would re-deliver or skip what someone saw. A partition whose part is complete
    keeps its group as it is, read or not."""
    client = target.client
    stream, keys, expected = migrated(make, target, n=240, partitions=6)
    config = stream.config
    commit_group(stream.bootstrap, config.kafka.topic, "billing", dict.fromkeys(range(6), 4))
    partitions = list(range(6))
    first = translate_group(config, "billing")
    _crash_half_way(client, keys, "billing", partitions, lost=[4, 5])
    half_made = keys.stream_for(4)
    client.xgroup_create(half_made, "billing", id="0")
    assert client.xreadgroup("billing", "early-bird", {half_made: ">"}, count=1)
    complete = keys.stream_for(2)
    assert client.xreadgroup("billing", "early-bird", {complete: ">"}, count=1)
    before = snapshot(client, keys, "billing", partitions)

    with pytest.raises(HandoverError) as refused:
        translate_group(config, "billing")
    assert half_made in str(refused.value) and "'billing'" in str(refused.value)
    assert complete not in str(refused.value)
    assert snapshot(client, keys, "billing", partitions) == before  # nothing changed
    assert "billing" not in groups_on(client, keys.stream_for(5))
    assert not client.exists(handover_record_key(keys, "billing"))

    # as the refusal says: remove the half-made group, run again
    client.xgroup_destroy(half_made, "billing")
    again = translate_group(config, "billing")
    assert again.starts == first.starts
    kept = groups_on(client, complete)["billing"]
    assert (kept["consumers"], kept["pending"]) == (1, 1)  # not moved
    got = drain(StreamConsumer(config, "billing", "c1", batch=64, block_ms=50), keys)
    assert got == after(expected, {**dict.fromkeys(range(6), 4), 2: 5})


def test_failures_are_dead_lettered_beside_their_partition(make, target):
    client = target.client
    stream, keys, expected = migrated(make, target, n=120, partitions=4)
    config = stream.config
    # one entry left per partition
    commit_group(
        stream.bootstrap,
        config.kafka.topic,
        "billing",
        {p: len(rs) - 1 for p, rs in expected.items()},
    )
    translate_group(config, "billing")
    consumer = StreamConsumer(
        config, "billing", "c1", batch=10, block_ms=50, claim_idle_ms=0, max_failures=2
    )

    def broken(delivery, tx):
        raise RuntimeError(f"cannot handle {delivery.record.offset}")

    dead = 0

    def all_dead() -> bool:
        nonlocal dead
        dead += consumer.process(broken).dead_lettered
        return dead >= 4

    wait_until(all_dead, "every partition's last entry to be dead-lettered", timeout_s=30)
    assert dead == 4
    for t in group_targets(keys, "billing", list(range(4))):
        letters = client.xrange(dead_letter_key(keys, "billing", t))
        last_id, last = read_redis_records(client, t.stream)[-1]
        assert len(letters) == 1, t.stream
        fields = letters[0][1]
        assert (fields[b"source_id"], fields[b"p"], fields[b"o"]) == (
            last_id,
            str(t.partition).encode(),
            str(last.offset).encode(),
        )
        assert fields[b"failures"] == b"2" and b"RuntimeError" in fields[b"reason"]
        assert key_slot(dead_letter_key(keys, "billing", t).encode()) == key_slot(t.stream.encode())
        assert groups_on(client, t.stream)["billing"]["pending"] == 0  # acknowledged
        assert not client.hlen(t.failures)
    assert not client.exists(f"{keys.tag}:ferry:dead:billing")  # not the merged layout's
    assert consumer.lag() == 0


def test_an_idempotent_consumer_writes_in_the_partition_slot_exactly_once(make, target):
    client = target.client
    stream, keys, expected = migrated(make, target, n=120, partitions=4)
    config = stream.config
    committed = {p: 10 for p in range(4)}
    commit_group(stream.bootstrap, config.kafka.topic, "ledger", committed)
    translate_group(config, "ledger")

    def seen_key(p: int) -> str:
        return f"{keys.partition_tag(p)}:test:seen:{p}"

    def handler(delivery, tx):  # the effect, in the partition's slot, in the XACK's MULTI
        tx.rpush(seen_key(delivery.record.partition), delivery.record.offset)

    # c1 reads a batch and dies before processing it; c2 claims it and processes everything
    c1 = StreamConsumer(config, "ledger", "c1", batch=20, block_ms=50, idempotent=True)
    stale = c1.poll()
    assert stale
    c2 = StreamConsumer(
        config, "ledger", "c2", batch=20, block_ms=50, claim_idle_ms=0, idempotent=True
    )
    while c2.process(handler):
        pass
    # c1 comes back and processes what it held: every one a duplicate, nothing written twice
    late = c1.process(handler, stale)
    assert (late.done, late.duplicates) == (0, len(stale))
    for p in range(4):
        seen = [int(v) for v in client.lrange(seen_key(p), 0, -1)]
        assert seen == [r.offset for r in expected[p] if r.offset >= 10], p
        assert groups_on(client, keys.stream_for(p))["ledger"]["pending"] == 0
    assert c2.lag() == 0


def test_finish_and_keda_see_the_group_on_every_partition_stream(make, target):
    client = target.client
    stream, keys, _ = migrated(make, target, n=120, partitions=4)
    config = stream.config
    committed = {0: 3, 1: 5, 2: 1, 3: 8}
    commit_group(stream.bootstrap, config.kafka.topic, "billing", committed)
    assert check_handed_over(client, keys, "billing", committed) == "never handed over"
    translate_group(config, "billing")
    assert check_handed_over(client, keys, "billing", committed) == ""
    assert check_handed_over(client, keys, "billing", {**committed, 2: 4}) == (
        "committed on Kafka since its hand-over"
    )
    assert handed_over_groups(client, config) == ["billing"]
    partitions = stream_partitions(client, config)
    assert partitions == [0, 1, 2, 3]
    text = render_scaled_object(
        config,
        groups=["billing"],
        deployment="pay",
        namespace="pay",
        lag_count=100,
        partitions=partitions,
    )
    triggers = next(yaml.safe_load_all(text))["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [keys.stream_for(p) for p in range(4)]
    assert groups_on_streams(client, config, partitions) == {"billing"}

    client.xgroup_destroy(keys.stream_for(2), "billing")  # one partition's group removed
    why = check_handed_over(client, keys, "billing", committed)
    assert why.startswith("its Redis group was removed") and keys.stream_for(2) in why
    assert keys.stream_for(1) not in why
    assert groups_on_streams(client, config, partitions) == set()

    # a partition the mirror armed after the hand-over (the topic grew): no group was made
    # on its stream, as its absence from the record says
    record = handover_record_key(keys, "billing")
    starts = json.loads(client.hget(record, "starts"))
    del starts["3"]
    client.hset(record, "starts", json.dumps(starts))
    client.xgroup_destroy(keys.stream_for(3), "billing")
    assert check_handed_over(client, keys, "billing", committed) == (
        "partition(s) 3 armed after its hand-over: no Redis group on their streams"
    )


def test_step_05_and_the_cli_hand_a_group_over(make, target, tmp_path, capsys):
    """What step 05 calls (``hand_over_group``: the flag, an empty Kafka group, its offsets)
    and ``ferry translate-group``, whose JSON names each partition stream's start."""
    client = target.client
    stream, keys, expected = migrated(make, target, n=120, partitions=4)
    config = stream.config
    commit_group(stream.bootstrap, config.kafka.topic, "billing", {0: 5, 2: 7})
    commit_group(stream.bootstrap, config.kafka.topic, "fraud", {1: 2})

    assert not group_translated(client, keys, "billing")
    billing = hand_over_group(config, "billing", 30.0, reset="earliest")
    assert handover_requested(client, keys, "billing")
    assert group_translated(client, keys, "billing")
    assert (billing.committed, billing.reset_offsets) == ({0: 5, 2: 7}, {1: 0, 3: 0})
    assert sorted(billing.starts) == [0, 1, 2, 3]

    config_file = stream.write_config(tmp_path / "s.yaml")
    assert main(["translate-group", str(config_file), "fraud"]) == 0
    out = json.loads(capsys.readouterr().out)
    size = {p: len(rs) for p, rs in expected.items()}
    assert (out["stream"], out["committed"]) == (config.redis.stream, {"1": 2})
    assert out["reset_offsets"] == {str(p): size[p] for p in (0, 2, 3)}
    ids = {p: ids_by_offset(client, keys.stream_for(p)) for p in range(4)}
    assert out["starts"] == {
        "0": ids[0][size[0] - 1],
        "1": ids[1][1],
        "2": ids[2][size[2] - 1],
        "3": ids[3][size[3] - 1],
    }
    assert handed_over_groups(client, config) == ["billing", "fraud"]
    assert drain(StreamConsumer(config, "fraud", "c1", batch=64, block_ms=50), keys) == after(
        expected, {1: 2, **{p: size[p] for p in (0, 2, 3)}}
    )
    assert drain(StreamConsumer(config, "billing", "c1", batch=64, block_ms=50), keys) == after(
        expected, {0: 5, 1: 0, 2: 7, 3: 0}
    )
