"""The ingest script's rule, checked on the real servers: continue, replay, refuse."""

import pytest

from ferry.core.entries import KafkaRecord, entry_id_ms
from ferry.core.ingest import Ingestor, MigrationKeys, arm_migration, read_state
from ferry.errors import ForeignStreamError, IntegrityError, NotArmedError


@pytest.fixture
def keys(redis_client, request):
    tag = "{ingest-" + request.node.name.replace("[", "-").replace("]", "") + "}"
    k = MigrationKeys(tag, f"{tag}:stream", "merged")
    yield k
    redis_client.delete(k.state, k.stream)


def rec(offset, ts=1000, p=0, value=b"v"):
    return KafkaRecord(p, offset, ts, b"k", value + b"%d" % offset)


def test_nothing_lands_before_arming(redis_client, keys):
    with pytest.raises(NotArmedError, match="partition 0"):
        Ingestor(redis_client, keys).ingest_batch(0, 0, [rec(0)])
    assert not redis_client.exists(keys.stream)


def test_continue_replay_and_refuse(redis_client, keys):
    arm_migration(redis_client, keys, "topic", {0: 10})
    ing = Ingestor(redis_client, keys)
    assert ing.ingest_batch(0, 10, [rec(10), rec(11), rec(12)]).appended == 3
    # replay of the same batch: a no-op
    again = ing.ingest_batch(0, 10, [rec(10), rec(11), rec(12)])
    assert (again.appended, again.frontier, again.refused) == (0, 12, False)
    # overlapping batch: only the new tail lands
    assert ing.ingest_batch(0, 11, [rec(11), rec(12), rec(13)]).appended == 1
    # a batch that would leave a hole (read began at 15, frontier 13) is refused whole
    refused = ing.ingest_batch(0, 15, [rec(15), rec(16)])
    assert (refused.appended, refused.frontier, refused.refused) == (0, 13, True)
    # gaps inside a batch that began at the frontier are real Kafka gaps: accepted
    assert ing.ingest_batch(0, 14, [rec(17), rec(20)]).appended == 2
    offsets = [int(f[b"o"]) for _, f in redis_client.xrange(keys.stream)]
    assert offsets == [10, 11, 12, 13, 17, 20]
    assert read_state(redis_client, keys) == ({0: 10}, {0: 20})


def test_batch_with_decreasing_offsets_is_rejected_whole(redis_client, keys):
    arm_migration(redis_client, keys, "topic", {0: 0})
    with pytest.raises(IntegrityError, match="not increasing"):
        Ingestor(redis_client, keys).ingest_batch(0, 0, [rec(0), rec(2), rec(1)])
    # a script error does not undo earlier writes, so the script checks before writing
    assert not redis_client.exists(keys.stream)
    assert read_state(redis_client, keys) == ({0: 0}, {0: -1})


def test_entry_ids_follow_time_and_never_go_back(redis_client, keys):
    arm_migration(redis_client, keys, "topic", {0: 0, 1: 0})
    ing = Ingestor(redis_client, keys)
    ing.ingest_batch(0, 0, [rec(0, ts=5000), rec(1, ts=3000), rec(2, ts=7000)])
    ing.ingest_batch(1, 0, [rec(0, ts=4000, p=1), rec(1, ts=-1, p=1)])
    ids = [entry_id for entry_id, _ in redis_client.xrange(keys.stream)]
    assert [entry_id_ms(i) for i in ids] == [5000, 5000, 7000, 7000, 7000]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split(b"-"))))


def test_arming_twice_keeps_the_first_start(redis_client, keys):
    assert arm_migration(redis_client, keys, "topic", {0: 5, 1: 0}) == 2
    assert arm_migration(redis_client, keys, "topic", {0: 9, 1: 3, 2: 0}) == 1
    assert read_state(redis_client, keys) == ({0: 5, 1: 0, 2: 0}, {0: 4, 1: -1, 2: -1})


def test_foreign_stream_is_refused_and_left_alone(redis_client, keys):
    redis_client.xadd(keys.stream, {"someone": "else"})
    with pytest.raises(ForeignStreamError, match="ferry did not write"):
        arm_migration(redis_client, keys, "topic", {0: 0})
    assert redis_client.xlen(keys.stream) == 1
    assert not redis_client.exists(keys.state)


def test_state_of_another_topic_is_refused(redis_client, keys):
    arm_migration(redis_client, keys, "topic-a", {0: 0})
    with pytest.raises(ForeignStreamError, match="belongs to topic topic-a"):
        arm_migration(redis_client, keys, "topic-b", {0: 0})


def test_position_steps_over_markers_after_the_last_record(redis_client, keys):
    """read_to past the last record (commit markers, aborted records at the end of a
    partition) moves the position in the same step; a batch of no records only moves it."""
    arm_migration(redis_client, keys, "topic", {0: 0})
    ing = Ingestor(redis_client, keys)
    moved = ing.ingest_batch(0, 0, [rec(0), rec(1)], read_to=3)  # offset 2 is a marker
    assert (moved.appended, moved.frontier) == (2, 2)
    # markers only: the position moves, nothing is appended
    assert ing.ingest_batch(0, 3, [], read_to=5).frontier == 4
    # a record at the position lands as the next one; a replayed advance is a no-op
    assert ing.ingest_batch(0, 5, [rec(5)]).appended == 1
    assert ing.ingest_batch(0, 3, [], read_to=5).frontier == 5
    # an advance that starts past the position would leave a hole: refused
    assert ing.ingest_batch(0, 8, [], read_to=9).refused
    assert [int(f[b"o"]) for _, f in redis_client.xrange(keys.stream)] == [0, 1, 5]


def test_read_to_must_cover_the_batch(redis_client, keys):
    arm_migration(redis_client, keys, "topic", {0: 0})
    with pytest.raises(IntegrityError, match="not below read_to"):
        Ingestor(redis_client, keys).ingest_batch(0, 0, [rec(0), rec(1)], read_to=1)
    assert not redis_client.exists(keys.stream)


def test_a_different_topic_id_under_the_same_name_is_refused(redis_client, keys):
    from ferry.core.ingest import ArmRequest
    from ferry.errors import TopicMismatchError

    def request(topic_id):
        return ArmRequest("topic", topic_id, "earliest", None, {0: 0}, {}, {})

    assert arm_migration(redis_client, keys, request("AAAAAAAAAAAAAAAAAAAAAQ")) == 1
    with pytest.raises(TopicMismatchError, match="armed on ID AAAAAAAAAAAAAAAAAAAAAQ"):
        arm_migration(redis_client, keys, request("BBBBBBBBBBBBBBBBBBBBBQ"))
