"""The spread layout: a hash tag per partition (``{name:p}``), so one topic's partitions
spread over a cluster's shards while each ingest stays one script on one shard.

One test body per behaviour, run on a standalone server and on a local 3-primary cluster
(started once per Redis kind, on the Tansu stack, as in test_cluster)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from ferry.core.ingest import Ingestor, migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.live.phases import IllegalTransition, set_phase, start_dual_write
from ferry.services.seed import payment_events, produce_records

from .cluster import cluster_client, owner_port, start_cluster_like
from .conftest import stream_factory
from .helpers import expected_records, read_redis_records

pytestmark = pytest.mark.redis_side

PARTITIONS = 12  # all 12 slots on one of 3 shards by chance: about 6 in a million


@pytest.fixture(scope="module")
def spread_cluster(services, tmp_path_factory):
    if services.kafka_kind != "tansu":
        pytest.skip("the cluster runs on one broker, Tansu (stack has none)")
    local = start_cluster_like(services, tmp_path_factory.mktemp(f"spread-{services.redis_kind}"))
    yield local
    local.stop()


@pytest.fixture(params=["standalone", "cluster"])
def target(request, services, redis_client):
    """(client, make_stream, local cluster or None) on the topology of the parameter."""
    if request.param == "standalone":
        yield redis_client, None, {"url": services.redis_url}
        return
    local = request.getfixturevalue("spread_cluster")
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
    if local is not None:
        owners = {owner_port(local, key_slot(keys.stream_for(p).encode())) for p in range(12)}
        assert len(owners) > 1, "every partition landed on one shard"
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


def test_redis_first_phases_are_refused_by_name(make_spread, target):
    client, _, _ = target
    stream = make_spread(list(payment_events(50, 2)), 2, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(client, keys)
    with pytest.raises(IllegalTransition, match="layout 'spread'"):
        set_phase(client, keys, "draining")
