"""The hand-over on a Redis Cluster target (a local 3-primary cluster, read and written through
ferry's cluster client): the seek's probes and the translation script go to the node that owns
the migration's slot, on a node other than the seed's too, and the answer is the scan's."""

from __future__ import annotations

import pytest

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.live.handover import StreamConsumer, seek_plan
from ferry.redis.target import connect_redis

from .cluster import cluster_client, name_on_node, start_cluster_like
from .conftest import stream_factory
from .test_handover_seek import (
    assert_group_matches,
    assert_seek_equals_scan,
    awkward_records,
    cases,
    frontier_offsets,
)

pytestmark = pytest.mark.redis_side


@pytest.fixture(scope="session")
def handover_cluster(services, tmp_path_factory):
    if services.kafka_kind != "tansu":
        pytest.skip("the cluster tests run on one broker, Tansu (stack has none)")
    folder = tmp_path_factory.mktemp(f"handover-cluster-{services.redis_kind}")
    local = start_cluster_like(services, folder)
    yield local
    local.stop()


@pytest.fixture
def redis_client(handover_cluster):
    client = cluster_client(handover_cluster, seed=0)
    yield client
    client.close()


@pytest.fixture
def make_stream(services, redis_client, handover_cluster, request):
    doc = {"cluster": {"addresses": handover_cluster.addresses[:1]}}  # seeded from one node
    yield from stream_factory(services, redis_client, request, doc, prefix="h")


def test_hand_over_seeks_on_a_cluster_node_other_than_the_seed(
    make_stream, redis_client, handover_cluster
):
    name = name_on_node(handover_cluster, handover_cluster.ports[2], "hc")
    stream = make_stream(
        awkward_records(3000, 4), partitions=4, name=name, extra={"batch_size": 41}
    )
    target = connect_redis(stream.config)
    assert type(target).__name__ == "FerryCluster"
    backfill(stream.config, progress=False)
    ends = frontier_offsets(target, stream.config)
    assert_seek_equals_scan(target, stream.config, cases(ends)[:10])
    committed = {p: e // 2 for p, e in ends.items() if e}
    translation = assert_group_matches(target, stream.config, "cg", committed, "seek")
    # the Redis group delivers exactly what the Kafka group had not consumed
    consumer = StreamConsumer(stream.config, "cg", "c1", batch=200, block_ms=50)
    got = []
    while batch := consumer.poll():
        got += batch
        consumer.ack(*batch)
    assert sorted((d.record.partition, d.record.offset) for d in got) == sorted(
        (p, o) for p, e in ends.items() for o in range(committed.get(p, 0), e)
    )
    assert consumer.skipped == translation.skipped_later and consumer.lag() == 0
    keys = migration_keys(stream.config)
    assert seek_plan(target, keys, stream.config, {}) == ("0-0", 0, 0)
