"""Choosing where a migration starts: Kafka's meaning of a timestamp start, on every broker.

Kafka's ``offsets_for_times(T)`` answers the earliest offset whose record timestamp is at or
after T. Its time index follows the running maximum timestamp, so with timestamps that go
back and forth (producers setting CreateTime) the answer is the first offset where the
running maximum reaches T, which is the first record with a timestamp >= T. Records after it
with older timestamps are copied; records before it are not, whatever their timestamps.

On a broker whose time index cannot be trusted (``BrokerTraits.exact_time_index`` false:
Tansu 0.6 answers 0 for every timestamp), ferry reads the partition from its log start
and finds that record itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ferry.config import StartPosition
from ferry.core.entries import KafkaRecord
from ferry.errors import ConfigError

# a start this far in the future is a mistake, not clock skew between hosts
FUTURE_SLACK_MS = 60_000


@dataclass(frozen=True)
class StartChoice:
    """Where one partition's migration starts, and how that offset was found."""

    offset: int
    found: str  # "earliest" | "offsets_for_times" | "scan" | "end"


def first_offset_at_or_after(records: Iterable[tuple[int, int]], target_ms: int) -> int | None:
    """The offset of the first ``(offset, timestamp)`` whose timestamp is >= ``target_ms``, in
    log order (Kafka's answer), or None when there is none."""
    for offset, ts in records:
        if ts >= target_ms:
            return offset
    return None


def start_timestamp(start: StartPosition, now_ms: int) -> int | None:
    """The start rule's target timestamp now (None for earliest); a future one is refused."""
    ts = start.timestamp_ms(now_ms)
    if ts is not None and ts > now_ms + FUTURE_SLACK_MS:
        raise ConfigError(
            f"start: {start.describe()} is in the future (now is {now_ms} ms since the epoch); "
            "a migration cannot start after records that do not exist yet. Use 'earliest', an "
            "age such as '7d', or a past timestamp"
        )
    return ts


def choose_start(
    source, partition: int, low: int, high: int, target_ms: int | None, hint: int | None
) -> StartChoice:
    """The first offset of ``partition`` for the target timestamp (None: earliest)."""
    if target_ms is None:
        return StartChoice(low, "earliest")
    if source.traits.exact_time_index and hint is not None:
        if hint >= high:
            return StartChoice(high, "end")
        return StartChoice(max(hint, low), "offsets_for_times")
    found = first_offset_at_or_after(
        ((r.offset, r.timestamp_ms) for r in read_partition_range(source, partition, low, high)),
        target_ms,
    )
    return StartChoice(high, "end") if found is None else StartChoice(found, "scan")


def read_partition_range(source, partition: int, first: int, end: int) -> Iterable[KafkaRecord]:
    """The records of ``partition`` in ``[first, end)`` in order, read with ``source``."""
    from ferry.core.validate import read_kafka_range

    return read_kafka_range(source, {partition: (first, end - 1)})


def read_record_at(source, partition: int, offset: int, high: int):
    """The first record of ``partition`` at or after ``offset``, or None past ``high``."""
    return next(iter(read_partition_range(source, partition, offset, high)), None)
