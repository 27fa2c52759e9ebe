"""ferry finish: redis-primary -> redis-only only when every gate holds."""

import subprocess

import pytest

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.live.finish import FinishRefused, finish_gates, run_finish
from ferry.live.handover import translate_group
from ferry.live.phases import (
    REDIS_ONLY,
    REDIS_PRIMARY,
    PhaseState,
    complete_cutover,
    read_events,
    read_phase,
    server_ms,
    start_draining,
    start_dual_write,
)
from ferry.services.seed import SeedRecord, payment_events, produce_records

from .helpers import ferry_cli, wait_until
from .test_live import commit_group


def switched(make_stream, redis_client, partitions: int = 2):
    """A stream copied in full and switched to redis-primary."""
    stream = make_stream(list(payment_events(60, partitions)), partitions=partitions)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    start_draining(redis_client, keys, "test")
    complete_cutover(redis_client, keys, "test")
    return stream, keys


def failed(gates) -> dict[str, str]:
    return {name: detail for name, ok, detail in gates if not ok}


def test_finish_refuses_before_the_switch(make_stream, redis_client):
    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, migration_keys(stream.config), "test")
    with pytest.raises(FinishRefused, match=r"phase is redis-primary \(dual-write\)"):
        run_finish(stream.config, quiet_window_s=0)
    assert read_phase(redis_client, migration_keys(stream.config)).phase == "dual-write"


def test_a_direct_kafka_record_after_the_switch_refuses_within_the_quiet_window(
    make_stream, redis_client
):
    stream, keys = switched(make_stream, redis_client)
    assert failed(finish_gates(stream.config, 60)) == {}
    # a producer that still writes Kafka directly (not a shadow)
    produce_records(stream.bootstrap, stream.config.kafka.topic, [SeedRecord(0, b"k", b"late")])
    assert set(failed(finish_gates(stream.config, 60))) == {"mirror lag is 0"}
    backfill(stream.config, progress=False)  # the mirror copies it: counted as direct
    assert int(redis_client.hget(keys.state, "direct_after_switch")) == 1
    with pytest.raises(
        FinishRefused, match=r"no direct Kafka record for 60s \(1 direct records since the switch"
    ):
        run_finish(stream.config, quiet_window_s=60)
    gate = [e for e in read_events(redis_client, keys) if e["type"] == "gate"][-1]
    assert (gate["step"], gate["ok"]) == ("finish", "False")
    # the window passes by the server's clock: the gate holds, and still reports the count
    last = int(redis_client.hget(keys.state, "direct_last_ms"))
    wait_until(lambda: server_ms(redis_client) - last >= 500, "a 0.5 s quiet window", 10)
    report = run_finish(stream.config, quiet_window_s=0.5)
    assert report.direct_after_switch == 1 and report.fence is None
    assert read_phase(redis_client, keys) == PhaseState(REDIS_ONLY, report.epoch)


def test_unshadowed_entries_refuse(make_stream, redis_client):
    stream, keys = switched(make_stream, redis_client, partitions=1)
    redis_client.hincrby(keys.state, "primary_written", 1)  # written Redis-first, no shadow yet
    assert failed(finish_gates(stream.config, 0)) == {
        "no unshadowed entries": "1 written Redis-first, 0 shadows passed by the mirror"
    }
    redis_client.hincrby(keys.state, "shadowed", 1)  # the mirror passed its shadow
    assert failed(finish_gates(stream.config, 0)) == {}


def test_a_group_not_handed_over_refuses_until_it_is(make_stream, redis_client):
    stream, keys = switched(make_stream, redis_client)
    commit_group(stream.bootstrap, stream.config.kafka.topic, "billing", {0: 5, 1: 3})
    assert failed(finish_gates(stream.config, 0)) == {
        "every Kafka group on the topic handed over": "billing: never handed over"
    }
    translate_group(stream.config, "billing")
    assert failed(finish_gates(stream.config, 0)) == {}
    commit_group(stream.bootstrap, stream.config.kafka.topic, "billing", {0: 7, 1: 3})
    assert failed(finish_gates(stream.config, 0)) == {
        "every Kafka group on the topic handed over": "billing: committed on Kafka since its "
        "hand-over"
    }


def test_the_cli_refuses_in_one_line_then_finishes(make_stream, redis_client, tmp_path):
    stream, keys = switched(make_stream, redis_client, partitions=1)
    redis_client.hincrby(keys.state, "primary_written", 2)
    config_file = stream.write_config(tmp_path / "s.yaml")
    proc = subprocess.run(
        ferry_cli("finish", config_file, "--quiet-window", "0"), capture_output=True, timeout=120
    )
    err = proc.stderr.decode()
    lines = [line for line in err.splitlines() if line.startswith("ferry: error:")]
    assert proc.returncode == 5, err  # a failed gate
    assert lines == [
        "ferry: error: finish refused, still redis-primary: no unshadowed entries "
        "(2 written Redis-first, 0 shadows passed by the mirror)"
    ], err
    assert read_phase(redis_client, keys).phase == REDIS_PRIMARY
    redis_client.hincrby(keys.state, "shadowed", 2)
    proc = subprocess.run(
        ferry_cli("finish", config_file, "--quiet-window", "0"), capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert read_phase(redis_client, keys).phase == REDIS_ONLY


def test_a_fence_the_broker_cannot_make_leaves_redis_primary(make_stream, redis_client):
    from ferry.kafka.fence import KafkaFenceError

    stream, keys = switched(make_stream, redis_client, partitions=1)
    if stream.services.kafka_kind != "tansu":
        pytest.skip("Tansu has no authorizer; an ACL broker fences (test_kafka_fence)")
    with pytest.raises(KafkaFenceError):
        run_finish(stream.config, quiet_window_s=0, fence_kafka=True)
    fence = [e for e in read_events(redis_client, keys) if e["type"] == "fence"][-1]
    assert fence["ok"] == "False" and fence["error"]
    assert read_phase(redis_client, keys).phase == REDIS_PRIMARY  # gates held, fence did not
