"""The draining lease and writer liveness, both by the Redis server's clock (TIME)."""

import os
import signal
import subprocess
import time

import pytest

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.live.cutover import lease_for
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    REDIS_PRIMARY,
    LeaseExpired,
    PhaseState,
    WriterInfo,
    complete_cutover,
    expire_draining,
    live_writers,
    read_events,
    read_phase,
    read_phase_lease,
    read_writers,
    report_writer,
    server_ms,
    start_draining,
    start_dual_write,
)
from ferry.services.seed import payment_events

from .helpers import ferry_cli, wait_until

pytestmark = pytest.mark.redis_side  # leases and liveness by the Redis server's clock


def test_a_draining_lease_by_server_time_expires_only_after_it_ends(make_stream, redis_client):
    stream = make_stream([], partitions=1)
    keys = migration_keys(stream.config)
    start_dual_write(redis_client, keys, "test")
    before = server_ms(redis_client)
    drained = start_draining(redis_client, keys, "test", lease_s=1.5)  # no coordinator alive
    lease = read_phase_lease(redis_client, keys)
    assert (lease.phase, lease.epoch) == (DRAINING, drained.epoch)
    # the lease is the server's TIME plus 1.5 s, and the reading carries the server's time
    assert before + 1500 <= lease.lease_until_ms <= server_ms(redis_client) + 1500
    assert before <= lease.server_ms <= server_ms(redis_client)
    # before the lease ends: nothing changes
    early = expire_draining(redis_client, keys, actor="writer-a")
    assert early == read_phase(redis_client, keys) and early.phase == DRAINING
    assert read_phase_lease(redis_client, keys).server_ms < lease.lease_until_ms
    # after it (the server's clock decides): back to dual-write, logged, lease gone
    wait_until(
        lambda: read_phase_lease(redis_client, keys).server_ms >= lease.lease_until_ms,
        "the server's clock to pass the lease",
        timeout_s=10,
    )
    expired = expire_draining(redis_client, keys, actor="writer-a")
    assert (expired.phase, expired.epoch) == (DUAL_WRITE, drained.epoch + 1)
    after = read_phase_lease(redis_client, keys)
    assert (after.phase, after.epoch, after.lease_until_ms) == (DUAL_WRITE, expired.epoch, None)
    last = read_events(redis_client, keys)[-1]
    assert {k: last[k] for k in ("type", "from", "to", "reason", "actor", "epoch")} == {
        "type": "phase",
        "from": DRAINING,
        "to": DUAL_WRITE,
        "reason": "lease expired",
        "actor": "writer-a",
        "epoch": str(expired.epoch),
    }
    # a second writer's call changes nothing
    assert expire_draining(redis_client, keys, actor="writer-b") == expired


def test_complete_cutover_is_refused_once_the_lease_ran_out(make_stream, redis_client):
    stream = make_stream([], partitions=1)
    keys = migration_keys(stream.config)
    start_dual_write(redis_client, keys, "test")
    start_draining(redis_client, keys, "test", lease_s=0.3)
    lease_until = read_phase_lease(redis_client, keys).lease_until_ms
    wait_until(lambda: server_ms(redis_client) > lease_until, "the lease to pass", timeout_s=10)
    with pytest.raises(LeaseExpired, match=r"lease ended at \d+ ms, Redis server time is \d+"):
        complete_cutover(redis_client, keys, "late")
    assert read_phase(redis_client, keys).phase == DRAINING  # refused whole
    assert expire_draining(redis_client, keys, "test").phase == DUAL_WRITE
    # within a lease the switch goes through, and records where Kafka's shadows begin
    start_draining(redis_client, keys, "again", lease_s=30)
    redis_client.hset(keys.state, mapping={"direct_after_switch": 3, "direct_last_ms": 1})
    assert complete_cutover(redis_client, keys, "in time").phase == REDIS_PRIMARY
    assert redis_client.hget(keys.state, "lease_until") is None
    # records that reached Kafka directly are counted from this switch on (ferry finish)
    assert redis_client.hmget(keys.state, "direct_after_switch", "direct_last_ms") == [None] * 2
    assert redis_client.hget(keys.state, "primary_from:0") is None  # not armed: no frontier


def test_a_writer_with_a_skewed_host_clock_is_live_by_the_servers_clock(make_stream, redis_client):
    stream = make_stream([], partitions=1)
    keys = migration_keys(stream.config)
    skewed = WriterInfo("skewed", heartbeat_ms=1_000, acked_epoch=0, phase=DUAL_WRITE)  # 1970
    before = server_ms(redis_client)
    stored_ms = report_writer(redis_client, keys, skewed)
    (stored,) = read_writers(redis_client, keys)
    assert stored.heartbeat_ms == stored_ms and before <= stored_ms <= server_ms(redis_client)
    assert [w.writer_id for w in live_writers(redis_client, keys)] == ["skewed"]


