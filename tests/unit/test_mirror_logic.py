import pytest

from ferry.core.entries import KafkaRecord
from ferry.core.mirror import GAP_RECHECK_S, GapChecks, check_resumable, take_contiguous
from ferry.errors import IntegrityError, OffsetRangeError
from ferry.kafka.source import TopicInfo


def recs(*offsets):
    return [KafkaRecord(0, o, 0, b"k", b"v") for o in offsets]


def test_dense_offsets_are_taken_whole():
    taken, rest = take_contiguous(recs(5, 6, 7), 5, accept_gap=lambda o: False)
    assert ([r.offset for r in taken], rest) == ([5, 6, 7], [])


def test_a_refused_gap_splits_the_records():
    taken, rest = take_contiguous(recs(5, 6, 9, 10), 5, accept_gap=lambda o: False)
    assert [r.offset for r in taken] == [5, 6] and [r.offset for r in rest] == [9, 10]
    taken, rest = take_contiguous(recs(6), 5, accept_gap=lambda o: False)
    assert taken == [] and [r.offset for r in rest] == [6]


def test_accepted_gaps_pass_but_offsets_never_go_back():
    taken, rest = take_contiguous(recs(6, 9, 30), 5, accept_gap=lambda o: o < 20)
    assert [r.offset for r in taken] == [6, 9] and [r.offset for r in rest] == [30]
    with pytest.raises(IntegrityError, match="offset 6 delivered after 6"):
        take_contiguous(recs(6, 6), 5, accept_gap=lambda o: True)
    with pytest.raises(IntegrityError):
        take_contiguous(recs(4), 5, accept_gap=lambda o: True)


def test_a_gap_is_believed_only_when_it_is_still_there_after_the_recheck_delay():
    now = [100.0]
    gaps = GapChecks(clock=lambda: now[0])
    assert gaps.confirmed(0, 5, 9) is False  # first sight: read again
    now[0] += GAP_RECHECK_S / 2
    assert gaps.confirmed(0, 5, 9) is False  # still too soon
    now[0] += GAP_RECHECK_S
    assert gaps.confirmed(0, 5, 9) is True
    assert gaps.confirmed(0, 5, 8) is False  # a different gap starts its own clock
    assert gaps.confirmed(1, 5, 9) is False  # and partitions are independent
    gaps.pop(0)
    assert gaps.confirmed(0, 5, 8) is False


def info(low):
    parts = tuple(sorted(low))
    return TopicInfo("t", parts, dict(low), {p: 100 for p in parts}, "delete", None)


def test_resume_needs_kafka_to_still_hold_the_records_after_the_frontier():
    check_resumable(info({0: 0, 1: 50}), {0: -1, 1: 49})
    with pytest.raises(
        OffsetRangeError, match=r"partition 1: .* records 41..49 were deleted \(retention"
    ):
        check_resumable(info({0: 0, 1: 50}), {0: -1, 1: 40})
