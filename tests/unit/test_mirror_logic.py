import pytest
from ferry.entries import KafkaRecord
from ferry.errors import IntegrityError, OffsetRangeError
from ferry.kafka_source import TopicInfo
from ferry.mirror import _check_sequence, check_resumable


def recs(*offsets):
    return [KafkaRecord(0, o, 0, b"k", b"v") for o in offsets]


def test_dense_offsets_pass():
    _check_sequence(0, 5, recs(5, 6, 7), gaps_allowed=False, topic="t")


def test_a_skipped_record_stops_the_mirror_on_a_plain_topic():
    with pytest.raises(
        IntegrityError, match="partition 0 of 't': expected offset 7 but .* delivered 9"
    ):
        _check_sequence(0, 5, recs(5, 6, 9), gaps_allowed=False, topic="t")
    with pytest.raises(IntegrityError, match="expected offset 5"):
        _check_sequence(0, 5, recs(6), gaps_allowed=False, topic="t")


def test_gaps_pass_on_compacted_or_transactional_topics_but_never_going_back():
    _check_sequence(0, 5, recs(6, 9, 30), gaps_allowed=True, topic="t")
    with pytest.raises(IntegrityError):
        _check_sequence(0, 5, recs(6, 6), gaps_allowed=True, topic="t")
    with pytest.raises(IntegrityError):
        _check_sequence(0, 5, recs(4), gaps_allowed=True, topic="t")


def info(low):
    parts = tuple(sorted(low))
    return TopicInfo("t", parts, dict(low), {p: 100 for p in parts}, "delete", None)


def test_resume_needs_kafka_to_still_hold_the_records_after_the_frontier():
    check_resumable(info({0: 0, 1: 50}), {0: -1, 1: 49})
    with pytest.raises(
        OffsetRangeError, match="partition 1: .* records 41..49 were deleted by retention"
    ):
        check_resumable(info({0: 0, 1: 50}), {0: -1, 1: 40})
