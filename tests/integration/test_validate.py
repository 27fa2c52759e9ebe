"""The validation core finds every kind of damage, and names the partition."""

import json
import os
import subprocess

import pytest

from ferry.core.entries import FIELDS, record_args
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.services.seed import payment_events

from .helpers import ferry_cli, read_redis_records


def seeded(make_stream, redis_client, n=3000, partitions=3):
    stream = make_stream(list(payment_events(n, partitions)), partitions=partitions)
    backfill(stream.config, progress=False)
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    return stream, entries


def entry_fields(record):
    offset, ts, flags, key, value, headers = record_args(record)
    return dict(
        zip(FIELDS, [record.partition, offset, ts, flags, key, value, headers], strict=True)
    )


def test_clean_copy_passes(make_stream, redis_client):
    stream, entries = seeded(make_stream, redis_client)
    report = validate_stream(stream.config)
    assert report.ok and report.failures() == []
    assert sum(p.redis_count for p in report.partitions) == len(entries) == 3000


def test_deleted_entry_is_missing(make_stream, redis_client):
    stream, entries = seeded(make_stream, redis_client)
    entry_id, victim = entries[1234]
    redis_client.xdel(stream.config.redis.stream, entry_id)
    report = validate_stream(stream.config)
    assert not report.ok
    row = report.partitions[victim.partition]
    assert (row.missing, row.first_missing, row.kafka_count - row.redis_count) == (
        1,
        victim.offset,
        1,
    )
    assert report.failures() == [
        f"partition {victim.partition}: missing=1, kafka_count={row.kafka_count} "
        f"redis_count={row.redis_count}, first missing offset {victim.offset}"
    ]


def test_duplicate_entry_is_found(make_stream, redis_client):
    stream, entries = seeded(make_stream, redis_client)
    _, victim = entries[10]
    redis_client.xadd(stream.config.redis.stream, entry_fields(victim))
    row = validate_stream(stream.config).partitions[victim.partition]
    assert (row.duplicates, row.out_of_order, row.missing, row.mismatched) == (1, 1, 0, 0)


def test_altered_value_is_mismatched(make_stream, redis_client):
    stream, entries = seeded(make_stream, redis_client)
    entry_id, victim = entries[-1]
    redis_client.xdel(stream.config.redis.stream, entry_id)
    redis_client.xadd(
        stream.config.redis.stream, entry_fields(victim._replace(value=victim.value + b" "))
    )
    row = validate_stream(stream.config).partitions[victim.partition]
    assert (row.mismatched, row.missing, row.duplicates) == (1, 0, 0)


def test_entry_that_kafka_never_had_is_extra(make_stream, redis_client):
    stream, entries = seeded(make_stream, redis_client)
    _, last = entries[-1]
    redis_client.xadd(stream.config.redis.stream, entry_fields(last._replace(offset=10**9)))
    row = validate_stream(stream.config).partitions[last.partition]
    assert (row.extra, row.missing, row.ok) == (1, 0, False)


def test_cli_json_and_exit_status(make_stream, redis_client, tmp_path):
    stream, entries = seeded(make_stream, redis_client, n=500, partitions=2)
    config_file = stream.write_config(tmp_path / "s.yaml")
    cmd = ferry_cli("validate", config_file, "--json")
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ)
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert (body["ok"], body["kafka_count"], body["redis_count"], body["missing"]) == (
        True,
        500,
        500,
        0,
    )
    assert {
        "partition",
        "kafka_count",
        "redis_count",
        "missing",
        "duplicates",
        "out_of_order",
        "mismatched",
        "unexplained_gaps",
    } <= set(body["partitions"][0])
    redis_client.xdel(stream.config.redis.stream, entries[0][0])
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 6  # data integrity
    assert json.loads(bad.stdout)["missing"] == 1


@pytest.mark.parametrize("parallel", [False, True], ids=["one-process", "stream-in-a-process"])
def test_damage_on_both_sides_of_a_block_boundary_is_counted_once_each(
    make_stream, redis_client, monkeypatch, parallel
):
    from ferry.core import validate

    if parallel:  # the stream read in another process, as on a large stream
        monkeypatch.setattr(validate, "PARALLEL_ABOVE", 0)
    from ferry.core.tallies import BLOCK

    stream, entries = seeded(make_stream, redis_client, n=2 * (BLOCK + 200), partitions=2)
    by_offset = {(r.partition, r.offset): (i, r) for i, r in entries}
    for offset in (BLOCK - 1, BLOCK):  # the last offset of block 0 and the first of block 1
        redis_client.xdel(stream.config.redis.stream, by_offset[(0, offset)][0])
    altered_id, altered = by_offset[(1, BLOCK)]
    redis_client.xdel(stream.config.redis.stream, altered_id)
    redis_client.xadd(stream.config.redis.stream, entry_fields(altered._replace(value=b"x")))
    report = validate_stream(stream.config)
    zero, one = report.partitions
    assert (zero.missing, zero.first_missing, zero.extra, zero.mismatched) == (2, BLOCK - 1, 0, 0)
    assert (one.missing, one.mismatched, one.out_of_order, one.redis_count) == (
        0,
        1,
        1,
        BLOCK + 200,
    )


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_clean_copy_of_awkward_records_has_equal_tallies_on_both_sides(
    make_stream, redis_client, client
):
    """Both reads hash a record the same way (nulls, empty values, repeated headers), so a
    clean copy has no block to compare record by record."""
    from ferry.core import tallies
    from ferry.core.ingest import migration_keys
    from ferry.core.validate_scan import Window, read_state_and_bounds, scan_kafka, scan_redis
    from ferry.kafka.source import open_source
    from ferry.services.seed import awkward_records

    stream = make_stream(awkward_records(3, big_value_bytes=5000), partitions=3)
    backfill(stream.config, progress=False)
    keys = migration_keys(stream.config)
    starts, frontiers, bounds = read_state_and_bounds(redis_client, keys)
    side = scan_redis(redis_client, keys.streams(sorted(starts)), bounds, Window({}, {}, frontiers))
    source = open_source(stream.config, client)
    try:
        ranges = {p: (starts[p], frontiers[p]) for p in starts}
        kafka = scan_kafka(source, ranges, False, False)
    finally:
        source.close()
    assert sum(t.count for t in side.blocks.values()) == len(stream.records) > 5
    assert tallies.differing(side.blocks, kafka.blocks) == []
    assert validate_stream(stream.config).ok
