"""The hand-over's seek (a binary search over entry IDs, a few probes) gives exactly the answer
of the scan (every entry read in order), on awkward streams: partitions interleaved unevenly
in the merged layout, an empty partition, many entries in one millisecond (timestamps going
back pin IDs to the last ID's time), a head trimmed by retention, and offset gaps (an entry
removed, transaction markers and aborted records) where the seek must refuse and the scan
answer. The translation records which of the two it used."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from ferry.config import TrimPolicy
from ferry.core.ingest import migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.live import handover
from ferry.live.handover import SeekRefused, scan_plan, seek_plan, translate_group
from ferry.redis.retention import trim_stream
from ferry.services.seed import BASE_TS_MS, SeedRecord

from .test_kafka_semantics import plain, produce_transaction
from .test_live import commit_group

NO_BOUND = (2**63, 0)


def awkward_records(n: int, partitions: int) -> list[SeedRecord]:
    """Uneven partitions (the last one empty), 40 records per millisecond in the first half,
    timestamps going back in the second (so their IDs share one millisecond)."""
    rng = random.Random(7)
    used = partitions - 1
    out = []
    for i in range(n):
        p = min(int(rng.expovariate(1.0) * used / 2), used - 1)
        ts = BASE_TS_MS + i // 40 if i < n // 2 else BASE_TS_MS + n // 80 - (i - n // 2)
        out.append(SeedRecord(p, b"k%d" % i, b"v%d" % i, (), ts))
    return out


def frontier_offsets(client, config) -> dict[int, int]:
    starts, frontiers = read_state(client, migration_keys(config))
    return {p: frontiers.get(p, s - 1) + 1 for p, s in starts.items()}


def cases(ends: dict[int, int], lows: dict[int, int] | None = None) -> list[dict[int, int]]:
    """Offsets a group may resume from: nothing consumed, everything, half-way, one partition
    done and the others not started, at and below a trimmed head, and random mixes."""
    lows = lows or {p: 0 for p in ends}
    rng = random.Random(11)
    out = [
        {},
        {p: 0 for p in ends},
        dict(ends),
        {p: (lows[p] + e) // 2 for p, e in ends.items()},
        {p: lows[p] for p in ends},
        {p: max(0, lows[p] - 1) for p in ends},
    ]
    for p in ends:
        out.append({q: (ends[q] if q == p else 0) for q in ends})
        out.append({q: (0 if q == p else ends[q]) for q in ends})
    for _ in range(12):
        out.append({p: rng.randint(max(0, lows[p] - 2), e) for p, e in ends.items()})
    return out


def assert_seek_equals_scan(client, config, offsets_list) -> None:
    keys = migration_keys(config)
    for offsets in offsets_list:
        scanned = scan_plan(client, keys, offsets, set(), set(), NO_BOUND)
        sought = seek_plan(client, keys, config, offsets)
        assert sought == scanned, offsets


def assert_group_matches(client, config, group: str, committed: dict[int, int], method: str):
    """translate_group through the real Kafka coordinator: the method it records, and the
    Redis group's position and ENTRIESREAD equal to what the scan computes."""
    bootstrap = config.kafka.bootstrap_servers
    commit_group(bootstrap, config.kafka.topic, group, committed)
    translation = translate_group(config, group, reset="earliest")
    assert translation.method == method, translation.scan_reason
    keys = migration_keys(config)
    starts, _ = read_state(client, keys)
    offsets = {**{p: s for p, s in starts.items()}, **committed}
    start, read, skipped = scan_plan(client, keys, offsets, set(), set(), NO_BOUND)
    read += handover.deleted_entries(client, keys.stream)  # trimmed: counted as Redis does
    assert (translation.start_id, translation.entries_read, translation.skipped_later) == (
        start,
        read,
        skipped,
    )
    info = {g["name"].decode(): g for g in client.xinfo_groups(keys.stream)}[group]
    assert info["last-delivered-id"].decode() == start
    assert int(info["entries-read"]) == read
    after = client.xrange(keys.stream, "(" + start if start != "0-0" else "-", "+")
    assert info["lag"] in (None, len(after))  # Redis's own lag: what is left to read
    return translation


