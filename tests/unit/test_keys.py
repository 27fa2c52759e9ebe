"""The migration's Redis keys per layout, and the slots they hash to (pure: no server)."""

import pytest
from redis.crc import key_slot

from ferry.config import first_hash_tag
from ferry.core.ingest import MigrationKeys


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize(
    "key, tag",
    [
        ("{pay}:stream", "{pay}"),
        ("events:{pay}", "{pay}"),
        ("a{b}{c}", "{b}"),
        ("{}{pay}", None),  # an empty first {} makes Redis hash the whole key
        ("{pay", None),
        ("plain", None),
        ("x}{pay}", "{pay}"),
    ],
)
def test_first_hash_tag_is_what_redis_hashes(key, tag):
    assert first_hash_tag(key) == tag
    if tag is not None:
        assert slot(key) == slot(tag[1:-1])
    else:
        assert slot(key) == key_slot(key.encode())


@pytest.mark.parametrize("layout", ["merged", "per-partition"])
def test_single_slot_layouts_keep_every_key_on_the_tag(layout):
    keys = MigrationKeys("{pay}", "{pay}:stream", layout)
    every = [keys.state, *(keys.partition_state(p) for p in range(16))]
    every += keys.streams(list(range(16)))
    assert {slot(k) for k in every} == {slot("pay")}
    assert keys.partition_state(3) == keys.state


def test_spread_layout_gives_each_partition_its_own_slot():
    keys = MigrationKeys("{pay}", "events:{pay}:v1", "spread")
    assert keys.stream_for(7) == "events:{pay:7}:v1"
    assert keys.partition_state(7) == "{pay:7}:ferry:state"
    assert keys.state == "{pay}:ferry:state"
    for p in range(16):  # a partition's state and stream: one slot, so one atomic script
        assert slot(keys.partition_state(p)) == slot(keys.stream_for(p)) == slot(f"pay:{p}")
    assert len({slot(keys.stream_for(p)) for p in range(16)}) == 16
    assert keys.streams([2, 0]) == ["events:{pay:2}:v1", "events:{pay:0}:v1"]
