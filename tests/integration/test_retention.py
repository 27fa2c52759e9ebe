"""Retention trims exactly and incrementally, and validation knows what it retired."""

from dataclasses import replace
from urllib.parse import urlsplit

import yaml

from ferry.config import TrimPolicy
from ferry.handover import StreamConsumer, translate_group
from ferry.keda import (
    fetch_keda_crds,
    handed_over_groups,
    render_scaled_object,
    triggered_groups,
    validate_keda_objects,
)
from ferry.mirror import backfill
from ferry.retention import read_trimmed, trim_stream
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


def test_keda_triggers_follow_the_groups_handed_over(make_stream, redis_client):
    stream = make_stream(list(payment_events(300, 2)), partitions=2)
    config = stream.config
    backfill(config, progress=False)
    for group in ("fraud", "billing"):
        translate_group(config, group, committed={0: 10, 1: 5})
    consumer = StreamConsumer(config, "billing", block_ms=100, max_failures=5)
    consumer.fail(consumer.poll()[0])  # bookkeeping beside a group's record is not a group
    assert redis_client.exists(consumer.failures_key)

    groups = handed_over_groups(redis_client, config)
    assert groups == ["billing", "fraud"]
    text = render_scaled_object(
        config, groups=groups, deployment="payments-consumer", namespace="pay", lag_count=500
    )
    assert triggered_groups(text) == {"billing", "fraud"}
    url = urlsplit(stream.services.redis_url)
    for trigger in next(yaml.safe_load_all(text))["spec"]["triggers"]:
        assert trigger["metadata"]["address"] == f"{url.hostname}:{url.port}"
        assert trigger["metadata"]["stream"] == config.redis.stream
    # KEDA asks Redis for these groups' lag: each one exists on the stream
    on_stream = {g["name"].decode() for g in redis_client.xinfo_groups(config.redis.stream)}
    assert set(groups) <= on_stream
    assert validate_keda_objects(text, fetch_keda_crds()) == []


def test_step_06_renders_and_gates_the_keda_objects(make_stream, redis_client, tmp_path):
    from ferry.runner import run_runbook

    stream = make_stream(list(payment_events(200, 2)), partitions=2)
    backfill(stream.config, progress=False)
    for group in ("billing", "fraud"):
        translate_group(stream.config, group, committed={0: 3, 1: 3})
    config_file = stream.write_config(tmp_path / "s.yaml")
    parameters = {"06": {"keda_namespace": "pay", "keda_deployment": "pay-consumer"}}
    result = run_runbook(
        str(config_file),
        only="06",
        audit_root=tmp_path / "audit",
        parameters=parameters,
        echo=lambda s: None,
    )
    assert result.ok, [s.message for s in result.steps]
    text = (result.folder / "keda-scaledobject.yaml").read_text()
    assert triggered_groups(text) == {"billing", "fraud"}
    scaled = next(yaml.safe_load_all(text))
    assert (scaled["metadata"]["namespace"], scaled["spec"]["scaleTargetRef"]["name"]) == (
        "pay",
        "pay-consumer",
    )

    parameters["06"]["keda_address"] = "redis.pay.svc"  # no port: the step fails, saying so
    failed = run_runbook(
        str(config_file),
        only="06",
        audit_root=tmp_path / "audit",
        parameters=parameters,
        echo=lambda s: None,
    )
    assert not failed.ok and "keda_address" in failed.steps[0].message