def test_a_killed_coordinator_leaves_draining_to_its_lease(make_stream, redis_client, tmp_path):
    stream = make_stream(list(payment_events(50, 1)), partitions=1)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    epoch = read_phase(redis_client, keys).epoch
    # a writer that registered and heartbeats but never acknowledges draining
    report_writer(redis_client, keys, WriterInfo("ghost", 0, epoch, DUAL_WRITE))
    config_file = stream.write_config(tmp_path / "s.yaml")
    coordinator = subprocess.Popen(
        ferry_cli("cutover", config_file, "--pause-bound", "3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        wait_until(lambda: read_phase(redis_client, keys).phase == DRAINING, "draining", 60)
        coordinator.send_signal(signal.SIGKILL)  # no abort, no clean-up
        coordinator.wait(timeout=30)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait(timeout=30)
    lease = read_phase_lease(redis_client, keys)
    # killed in draining; its lease (6 s for a 3 s bound) outlasts its own bound
    assert lease_for(3.0) == 6.0
    assert lease.phase == DRAINING and 3_000 < lease.lease_until_ms - lease.server_ms <= 6_000
    assert expire_draining(redis_client, keys, "ghost").phase == DRAINING  # still leased
    deadline = time.monotonic() + 30
    while expire_draining(redis_client, keys, "ghost").phase == DRAINING:  # a writer's poll
        assert time.monotonic() < deadline, "the lease never ended"
        report_writer(redis_client, keys, WriterInfo("ghost", 0, epoch, DUAL_WRITE))
        time.sleep(0.05)  # polling the phase, bounded by the deadline
    assert server_ms(redis_client) >= lease.lease_until_ms  # the server's clock decided
    assert read_phase(redis_client, keys) == PhaseState(DUAL_WRITE, epoch + 2)
    events = [
        (e.get("from"), e.get("to"), e.get("reason")) for e in read_events(redis_client, keys)
    ]
    assert events[-2:] == [
        (DUAL_WRITE, DRAINING, "cutover"),
        (DRAINING, DUAL_WRITE, "lease expired"),
    ]


def run_phase_cli(config_file, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ferry_cli("phase", config_file, *args), capture_output=True, timeout=120, text=True
    )


def test_phase_set_moves_only_the_ungated_ways_unless_forced(make_stream, redis_client, tmp_path):
    stream = make_stream(list(payment_events(20, 2)), partitions=2)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    config_file = stream.write_config(tmp_path / "s.yaml")
    assert run_phase_cli(config_file, "--set", "dual-write").returncode == 0  # the start
    refused = run_phase_cli(config_file, "--set", "draining")
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("ferry: error:")]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "dual-write -> draining is not a move 'ferry phase --set' makes" in lines[0]
    for verb in ("ferry cutover", "--only 99 (rollback)", "ferry finish", "--force"):
        assert verb in lines[0]
    assert read_phase(redis_client, keys).phase == DUAL_WRITE
    forced = run_phase_cli(config_file, "--set", "draining", "--force", "--reason", "drill")
    assert forced.returncode == 0, forced.stderr
    assert forced.stderr.splitlines() == [
        "ferry: warning: forced dual-write -> draining: writers hold every send until the "
        "lease ends, with no coordinator to switch or abort"
    ]
    assert read_phase_lease(redis_client, keys).lease_until_ms is not None
    assert run_phase_cli(config_file, "--set", "redis-primary").returncode == 2
    assert run_phase_cli(config_file, "--set", "dual-write").returncode == 0  # an abort
    run_phase_cli(config_file, "--set", "draining", "--force")  # within the lease (5 s):
    assert run_phase_cli(config_file, "--set", "redis-primary", "--force").returncode == 0
    # a forced switch records where Kafka's shadows begin, as the cutover does
    frontiers = {p: int(redis_client.hget(keys.state, f"frontier:{p}")) for p in (0, 1)}
    assert {p: int(redis_client.hget(keys.state, f"primary_from:{p}")) for p in (0, 1)} == {
        p: f + 1 for p, f in frontiers.items()
    }
    events = [e for e in read_events(redis_client, keys) if e["type"] in ("forced", "phase")]
    assert [(e["type"], e["from"], e["to"], e["actor"]) for e in events] == [
        ("phase", "kafka-only", DUAL_WRITE, "cli"),
        ("forced", DUAL_WRITE, DRAINING, "cli"),
        ("phase", DUAL_WRITE, DRAINING, "cli"),
        ("phase", DRAINING, DUAL_WRITE, "cli"),
        ("forced", DUAL_WRITE, DRAINING, "cli"),
        ("phase", DUAL_WRITE, DRAINING, "cli"),
        ("forced", DRAINING, REDIS_PRIMARY, "cli"),
        ("phase", DRAINING, REDIS_PRIMARY, "cli"),
    ]
    assert events[1]["reason"] == "drill"


@pytest.mark.parametrize("failure", [RuntimeError("Redis answered nonsense"), KeyboardInterrupt()])
def test_any_failure_while_draining_goes_back_to_dual_write(
    make_stream, redis_client, monkeypatch, failure
):
    from ferry.live import cutover

    stream = make_stream(list(payment_events(20, 1)), partitions=1)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    report_writer(redis_client, keys, WriterInfo("w", 0, 1, DUAL_WRITE))
    real = cutover.live_writers

    def live_writers_failing_in_draining(client, keys):
        if read_phase(client, keys).phase == DRAINING:
            raise failure
        return real(client, keys)

    monkeypatch.setattr(cutover, "live_writers", live_writers_failing_in_draining)
    with pytest.raises(type(failure)):
        cutover.run_cutover(stream.config, pause_bound_s=5.0)
    assert read_phase(redis_client, keys) == PhaseState(DUAL_WRITE, 3)
    last = read_events(redis_client, keys)[-1]
    assert (last["type"], last["ok"]) == ("cutover", "False")
    assert last["reason"].startswith(type(failure).__name__)
