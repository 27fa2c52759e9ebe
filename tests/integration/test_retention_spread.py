"""Retention on the spread layout (a hash tag per partition): each partition's stream is
trimmed by one script in its own slot, with its trim records in that partition's state hash,
and validation finds them there. One body per behaviour, on a standalone server and on the
session's local 3-primary cluster (cluster.shared_cluster)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ferry.config import TrimPolicy
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.redis.retention import read_trimmed, read_trimmed_ids, trim_stream
from ferry.services.seed import payment_events

from .cluster import cluster_client, shared_cluster
from .conftest import stream_factory
from .helpers import expected_records, read_redis_records

pytestmark = pytest.mark.redis_side


@pytest.fixture(params=["standalone", "cluster"])
def target(request, services, redis_client):
    """(client, the config's redis block) on the topology of the parameter."""
    if request.param == "standalone":
        yield redis_client, {"url": services.redis_url}
        return
    local = shared_cluster(request, services)
    client = cluster_client(local)
    yield client, {"cluster": {"addresses": local.addresses}}
    client.close()


@pytest.fixture
def make_spread(services, target, request):
    client, doc = target
    yield from stream_factory(services, client, request, doc, prefix="r")


def test_trim_by_length_per_partition_records_in_each_partitions_state(make_spread, target):
    client, _ = target
    stream = make_spread(list(payment_events(1500, 3)), partitions=3, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=TrimPolicy(max_len=100))
    expected = expected_records(stream.records)

    result = trim_stream(client, config, limit=150)
    assert result.removed == 1500 - 300 and result.length_after == 300
    trimmed, trimmed_ids = read_trimmed(client, config), read_trimmed_ids(client, keys, [0, 1, 2])
    for p in range(3):
        key = keys.stream_for(p)
        kept = read_redis_records(client, key)
        assert [r for _, r in kept] == expected[p][-100:]
        assert trimmed[p] == expected[p][-101].offset  # the highest offset retired
        assert client.hget(keys.partition_state(p), f"trimmed:{p}") is not None  # its own slot
        assert trimmed_ids[p] is not None and trimmed_ids[p] < kept[0][0]
    report = validate_stream(config)
    assert report.ok, report.failures()
    assert sum(p.kafka_count for p in report.partitions) == 300
    assert trim_stream(client, config).removed == 0


def test_a_group_on_one_partitions_stream_holds_only_that_stream(make_spread, target):
    client, _ = target
    stream = make_spread(list(payment_events(600, 2)), partitions=2, layout="spread")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=TrimPolicy(max_len=10))
    held = keys.stream_for(0)
    client.xgroup_create(held, "billing", id="0")
    read = client.xreadgroup("billing", "c1", {held: ">"}, count=50)[0][1]
    client.xack(held, "billing", *[entry_id for entry_id, _ in read[:20]])

    result = trim_stream(client, config)
    lengths = [client.xlen(keys.stream_for(p)) for p in range(2)]
    assert result.held_by == "billing"
    assert lengths[1] == 10  # the other partition's stream is trimmed to the bound
    assert lengths[0] == len(expected_records(stream.records)[0]) - 20  # stopped at the group
    assert validate_stream(config).ok
