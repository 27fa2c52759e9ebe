"""Retention trims exactly and incrementally, and validation knows what it retired."""

import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import yaml

from ferry.config import TrimPolicy
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.live.handover import StreamConsumer, translate_group
from ferry.redis.retention import read_trimmed, trim_stream
from ferry.runbook.keda import (
    fetch_keda_crds,
    handed_over_groups,
    render_scaled_object,
    triggered_groups,
    validate_keda_objects,
)
from ferry.services.seed import BASE_TS_MS, SeedRecord, payment_events

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
    from ferry.runbook.runner import run_runbook

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


# --- Retention that respects consumer groups ---------------------------------------------


def _group_read_half_acked_quarter(redis_client, key, count):
    """'billing' has read half of the stream and acknowledged a quarter; 'audit' has read and
    acknowledged more than billing; 'late' joined at the end ($) and holds nothing back."""
    redis_client.xgroup_create(key, "billing", id="0")
    redis_client.xgroup_create(key, "audit", id="0")
    redis_client.xgroup_create(key, "late", id="$")
    read = redis_client.xreadgroup("billing", "c1", {key: ">"}, count=count // 2)[0][1]
    redis_client.xack(key, "billing", *[entry_id for entry_id, _ in read[: count // 4]])
    audit = redis_client.xreadgroup("audit", "c1", {key: ">"}, count=count // 2 + 50)[0][1]
    redis_client.xack(key, "audit", *[entry_id for entry_id, _ in audit])
    return [entry_id for entry_id, _ in read]


@pytest.mark.parametrize(
    "policy, would_remove",
    [(TrimPolicy(max_age_ms=1000), 1000), (TrimPolicy(max_len=100), 900)],
    ids=["age", "length"],
)
def test_trim_stops_at_what_a_group_has_not_acknowledged(
    make_stream, redis_client, policy, would_remove
):
    stream = make_stream(list(payment_events(1000, 1)), partitions=1)
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=policy)
    key = config.redis.stream
    delivered = _group_read_half_acked_quarter(redis_client, key, 1000)
    now = BASE_TS_MS + 1000 + 1000  # the age policy alone would remove every entry

    result = trim_stream(redis_client, config, limit=100, now_ms=now)
    assert result.removed == 250  # exactly the acknowledged quarter
    assert redis_client.xrange(key, count=1)[0][0] == delivered[250]  # first unacknowledged
    assert (result.held_by, result.held) == ("billing", would_remove - 250)
    assert result.forced_past == 0
    assert "billing" in result.describe() and f"{would_remove - 250:,}" in result.describe()
    assert validate_stream(config).ok
    # nothing more until billing acknowledges; then exactly up to its new boundary
    assert trim_stream(redis_client, config, now_ms=now).removed == 0
    redis_client.xack(key, "billing", *delivered[250:400])
    assert trim_stream(redis_client, config, now_ms=now).removed == 150

    forced = trim_stream(redis_client, config, limit=100, now_ms=now, force=True)
    assert forced.removed == would_remove - 400
    # billing had acknowledged none of them, audit not those past 550
    assert (forced.held_by, forced.held) == ("audit,billing", 0)
    assert forced.forced_past == would_remove - 400
    assert forced.length_after == 1000 - would_remove
    report = validate_stream(config)
    assert report.ok, report.failures()


def test_a_group_that_read_nothing_holds_everything(make_stream, redis_client):
    stream = make_stream(list(payment_events(200, 1)), partitions=1)
    backfill(stream.config, progress=False)
    config = replace(stream.config, trim=TrimPolicy(max_len=10))
    redis_client.xgroup_create(config.redis.stream, "new", id="0")
    result = trim_stream(redis_client, config)
    assert (result.removed, result.held_by, result.held) == (0, "new", 190)
    assert trim_stream(redis_client, config, force=True).forced_past == 190


# --- Entry IDs bounded by the copy time ----------------------------------------------------

YEAR_2100_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z


def test_a_far_future_timestamp_does_not_pin_later_ids(make_stream, redis_client, services):
    now_ms = int(time.time() * 1000)
    records = [SeedRecord(0, b"old-%d" % i, b"v", (), BASE_TS_MS + i) for i in range(5)]
    records.append(SeedRecord(0, b"future", b"2100", (("h", b"x"),), YEAR_2100_MS))
    records += [SeedRecord(0, b"now-%d" % i, b"v", (), now_ms + i) for i in range(5)]
    # Kafka 4 refuses timestamps over an hour ahead unless the topic allows them
    topic_config = (
        {"message.timestamp.after.max.ms": str(2**63 - 1)}
        if services.kafka_kind.startswith("apache")
        else None
    )
    stream = make_stream(records, partitions=1, topic_config=topic_config)
    skew_ms = 3_600_000  # one hour: the configured bound, not the 5-minute default
    config = replace(stream.config, redis=replace(stream.config.redis, max_future_skew_ms=skew_ms))
    before = _server_ms(redis_client)
    backfill(config, progress=False)
    after = _server_ms(redis_client)

    entries = redis_client.xrange(config.redis.stream)
    ids = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
    assert ids[:5] == [BASE_TS_MS + i for i in range(5)]  # past timestamps are the IDs
    assert before + skew_ms <= ids[5] <= after + skew_ms  # the year 2100 capped at copy + skew
    assert all(i <= after + skew_ms for i in ids[5:])  # later entries stay near copy time
    assert [int(f[b"ts"]) for _, f in entries] == [r.timestamp_ms for r in records]  # kept
    report = validate_stream(config)
    assert report.ok, report.failures()  # byte for byte, ts included

    # age retention keeps working: a day after the copy, everything is older than a day
    aged = replace(config, trim=TrimPolicy(max_age_ms=86_400_000))
    result = trim_stream(redis_client, aged, now_ms=after + skew_ms + 86_400_000 + 1)
    assert result.removed == len(records)
    assert validate_stream(aged).ok


def test_redis_first_writes_bound_ids_by_copy_time_too(redis_client):
    from ferry.core.ingest import MigrationKeys, _script, arm_migration

    keys = MigrationKeys("{primary-skew}", "{primary-skew}:stream", "merged")
    try:
        arm_migration(redis_client, keys, "primary-skew", {0: 0})
        redis_client.hset(keys.state, mapping={"phase": "redis-primary"})
        before = _server_ms(redis_client)
        reply = _script(redis_client, "primary.lua")(
            keys=[keys.state, keys.stream],
            args=[0, "writer-1", 1, YEAR_2100_MS, 0, b"k", b"v", b"", before, 0, b"k", b"v", b""],
        )
        after = _server_ms(redis_client)
        ids = [int(entry_id.split(b"-")[0]) for entry_id in reply[1:]]
        skew = 300_000  # redis.max_future_skew's default, 5 minutes
        assert before + skew <= ids[0] <= after + skew and ids[1] == ids[0]
        fields = [f for _, f in redis_client.xrange(keys.stream)]
        assert [int(f[b"ts"]) for f in fields] == [YEAR_2100_MS, before]
    finally:
        redis_client.delete(keys.state, keys.stream)


def _server_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000
