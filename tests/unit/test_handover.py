from ferry.core.entries import KafkaRecord
from ferry.live.handover import plan_translation


def entries(*pairs):
    return [(f"{i + 1}-0", KafkaRecord(p, o, 0, None, b"")) for i, (p, o) in enumerate(pairs)]


# stream order interleaves partitions: (partition, offset)
STREAM = entries((0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2))


def test_start_is_just_before_the_first_unconsumed_entry_across_partitions():
    # the group consumed p0 up to offset 2 (next 3) and p1 up to offset 0 (next 1)
    start, read, skipped = plan_translation(STREAM, {0: 3, 1: 1})
    assert (start, read) == ("3-0", 3)  # (1, 1) at 4-0 is the first entry not consumed...
    assert skipped == 1  # ...and (0, 2) at 5-0, after the start, was: the consumer skips it


def test_nothing_consumed_starts_at_the_beginning():
    assert plan_translation(STREAM, {}) == ("0-0", 0, 0)


def test_everything_consumed_starts_after_the_last_entry():
    assert plan_translation(STREAM, {0: 3, 1: 3}) == ("6-0", 6, 0)


def test_empty_stream():
    assert plan_translation([], {0: 5}) == ("0-0", 0, 0)


# Kafka's rules, without a server: what each partition's hand-over offset is


def test_committed_partitions_keep_their_offsets_and_the_rest_follow_latest():
    from ferry.live.handover import resolve_offsets

    offsets, reset_offsets, gaps = resolve_offsets(
        "g", {0: 7}, starts={0: 0, 1: 5, 2: 0}, positions={0: 9, 1: 12, 2: 0}, reset="latest"
    )
    assert offsets == {0: 7, 1: 12, 2: 0}  # 1: nothing in the stream now; 2: empty so far
    assert reset_offsets == {1: 12, 2: 0} and gaps == {}


def test_earliest_starts_a_partition_never_committed_at_its_start():
    from ferry.live.handover import resolve_offsets

    offsets, reset_offsets, _ = resolve_offsets(
        "g", {0: 7}, starts={0: 0, 1: 5}, positions={0: 9, 1: 12}, reset="earliest"
    )
    assert offsets == {0: 7, 1: 5} and reset_offsets == {1: 5}


def test_a_commit_below_the_start_is_refused_with_partition_offset_start_and_choices():
    import pytest

    from ferry.errors import GroupGapError, HandoverError
    from ferry.exitcodes import ExitCode, exit_code_for
    from ferry.live.handover import resolve_offsets

    with pytest.raises(GroupGapError) as refused:
        resolve_offsets("g", {0: 3, 1: 5, 2: 1}, starts={0: 10, 1: 5, 2: 4}, positions={})
    assert isinstance(refused.value, HandoverError)
    assert refused.value.gaps == {0: (3, 10), 2: (1, 4)}
    text = str(refused.value)
    assert "partition 0: committed offset 3, start 10" in text
    assert "partition 2: committed offset 1, start 4" in text and "partition 1" not in text
    assert "catch up on Kafka" in text and "--accept-gap" in text and "accept_gap" in text
    assert exit_code_for(refused.value) == ExitCode.ERROR
    # on the operator's word the group starts at the start; the gap is reported
    offsets, _, gaps = resolve_offsets(
        "g", {0: 3}, starts={0: 10}, positions={0: 20}, accept_gap=True
    )
    assert offsets == {0: 3} and gaps == {0: (3, 10)}


def test_an_unknown_reset_policy_is_a_usage_error():
    import pytest

    from ferry.errors import UsageError
    from ferry.live.handover import resolve_offsets

    with pytest.raises(UsageError, match="latest.*earliest"):
        resolve_offsets("g", {}, starts={0: 0}, positions={0: 0}, reset="none")
