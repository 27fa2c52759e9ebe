import math

import pytest

from ferry.runbook.sizing import (
    GB,
    SizingInputs,
    memory_over_retention,
    replace_inputs,
    shards_over_rate,
    size_target,
)

BASE = SizingInputs(
    bytes_per_entry=600,
    event_rate=1000,
    xadd_rate=100_000,
    retention_s=7 * 86_400,
    backlog_records=0,
    node_memory_gb=13,
    headroom=0.25,
    replicas=1,
    node_price_month=200,
)


def test_memory_shards_nodes_and_cost():
    s = size_target(BASE)
    assert s.entries == 1000 * 7 * 86_400
    assert s.memory_gb == pytest.approx(s.entries * 600 / GB)
    assert s.shards_for_memory == math.ceil(s.entries * 600 / (13 * GB * 0.75)) == 35
    assert s.shards_for_throughput == 1
    assert (s.shards, s.nodes, s.monthly_cost) == (35, 70, 14_000)
    assert s.throughput_headroom == 100
    assert s.fits_one_shard is False


def test_backlog_larger_than_retention_window_counts():
    s = size_target(replace_inputs(BASE, event_rate=0, backlog_records=1_000_000))
    assert (s.entries, s.shards, s.fits_one_shard) == (1_000_000, 1, True)
    assert s.throughput_headroom == math.inf


def test_throughput_can_need_more_shards_than_memory():
    s = size_target(replace_inputs(BASE, retention_s=60, event_rate=200_000))
    assert s.shards_for_memory == 1
    assert s.shards_for_throughput == math.ceil(200_000 / 75_000) == 3
    assert s.shards == 3


def test_chart_series_grow_monotonically():
    mem = memory_over_retention(BASE, [1, 7, 30])
    assert [m["memory_gb"] for m in mem] == sorted(m["memory_gb"] for m in mem)
    shards = shards_over_rate(BASE, [100, 10_000, 1_000_000])
    assert [s["shards"] for s in shards] == sorted(s["shards"] for s in shards)


@pytest.mark.parametrize(
    "field, value", [("headroom", 0.95), ("bytes_per_entry", 0), ("replicas", -1)]
)
def test_bad_inputs_name_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        replace_inputs(BASE, **{field: value})


SPREAD = replace_inputs(BASE, partitions=16, layout="spread")


def test_single_slot_layout_that_needs_many_shards_is_not_feasible():
    s = size_target(BASE)  # 35 shards' worth of memory, in one slot
    assert (s.feasible, s.shards) == (False, 35)
    assert "use layout 'spread'" in s.limit


def test_spread_plans_shards_from_partitions_as_well_as_bytes():
    # 8.75 nodes' worth of memory (9 shards by bytes) over 16 partitions: 0.55 node each, so
    # no shard can hold two; the partitions decide: 16 shards
    s = size_target(replace_inputs(SPREAD, retention_s=7 * 86_400 / 4))
    assert s.shards_for_memory == 9
    assert (s.feasible, s.shards_for_partitions, s.shards, s.nodes) == (True, 16, 16, 32)
    # 4.4 nodes' worth (5 by bytes): 0.27 node per partition, at most 3 per shard: 6 shards
    s = size_target(replace_inputs(SPREAD, retention_s=7 * 86_400 / 8))
    assert s.shards_for_memory == 5
    assert (s.shards_for_partitions, s.shards) == (6, 6)
    assert "busiest shard holding 3" in s.limit


def test_spread_with_too_few_partitions_is_not_feasible():
    s = size_target(SPREAD)  # 35 nodes' worth over 16 partitions: 2.2 nodes per partition
    assert (s.feasible, s.shards_for_partitions, s.shards) == (False, None, 16)
    assert "one partition alone" in s.limit


def test_spread_rate_bound_counts_the_busiest_shard():
    s = size_target(replace_inputs(SPREAD, retention_s=60, event_rate=200_000, xadd_rate=100_000))
    # 200k/s over 16 partitions = 12.5k/s each; a node takes 75k/s: 6 partitions per shard at
    # most, so 3 shards (busiest 6)
    assert s.shards_for_throughput == 3
    assert s.shards_for_partitions == 3
