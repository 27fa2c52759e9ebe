"""The seek on one partition's stream (per-partition and spread layouts): a binary search on
entry IDs in one script gives the same start as reading the stream in order, on streams
built entry by entry: many entries in one millisecond, sparse milliseconds, offset gaps (the
seek answers, but says the entries before cannot be counted), and an entry written Redis-first
(the seek refuses)."""

from __future__ import annotations

import random

import pytest

from ferry.core.ingest import MigrationKeys, _script
from ferry.live.group_keys import GroupTarget
from ferry.live.handover_partitions import PartitionSnapshot, plan_partition, seek_partition

pytestmark = pytest.mark.redis_side


def build(client, key: str, ids_and_offsets: list[tuple[str, int | None]]) -> None:
    pipe = client.pipeline(transaction=False)
    for entry_id, offset in ids_and_offsets:
        fields = {"p": 0, "o": "" if offset is None else offset, "ts": 1, "f": 0, "k": "", "h": ""}
        pipe.xadd(key, {**fields, "v": "x"}, id=entry_id)
    pipe.execute()


def by_reading(client, key: str, offset: int) -> str:
    before = "0-0"
    for entry_id, fields in client.xrange(key):
        if int(fields[b"o"]) >= offset:
            break
        before = entry_id.decode()
    return before


def shapes() -> dict[str, list[tuple[str, int]]]:
    rng = random.Random(5)
    sparse, ms = [], 1_000
    for o in range(300):
        ms += rng.choice([1, 1, 2, 17, 900, 86_400_000])
        sparse.append((f"{ms}-0", o))
    mixed, ms, seq = [], 5_000, 0
    for o in range(0, 1500, rng.choice([1, 1, 1, 3])):
        if rng.random() < 0.3:
            ms, seq = ms + rng.randint(1, 50), 0
        else:
            seq += 1
        mixed.append((f"{ms}-{seq}", o))
    return {
        "one millisecond": [(f"7000-{i}", 100 + i) for i in range(2000)],
        "sparse milliseconds": sparse,
        "runs in milliseconds, offset gaps": mixed,
        "one entry": [("9-3", 41)],
    }


@pytest.mark.parametrize("shape", list(shapes()))
def test_the_seek_starts_where_reading_in_order_does(redis_client, shape, request):
    key = f"{{seek-{request.node.name}}}:stream"
    entries = shapes()[shape]
    build(redis_client, key, entries)
    offsets = [o for _, o in entries]
    dense = offsets == list(range(offsets[0], offsets[-1] + 1))
    probes = sorted({0, offsets[0], offsets[0] + 1, offsets[-1], offsets[-1] + 1, offsets[-1] + 9})
    probes += random.Random(3).sample(range(offsets[0], offsets[-1] + 1), min(60, len(offsets)))
    seek = _script(redis_client, "seek_partition.lua")
    try:
        for c in probes:
            assert seek(keys=[key], args=[c])[0].decode() == by_reading(redis_client, key, c), c
            found = seek_partition(redis_client, key, c)
            if dense:
                assert found == (by_reading(redis_client, key, c), sum(o < c for o in offsets)), c
            else:
                assert isinstance(found, str) and "not dense" in found
    finally:
        redis_client.delete(key)


def test_an_entry_written_redis_first_makes_the_seek_refuse(redis_client, request):
    key = f"{{seek-{request.node.name}}}:stream"
    build(redis_client, key, [(f"100-{i}", i) for i in range(50)] + [("101-0", None)])
    build(redis_client, key, [(f"102-{i}", 50 + i) for i in range(50)])
    try:
        assert "without a Kafka offset" in seek_partition(redis_client, key, 30)
    finally:
        redis_client.delete(key)


def test_a_partition_once_redis_first_is_read_in_order_though_the_seek_would_answer(
    redis_client, request
):
    """Offsets 0..9, an entry written Redis-first (its shadow took offset 10 in Kafka), offset
    11: the stream is as long as its offsets span, so the seek answers, wrongly, for a group
    at 12 that never read the shadow. ``primary_from:<p>`` (it stays after the writer left)
    sends the partition to the in-order read, which starts before the Redis-first entry."""
    key = f"{{seek-{request.node.name}}}:stream"
    build(
        redis_client, key, [(f"100-{i}", i) for i in range(10)] + [("101-0", None), ("102-0", 11)]
    )
    keys = MigrationKeys(f"{{seek-{request.node.name}}}", key, "per-partition")
    target = GroupTarget(0, key, f"{key}:offsets")
    try:
        assert seek_partition(redis_client, key, 12) == ("102-0", 12)  # what a seek says
        snapshot = PartitionSnapshot({b"primary_from:0": b"10"}, (102, 0))
        plan = plan_partition(redis_client, keys, target, 12, set(), False, snapshot)
        assert (plan.start_id, plan.method) == ("100-9", "scan")
        assert plan.skipped_later == 1  # offset 11: consumed, acknowledged unseen
        clean = PartitionSnapshot({}, (102, 0))
        assert plan_partition(redis_client, keys, target, 12, set(), False, clean).method == "seek"
    finally:
        redis_client.delete(key)


def test_ids_beyond_a_doubles_exact_integers_make_the_seek_refuse(redis_client, request):
    """Lua numbers are doubles: sequence numbers past 2^53 cannot be halved exactly (the
    search would never end), so the seek refuses them and the in-order read answers."""
    key = f"{{seek-{request.node.name}}}:stream"
    build(redis_client, key, [("5-0", 0), (f"5-{2**55}", 1), (f"5-{2**55 + 8}", 2)])
    try:
        assert "beyond 2^53" in seek_partition(redis_client, key, 2)
    finally:
        redis_client.delete(key)
