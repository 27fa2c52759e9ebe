"""Step 04's row sample: drawn by offset over every partition, each row found and compared."""

import time
from dataclasses import replace

import pytest

from ferry.core.entries import FIELDS, record_args
from ferry.core.mirror import backfill
from ferry.core.row_sample import sample_rows
from ferry.services.seed import SeedRecord, payment_events

from .helpers import read_redis_records

DAY_MS = 86_400_000


def gap_of_weeks(n_old: int, n_new: int, partitions: int) -> list[SeedRecord]:
    """History from 70 days ago, then live-like traffic now: entry times bunch in two spots."""
    now = int(time.time() * 1000)
    old = [
        replace(r, timestamp_ms=now - 70 * DAY_MS + i)
        for i, r in enumerate(payment_events(n_old, partitions))
    ]
    new = [
        replace(r, timestamp_ms=now + i)
        for i, r in enumerate(payment_events(n_new, partitions, seed=9))
    ]
    return old + new


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_gap_between_history_and_live_traffic_still_gives_distinct_rows(make_stream, client):
    stream = make_stream(gap_of_weeks(1500, 30, 3), partitions=3)
    backfill(stream.config, progress=False)
    rows = sample_rows(stream.config, 120, client=client)  # several rounds of seeks
    keys = {(r["partition"], r["offset"]) for r in rows}
    assert len(rows) == len(keys) == 120
    assert {r["partition"] for r in rows} == {0, 1, 2}
    assert all(r["in_stream"] and r["digest_match"] for r in rows)


def test_a_damaged_or_missing_entry_is_named_by_its_row(make_stream, redis_client):
    stream = make_stream(list(payment_events(60, 2)), partitions=2)
    backfill(stream.config, progress=False)
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    (gone_id, gone), (bad_id, bad) = entries[5], entries[-1]
    redis_client.xdel(stream.config.redis.stream, gone_id)
    offset, ts, flags, key, value, headers = record_args(bad)
    fields = dict(
        zip(FIELDS, [bad.partition, offset, ts, flags, key, value + b"!", headers], strict=True)
    )
    redis_client.xdel(stream.config.redis.stream, bad_id)
    redis_client.xadd(stream.config.redis.stream, fields)  # the last one: IDs only grow
    rows = {(r["partition"], r["offset"]): r for r in sample_rows(stream.config, 500)}
    assert len(rows) == 60
    assert not rows[(gone.partition, gone.offset)]["in_stream"]
    assert rows[(bad.partition, bad.offset)]["in_stream"]
    assert not rows[(bad.partition, bad.offset)]["digest_match"]
    others = [
        r
        for k, r in rows.items()
        if k not in {(gone.partition, gone.offset), (bad.partition, bad.offset)}
    ]
    assert all(r["in_stream"] and r["digest_match"] for r in others)