@pytest.mark.parametrize(
    "budget", [None, 40], ids=["one-call-per-probe", "probes-resumed-sequence-searched"]
)
def test_seek_equals_scan_on_an_unevenly_interleaved_merged_stream(
    make_stream, redis_client, monkeypatch, budget
):
    if budget is not None:  # a probe call stops after 40 entries and is called again
        monkeypatch.setattr(handover, "SEEK_BUDGET", budget)
        monkeypatch.setattr(handover, "SEEK_CHUNK", 16)
        monkeypatch.setattr(handover, "SEEK_IN_MS", 5)  # the sequence searched, not read
    stream = make_stream(awkward_records(4000, 4), partitions=4, extra={"batch_size": 37})
    backfill(stream.config, progress=False)
    ends = frontier_offsets(redis_client, stream.config)
    assert ends[3] == 0 and min(ends[p] for p in range(3)) > 100  # one empty partition
    assert_seek_equals_scan(redis_client, stream.config, cases(ends))
    if budget is not None:  # a seek that would read too much gives way to the scan
        monkeypatch.setattr(handover, "SEEK_MAX_READ", 100)
        monkeypatch.setattr(handover, "SEEK_MAX_SHARE", 0)
        with pytest.raises(SeekRefused, match="the scan is cheaper"):
            seek_plan(redis_client, migration_keys(stream.config), stream.config, {0: 5})
        monkeypatch.undo()
    committed = {p: e // 3 for p, e in ends.items() if e}
    translation = assert_group_matches(redis_client, stream.config, "g1", committed, "seek")
    assert translation.skipped_later > 0 and translation.entries_read > 0
    # a rerun returns the recorded hand-over, method included
    assert translate_group(stream.config, "g1", reset="earliest") == translation


def test_seek_equals_scan_after_retention_trimmed_the_head(make_stream, redis_client):
    stream = make_stream(awkward_records(3000, 3), partitions=3, extra={"batch_size": 50})
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=TrimPolicy(max_len=1100))
    assert trim_stream(redis_client, config, limit=400).removed == 1900
    ends = frontier_offsets(redis_client, config)
    keys = migration_keys(config)
    lows = {p: 0 for p in ends}
    for _, fields in redis_client.xrange(keys.stream):  # the first kept offset per partition
        p, o = int(fields[b"p"]), int(fields[b"o"])
        lows[p] = o if lows[p] == 0 else min(lows[p], o)
    assert any(lows[p] > 0 for p in lows)
    assert_seek_equals_scan(redis_client, config, cases(ends, lows))
    committed = {p: (lows[p] + e) // 2 for p, e in ends.items()}
    assert_group_matches(redis_client, config, "g2", committed, "seek")


def test_a_gap_in_the_offsets_refuses_the_seek_and_the_scan_answers(make_stream, redis_client):
    stream = make_stream(awkward_records(1200, 3), partitions=3, extra={"batch_size": 50})
    backfill(stream.config, progress=False)
    keys = migration_keys(stream.config)
    ids = [i for i, _ in redis_client.xrange(keys.stream)]
    redis_client.xdel(keys.stream, ids[500])  # as compaction before the copy would leave it
    with pytest.raises(SeekRefused, match="not dense"):
        seek_plan(redis_client, keys, stream.config, {0: 10})
    ends = frontier_offsets(redis_client, stream.config)
    translation = assert_group_matches(
        redis_client, stream.config, "g3", {p: e // 2 for p, e in ends.items() if e}, "scan"
    )
    assert "not dense" in translation.scan_reason


@pytest.mark.requires_broker(
    ["apache"], reason="Tansu 0.6 sends no aborted-transaction list: aborted records reach readers"
)
def test_transaction_markers_refuse_the_seek_and_the_scan_answers(make_stream, redis_client):
    stream = make_stream([], partitions=2, kafka_extra={"transactional": True})
    bootstrap, topic = stream.bootstrap, stream.config.kafka.topic
    produce_transaction(bootstrap, topic, plain(0, 40, "t1") + plain(1, 30, "t1"), True, "t1")
    produce_transaction(bootstrap, topic, plain(0, 6, "x") + plain(1, 6, "x"), False, "t2")
    produce_transaction(bootstrap, topic, plain(0, 30, "t3") + plain(1, 30, "t3"), True, "t3")
    backfill(stream.config, progress=False)
    keys = migration_keys(stream.config)
    with pytest.raises(SeekRefused, match="not dense"):
        seek_plan(redis_client, keys, stream.config, {0: 10})
    assert_group_matches(redis_client, stream.config, "g4", {0: 50, 1: 20}, "scan")
