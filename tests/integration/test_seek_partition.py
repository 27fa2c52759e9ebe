"""The seek on one partition's stream (per-partition and spread layouts): a binary search on
entry IDs in one script gives the same start as reading the stream in order, on streams
built entry by entry: many entries in one millisecond, sparse milliseconds, offset gaps (the
seek answers, but says the entries before cannot be counted), and an entry written Redis-first
(the seek refuses)."""

from __future__ import annotations

import random

import pytest

from ferry.core.ingest import _script
from ferry.live.handover_partitions import seek_partition

pytestmark = pytest.mark.redis_side


def build(client, key: str, ids_and_offsets: list[tuple[str, int | None]]) -> None:
    pipe = client.pipeline(transaction=False)
    for entry_id, offset in ids_and_offsets:
        pipe.xadd(key, {"p": 0, "o": "" if offset is None else offset, "v": "x"}, id=entry_id)
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
