"""translate_group is atomic and rerunnable: a crash at any point of the hand-over, then a rerun,
gives exactly the hand-over of a clean run.

Releases before the one-script translation created the group, then stored the offsets, then the
consumed shadows, in three round trips; the crashed states are made here by running those steps
by hand on the real Redis, then ``translate_group`` runs again."""

from __future__ import annotations

import pytest
import redis

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.errors import HandoverError
from ferry.live import handover
from ferry.live.handover import group_offsets_key, translate_group
from ferry.services.seed import SeedRecord

from .test_live import commit_group

GROUP = "billing"


def records(n: int, partitions: int) -> list[SeedRecord]:
    return [
        SeedRecord(i % partitions, f"k{i}".encode(), f"v{i}".encode(), (), 1_700_000_000_000 + i)
        for i in range(n)
    ]


def snapshot(client: redis.Redis, config, group: str = GROUP) -> dict:
    """What a hand-over leaves in Redis: the group's position, the stored offsets, the shadows."""
    keys = migration_keys(config)
    groups = {g["name"].decode(): g for g in client.xinfo_groups(keys.stream)}
    info = groups.get(group)
    base = group_offsets_key(keys, group)
    return {
        "group": None
        if info is None
        else {
            "last-delivered-id": info["last-delivered-id"],
            "entries-read": info.get("entries-read"),
            "lag": info.get("lag"),
            "consumers": info["consumers"],
            "pending": info["pending"],
        },
        "offsets": client.hgetall(base),
        "shadows": client.smembers(f"{base}:shadows"),
    }


def forget(client: redis.Redis, config, group: str = GROUP) -> None:
    """Remove every trace of the group's hand-over from Redis (the group, its keys)."""
    keys = migration_keys(config)
    try:
        client.xgroup_destroy(keys.stream, group)
    except redis.ResponseError:
        pass
    base = group_offsets_key(keys, group)
    client.delete(base, f"{base}:shadows", f"{base}:handover")


@pytest.fixture
def handed_over(make_stream, redis_client, monkeypatch):
    """A backfilled stream, a Kafka group committed on every partition through the real
    coordinator, consumed Redis-first entries (their IDs stand in for shadows the group read),
    and the snapshot of a clean translation."""
    stream = make_stream(records(60, 3), partitions=3)
    backfill(stream.config, progress=False)
    commit_group(stream.bootstrap, stream.config.kafka.topic, GROUP, {0: 5, 1: 12, 2: 20})
    ids = [i.decode() for i, _ in redis_client.xrange(stream.config.redis.stream)]
    shadows = {ids[40], ids[45], ids[50]}  # after the start: the consumer must skip them
    monkeypatch.setattr(handover, "read_consumed_shadows", lambda config, committed: set(shadows))
    clean = translate_group(stream.config, GROUP)
    state = snapshot(redis_client, stream.config)
    assert state["group"]["consumers"] == 0 and state["shadows"] == {s.encode() for s in shadows}
    forget(redis_client, stream.config)
    assert snapshot(redis_client, stream.config)["group"] is None
    return stream, clean, state, shadows


def old_steps(client: redis.Redis, config, clean, shadows, upto: int) -> None:
    """The first ``upto`` round trips of the three-step translation, as it ran before."""
    keys = migration_keys(config)
    base = group_offsets_key(keys, GROUP)
    if upto >= 1:
        client.execute_command(
            "XGROUP", "CREATE", keys.stream, GROUP, clean.start_id, "MKSTREAM", "ENTRIESREAD",
            clean.entries_read,
        )  # fmt: skip
    if upto >= 2:
        client.hset(
            base, mapping={"translated": 1, **{str(p): o for p, o in clean.committed.items()}}
        )
    if upto >= 3:
        client.sadd(f"{base}:shadows", *shadows)


@pytest.mark.parametrize(
    "crashed_after",
    [0, 1, 2, 3],
    ids=["before-create", "after-create", "after-offsets", "after-shadows"],
)
def test_a_rerun_after_a_crash_between_any_two_steps_gives_the_clean_hand_over(
    handed_over, redis_client, crashed_after
):
    stream, clean, state, shadows = handed_over
    old_steps(redis_client, stream.config, clean, shadows, crashed_after)
    again = translate_group(stream.config, GROUP)
    assert snapshot(redis_client, stream.config) == state
    assert (again.start_id, again.entries_read, again.skipped_later, again.committed) == (
        clean.start_id,
        clean.entries_read,
        clean.skipped_later,
        clean.committed,
    )


def test_a_rerun_after_a_complete_hand_over_changes_nothing(handed_over, redis_client):
    stream, clean, state, _ = handed_over
    first = translate_group(stream.config, GROUP)
    assert snapshot(redis_client, stream.config) == state
    assert translate_group(stream.config, GROUP) == first  # step 05 run again: same answer
    assert snapshot(redis_client, stream.config) == state


def test_a_completed_group_already_read_is_left_alone_by_a_rerun(handed_over, redis_client):
    stream, clean, state, _ = handed_over
    first = translate_group(stream.config, GROUP)
    keys = migration_keys(stream.config)
    redis_client.xreadgroup(GROUP, "c1", {keys.stream: ">"}, count=4)  # a consumer started
    before = snapshot(redis_client, stream.config)
    assert translate_group(stream.config, GROUP) == first
    assert snapshot(redis_client, stream.config) == before


def test_a_half_translated_group_someone_read_is_refused_not_reset(handed_over, redis_client):
    stream, clean, state, shadows = handed_over
    old_steps(redis_client, stream.config, clean, shadows, 1)  # group created, nothing stored
    keys = migration_keys(stream.config)
    redis_client.xreadgroup(GROUP, "raw", {keys.stream: ">"}, count=3)  # read before the rest
    before = snapshot(redis_client, stream.config)
    with pytest.raises(HandoverError) as refused:
        translate_group(stream.config, GROUP)
    text = str(refused.value)
    assert repr(GROUP) in text and "1 consumer" in text and "3 pending" in text
    assert "XGROUP DESTROY" in text
    assert snapshot(redis_client, stream.config) == before  # nothing moved


def test_the_kafka_group_committing_after_its_hand_over_is_refused(handed_over, redis_client):
    stream, clean, state, _ = handed_over
    translate_group(stream.config, GROUP)
    commit_group(stream.bootstrap, stream.config.kafka.topic, GROUP, {0: 7})  # still on Kafka
    with pytest.raises(HandoverError, match=r"partition 0.*5.*7"):
        translate_group(stream.config, GROUP)
    assert snapshot(redis_client, stream.config) == state
