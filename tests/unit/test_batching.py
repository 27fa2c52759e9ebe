"""Batches bounded in records and bytes; a record no batch can carry is named before any
part of its batch is sent."""

from __future__ import annotations

import pytest

from ferry.core.batching import MAX_BATCH_BYTES, ServerLimits, record_size, split_batches
from ferry.core.entries import KafkaRecord
from ferry.errors import RecordTooLargeError

MB = 1024 * 1024


def records(sizes: list[int], partition: int = 2) -> list[KafkaRecord]:
    return [KafkaRecord(partition, i, 0, b"k", b"x" * n, ()) for i, n in enumerate(sizes)]


def test_batches_keep_every_record_once_in_order_within_both_bounds():
    recs = records([100_000] * 50 + [10] * 500)
    limits = ServerLimits(max_bulk=512 * MB, query_buffer=8 * MB)
    batches = list(split_batches(recs, 200, limits, pipelined=4))
    assert [r for b in batches for r in b] == recs
    budget = limits.batch_bytes(4)
    assert budget == MB
    for b in batches:
        assert len(b) <= 200
        assert len(b) == 1 or sum(record_size(r)[0] for r in b) <= budget


def test_the_byte_budget_never_exceeds_the_latency_cap():
    assert ServerLimits(512 * MB, 4096 * MB).batch_bytes(4) == MAX_BATCH_BYTES


def test_a_record_larger_than_one_batch_budget_goes_alone():
    recs = records([10, 3 * MB, 10])
    limits = ServerLimits(max_bulk=512 * MB, query_buffer=16 * MB)  # budget 2 MB
    assert [len(b) for b in split_batches(recs, 100, limits, pipelined=4)] == [1, 1, 1]


def test_a_record_over_the_servers_argument_limit_is_named_after_the_batches_before_it():
    recs = records([10, 10, 2 * MB, 10], partition=5)
    limits = ServerLimits(max_bulk=1 * MB, query_buffer=1024 * MB)
    sent = []
    with pytest.raises(RecordTooLargeError, match=r"partition 5 offset 2: .*proto-max-bulk-len"):
        for batch in split_batches(recs, 100, limits, pipelined=4):
            sent.extend(r.offset for r in batch)
    assert sent == [0, 1]  # what comes before it is still copied; nothing from it on


def test_headers_count_toward_the_size():
    big_headers = KafkaRecord(0, 0, 0, None, b"", tuple((f"h{i}", b"v" * 1000) for i in range(20)))
    nbytes, longest = record_size(big_headers)
    assert nbytes > 20_000 and longest > 20_000
