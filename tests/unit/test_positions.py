import pytest

from ferry.positions import find_offset_for_time

# offset -> timestamp; offsets 3, 4 and 8 are gaps (compaction or transaction markers)
LOG = {0: 100, 1: 110, 2: 120, 5: 150, 6: 150, 7: 170, 9: 190}
LOW, HIGH = 0, 10


def first_at_counting(calls):
    def first_at(o):
        calls.append(o)
        for offset in sorted(LOG):
            if offset >= o:
                return offset, LOG[offset]
        return None

    return first_at


@pytest.mark.parametrize(
    "target, expected",
    [(0, 0), (100, 0), (101, 1), (120, 2), (121, 5), (150, 5), (151, 7), (190, 9), (191, 10)],
)
@pytest.mark.parametrize("hint", [None, 0, 4, 10])
def test_search_finds_first_record_at_or_after_time(target, expected, hint):
    calls = []
    assert find_offset_for_time(first_at_counting(calls), LOW, HIGH, target, hint) == expected
    assert len(set(calls)) <= 2 + 4 + 1  # hint check plus log2(10) probes


def test_a_right_hint_costs_two_reads():
    calls = []
    assert find_offset_for_time(first_at_counting(calls), LOW, HIGH, 151, hint=7) == 7
    assert sorted(set(calls)) == [6, 7]


def test_empty_range():
    assert find_offset_for_time(lambda o: None, 5, 5, 100, None) == 5
