"""Retention trims exactly and incrementally, and validation knows what it retired."""

from dataclasses import replace

import yaml

from ferry.config import TrimPolicy
from ferry.mirror import backfill
from ferry.retention import read_trimmed, render_scaled_object, trim_stream
from ferry.seed import BASE_TS_MS, payment_events
from ferry.validate import validate_stream

from .helpers import expected_records, read_redis_records


def test_trim_by_length_in_limited_steps(make_stream, redis_client):
    stream = make_stream(list(payment_events(3000, 3)), partitions=3)
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=TrimPolicy(max_len=1000))
    kept_before = read_redis_records(redis_client, config.redis.stream)[-1000:]
    result = trim_stream(redis_client, config, limit=300)
    assert (result.removed, result.length_before, result.length_after) == (2000, 3000, 1000)
    assert result.calls == 7  # six full steps of 300 and one of 200
    assert result.memory_after < result.memory_before
    assert read_redis_records(redis_client, config.redis.stream) == kept_before
    trimmed = read_trimmed(redis_client, config)
    everything = expected_records(stream.records)
    for p, to in trimmed.items():  # the highest removed offset sits just below the first kept one
        kept = [r.offset for _, r in kept_before if r.partition == p]
        assert to == (min(kept) - 1 if kept else everything[p][-1].offset)
    assert set(trimmed) | {r.partition for _, r in kept_before} == {0, 1, 2}
    report = validate_stream(config)
    assert report.ok, report.failures()
    assert sum(p.kafka_count for p in report.partitions) == 1000
    assert trim_stream(redis_client, config).removed == 0  # nothing more to do


def test_trim_by_age(make_stream, redis_client):
    # one partition, so entry IDs are the record timestamps (BASE_TS_MS + i for record i)
    stream = make_stream(list(payment_events(1000, 1)), partitions=1)
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=TrimPolicy(max_age_ms=1000))
    # keep the records at or after BASE_TS_MS + 600
    result = trim_stream(redis_client, config, limit=250, now_ms=BASE_TS_MS + 600 + 1000)
    assert result.removed == 600
    assert (
        min(int(f[b"ts"]) for _, f in redis_client.xrange(config.redis.stream)) == BASE_TS_MS + 600
    )
    assert validate_stream(config).ok


def test_keda_scaled_object_references_the_secret(make_stream):
    stream = make_stream([], partitions=1)
    text = render_scaled_object(
        stream.config,
        deployment="payments-consumer",
        consumer_group="g",
        namespace="pay",
        lag_count=500,
    )
    scaled, auth = list(yaml.safe_load_all(text))
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["lagCount"] == "500"
    assert trigger["metadata"]["stream"] == stream.config.redis.stream
    assert auth["spec"]["secretTargetRef"][0]["name"] == "redis-auth"
    assert "password" not in trigger["metadata"]
