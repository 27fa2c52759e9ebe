import random
from collections import Counter

from ferry.core.row_sample import draw_offsets


def test_draws_distinct_offsets_inside_the_ranges():
    ranges = {0: (10, 1010), 1: (0, 500), 2: (7, 7)}
    picks = draw_offsets(ranges, 300, random.Random(1))
    assert len(picks) == len(set(picks)) == 300
    assert picks == sorted(picks)
    for p, offset in picks:
        lo, hi = ranges[p]
        assert lo <= offset < hi


def test_every_partition_is_drawn_in_proportion_to_its_range():
    ranges = {0: (0, 90_000), 1: (5_000, 15_000), 2: (0, 0)}
    per = Counter(p for p, _ in draw_offsets(ranges, 1000, random.Random(3)))
    assert per[2] == 0
    assert 850 <= per[0] <= 950 and 50 <= per[1] <= 150


def test_a_small_range_is_taken_whole():
    ranges = {0: (3, 6), 1: (0, 2)}
    assert draw_offsets(ranges, 200, random.Random(0)) == [(0, 3), (0, 4), (0, 5), (1, 0), (1, 1)]


def test_a_row_has_exactly_the_published_columns():
    from ferry.core.entries import KafkaRecord
    from ferry.core.row_sample import COLUMNS, _row

    record = KafkaRecord(1, 5, 1000, None, b"v", (("h", b"x"),))
    assert tuple(_row(record, None)) == COLUMNS
    assert tuple(_row(record, (b"1-0", record))) == COLUMNS
    assert _row(record, (b"1-0", record))["digest_match"]
    assert not _row(record, (b"1-0", record._replace(value=b"w")))["digest_match"]
