from ferry.entries import KafkaRecord
from ferry.handover import plan_translation


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
