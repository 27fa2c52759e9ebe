"""Kafka's meaning of a timestamp start, and the start rule's checks, without a broker."""

import pytest

from ferry.config import parse_start
from ferry.core.positions import first_offset_at_or_after, start_timestamp
from ferry.errors import ConfigError
from ferry.kafka.broker import APACHE, TANSU, broker_traits


def running_max_answer(records, target):
    """Kafka's time index: the first offset where the running maximum timestamp reaches T."""
    best = -1
    for offset, ts in records:
        best = max(best, ts)
        if best >= target:
            return offset
    return None


@pytest.mark.parametrize(
    "timestamps",
    [
        [10, 20, 30, 40, 50],
        [50, 10, 60, 20, 70, 5],  # back and forth, as producers setting CreateTime do
        [5, 5, 5, 100, 1, 1, 100],
        [-1, -1, 30, -1, 40],  # records without a timestamp
    ],
)
def test_first_offset_matches_kafkas_running_maximum(timestamps):
    records = [(100 + i, ts) for i, ts in enumerate(timestamps)]
    for target in sorted({*timestamps, 0, 1000, 25, 55}):
        assert first_offset_at_or_after(records, target) == running_max_answer(records, target)


def test_non_monotonic_start_copies_later_old_records_and_not_earlier_new_ones():
    # the target is 50: offset 1 (ts 60) is the start; offset 3 (ts 20) after it is copied
    records = [(0, 10), (1, 60), (2, 40), (3, 20)]
    assert first_offset_at_or_after(records, 50) == 1


def test_no_record_at_or_after_the_target():
    assert first_offset_at_or_after([(0, 1), (1, 2)], 3) is None
    assert first_offset_at_or_after([], 3) is None


def test_a_start_in_the_future_is_refused():
    now = 1_800_000_000_000
    with pytest.raises(ConfigError, match="in the future"):
        start_timestamp(parse_start("2099-01-01T00:00:00Z"), now)
    assert start_timestamp(parse_start("1h"), now) == now - 3_600_000
    assert start_timestamp(parse_start("earliest"), now) is None


def test_start_rule_is_described_as_written():
    assert parse_start("earliest").describe() == "earliest"
    assert parse_start("7d").describe() == "age 604800000ms"
    assert parse_start("2026-11-01T00:00:00Z").describe() == "2026-11-01T00:00:00Z"


def test_broker_traits_by_cluster_id_and_declaration(monkeypatch):
    monkeypatch.delenv("FERRY_KAFKA_BROKER", raising=False)
    assert broker_traits("tansu_cluster") is TANSU
    assert broker_traits("kO4d8pXmR1yiBmJ2VloS8g") is APACHE
    assert broker_traits("kO4d8pXmR1yiBmJ2VloS8g", "tansu") is TANSU
    with pytest.raises(ConfigError, match="kafka.broker"):
        broker_traits(None, "redpanda")
