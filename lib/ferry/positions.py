"""Choosing where a migration starts: pure search logic plus the reads it needs."""

from __future__ import annotations

import time
from collections.abc import Callable

from ferry.errors import KafkaError

# first_at(offset) -> (offset, timestamp) of the first record at or after ``offset``, or None
FirstAt = Callable[[int], tuple[int, int] | None]


def find_offset_for_time(
    first_at: FirstAt, low: int, high: int, target_ms: int, hint: int | None = None
) -> int:
    """The offset of the first record with timestamp >= ``target_ms`` in ``[low, high)``
    (``high`` when there is none), assuming timestamps do not decrease, as Kafka's own time
    index does.

    The broker's answer is only a ``hint``: it is checked with two reads and replaced by a
    binary search (about log2(high - low) reads) when wrong. Tansu 0.6, for one, answers
    offset 0 whatever the timestamp.
    """
    cache: dict[int, tuple[int, int] | None] = {}

    def at(o: int) -> tuple[int, int] | None:
        if o not in cache:
            cache[o] = first_at(o) if o < high else None
        return cache[o]

    def reached(o: int) -> bool:
        found = at(o)
        return found is None or found[1] >= target_ms

    def answer(o: int) -> int:
        found = at(o)
        return high if found is None else found[0]

    if (
        hint is not None
        and low <= hint <= high
        and reached(hint)
        and (hint == low or not reached(hint - 1))
    ):
        return answer(hint)
    lo, hi = low, high  # reached(hi) holds; find the smallest such offset
    while lo < hi:
        mid = (lo + hi) // 2
        if reached(mid):
            hi = mid
        else:
            lo = mid + 1
    return answer(lo)


def first_record_at(source, partition: int, offset: int, high: int, timeout_s: float = 30.0):
    """(offset, timestamp) of the first record of ``partition`` at or after ``offset``
    (None past ``high``)."""
    record = read_record_at(source, partition, offset, high, timeout_s)
    return None if record is None else (record.offset, record.timestamp_ms)


def read_record_at(source, partition: int, offset: int, high: int, timeout_s: float = 30.0):
    """The first record of ``partition`` at or after ``offset``, or None past ``high``."""
    if offset >= high:
        return None
    source.assign({partition: offset})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in source.poll_records(1, 0.2):
            if record.partition == partition:
                return record
        if source.position(partition) >= high:
            return None
    raise KafkaError(
        f"partition {partition}: no record at or after offset {offset} within {timeout_s:.0f}s"
    )
