"""Redis faults under a running mirror, on a Redis server of the stack's kind that each test
starts, stops and reconfigures itself: restarts, OOM, killed connections, ACL denials,
deadlines. Every scenario ends with the stream checked record by record against Kafka."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import subprocess
import threading
from pathlib import Path

import pytest
import redis
import yaml

from ferry.config import parse_config
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.services.seed import SeedRecord, produce_records
from ferry.services.servers import free_port

from .helpers import (
    Mirror,
    OwnRedis,
    backfill_cli_error,
    by_partition,
    ferry_cli,
    read_kafka_raw,
    read_redis_records,
    wait_until,
)

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server


def on_own_redis(stream, server: OwnRedis, **redis_extra):
    doc = {**stream.doc, "redis": {"url": server.url, **redis_extra}}
    return doc, parse_config(doc, "<own redis>")


def seed(n: int, partitions: int, start: int = 0) -> list[SeedRecord]:
    return [
        SeedRecord(i % partitions, b"k%d" % i, b"v%d" % i, (), 1_700_000_000_000 + i)
        for i in range(start, start + n)
    ]


def assert_exact(config, client: redis.Redis, bootstrap: str, partitions: int) -> None:
    kafka = read_kafka_raw(bootstrap, config.kafka.topic, partitions)
    stream = by_partition(r for _, r in read_redis_records(client, config.redis.stream))
    assert stream == kafka
    report = validate_stream(config)
    assert report.ok, report.failures()


def frontier_total(client: redis.Redis, config) -> int:
    from ferry.core.ingest import migration_keys, read_state

    try:
        return sum(f + 1 for f in read_state(client, migration_keys(config))[1].values())
    except redis.RedisError:
        return -1


def test_follow_mirror_rides_out_a_redis_restart(make_stream, own_redis, services, caplog):
    caplog.set_level(logging.INFO, logger="ferry.redis")
    stream = make_stream(seed(600, 2), partitions=2)
    _, config = on_own_redis(stream, own_redis)
    client = own_redis.client()
    mirror = Mirror(config)
    try:
        wait_until(lambda: frontier_total(client, config) == 600, "the first 600 records")
        own_redis.kill()  # while following: connection lost, then refused
        produce_records(services.kafka_bootstrap, config.kafka.topic, seed(400, 2, start=600))
        wait_until(lambda: "waiting for Redis" in caplog.text, "the mirror to notice")
        own_redis.start()  # loads its AOF (LOADING while it does), then takes writes again
        wait_until(lambda: frontier_total(client, config) == 1000, "the mirror to catch up")
        assert mirror.thread.is_alive()  # it waited; it never exited
    finally:
        mirror.close()
    assert "Redis is back" in caplog.text
    assert_exact(config, client, services.kafka_bootstrap, 2)


def test_out_of_memory_is_waited_out(make_stream, own_redis, services):
    stream = make_stream(seed(3000, 3), partitions=3)
    _, config = on_own_redis(stream, own_redis)
    client = own_redis.client()
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", used + 64 * 1024)  # room for a few batches, not 3000 records
    states = []
    waiting = threading.Event()

    def on_fault(state):
        states.append(state.cause)
        if state.cause and "out of memory" in state.cause:
            waiting.set()

    result = {}
    run = threading.Thread(
        target=lambda: result.update(
            summary=backfill(config, progress=False, on_redis_fault=on_fault)
        )
    )
    run.start()
    try:
        assert waiting.wait(60), f"the mirror never waited for memory: {states}"
        assert run.is_alive()
        client.config_set("maxmemory", 0)  # the operator adds memory
    finally:
        run.join(timeout=120)
    assert result["summary"].complete
    assert states[-1] is None  # the wait ended
    assert_exact(config, client, services.kafka_bootstrap, 3)


def test_killed_connections_mid_pipeline_are_retried(make_stream, own_redis, services):
    stream = make_stream(seed(20_000, 4), partitions=4)
    _, config = on_own_redis(stream, own_redis, fault_deadline="60s")
    config = dataclasses.replace(config, batch_size=50)  # many round trips
    killer = own_redis.client()
    kills = []
    result = {}
    run = threading.Thread(target=lambda: result.update(summary=backfill(config, progress=False)))
    run.start()
    stop = threading.Event()
    while run.is_alive() and not stop.wait(0.02):  # kill every 20 ms while the copy runs
        kills.append(killer.client_kill_filter(_type="normal", skipme=True))
    run.join(timeout=120)
    assert sum(kills) > 0, "no connection was killed: the test proved nothing"
    assert result["summary"].complete
    assert_exact(config, killer, services.kafka_bootstrap, 4)


def test_one_shot_backfill_gives_up_after_its_deadline(make_stream, own_redis, tmp_path):
    stream = make_stream(seed(100, 2), partitions=2)
    doc, _ = on_own_redis(stream, own_redis, fault_deadline="2s")
    own_redis.kill()
    line, _ = backfill_cli_error(doc, tmp_path, status=4)  # unreachable
    assert "gave up after 2s" in line and "unreachable" in line, line
    assert f"127.0.0.1:{own_redis.port}" in line


def test_acl_denial_is_one_line_naming_command_and_user(make_stream, own_redis, tmp_path):
    stream = make_stream(seed(100, 2), partitions=2)
    user, password = "mirror-" + secrets.token_hex(3), secrets.token_urlsafe(12)
    (tmp_path / "pw").write_text(password)
    own_redis.client().acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["+@all", "-evalsha", "-eval", "-script|load"],
    )
    doc, _ = on_own_redis(
        stream,
        own_redis,
        username={"env": "FERRY_TEST_REDIS_USER"},
        password={"file": str(tmp_path / "pw")},
    )
    line, err = backfill_cli_error(doc, tmp_path, env={"FERRY_TEST_REDIS_USER": user})
    assert user in line and "evalsha" in line.lower(), line
    assert password not in err


def test_a_record_over_the_servers_limit_is_named_and_nothing_from_it_on_is_written(
    make_stream, own_redis, services, tmp_path
):
    big = 1_300_000  # over a proto-max-bulk-len of 1 MB, under the broker's limit set below
    recs = seed(40, 2)
    recs[10] = SeedRecord(0, b"big", b"x" * big, (), recs[10].timestamp_ms)  # partition 0 offset 5
    topic_config = {"max.message.bytes": "4000000"} if services.kafka_kind == "apache" else None
    stream = make_stream(recs, partitions=2, topic_config=topic_config)
    doc, config = on_own_redis(stream, own_redis)
    client = own_redis.client()
    client.config_set("proto-max-bulk-len", "1mb")
    line, _ = backfill_cli_error(doc, tmp_path)
    assert "partition 0 offset 5" in line and "proto-max-bulk-len" in line, line
    copied = by_partition(r for _, r in read_redis_records(client, config.redis.stream))
    assert [r.offset for r in copied.get(0, [])] == [0, 1, 2, 3, 4]  # before it, not from it
    client.config_set("proto-max-bulk-len", "4mb")  # the remedy the message names
    assert backfill(config, progress=False).complete
    assert_exact(config, client, services.kafka_bootstrap, 2)


def cut_inside_last_transaction(folder: Path) -> int:
    """Truncate the newest append-only file in the middle of its last MULTI/EXEC that
    holds several XADDs (an ingest batch), as a machine crash with appendfsync everysec can;
    returns the bytes cut off."""
    incr = sorted((folder / "appendonlydir").glob("*.incr.aof"), key=lambda f: f.stat().st_mtime)
    data = incr[-1].read_bytes()
    end = len(data)
    while True:
        multi = data.rindex(b"*1\r\n$5\r\nMULTI\r\n", 0, end)
        exec_ = data.index(b"*1\r\n$4\r\nEXEC\r\n", multi)
        if data[multi:exec_].count(b"XADD") >= 4:
            break
        end = multi
    cut = multi + (exec_ - multi) // 2  # inside one of the batch's XADDs, after others
    incr[-1].write_bytes(data[:cut])
    return len(data) - cut


def test_an_aof_cut_inside_a_batch_stays_exact_over_two_restarts(make_stream, own_redis, services):
    stream = make_stream(seed(2000, 2), partitions=2)
    _, config = on_own_redis(stream, own_redis)
    config = dataclasses.replace(config, batch_size=100)
    client = own_redis.client()
    backfill(config, progress=False)
    own_redis.kill()
    assert cut_inside_last_transaction(own_redis.folder) > 0
    own_redis.start()  # restart 1: the half batch is dropped; the file keeps an open MULTI
    assert frontier_total(client, config) < 2000  # the cut batch is gone, frontier with it
    produce_records(services.kafka_bootstrap, config.kafka.topic, seed(500, 2, start=2000))
    assert backfill(config, progress=False).complete  # resumes, copies the lost batch again
    own_redis.kill()
    own_redis.start()  # restart 2: the load that merged the open MULTI with what followed
    assert frontier_total(client, config) == 2500
    assert_exact(config, client, services.kafka_bootstrap, 2)


def test_entries_beyond_the_frontier_refuse_a_resume(make_stream, redis_client):
    from ferry.core.ingest import migration_keys
    from ferry.errors import IntegrityError

    stream = make_stream(seed(300, 3), partitions=3)
    backfill(stream.config, progress=False)
    keys = migration_keys(stream.config)
    redis_client.hset(keys.state, "frontier:1", 90)  # the frontier's update lost, entries kept
    with pytest.raises(
        IntegrityError, match=r"partition 1: .* holds offset 99 but the frontier is 90"
    ):
        backfill(stream.config, progress=False)
    assert redis_client.xlen(stream.config.redis.stream) == 300  # nothing was written


def start_follow_process(doc: dict, folder: Path) -> tuple[subprocess.Popen, int, Path]:
    path = folder / "stream.yaml"
    path.write_text(yaml.safe_dump(doc))
    port, log = free_port(), folder / "mirror.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ferry_cli("backfill", path, "--follow", "--no-progress", "--metrics-port", port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, port, log


def read_metric(port: int, name: str) -> float | None:
    from .test_live import scrape

    try:
        return scrape(port).get(name)
    except OSError:
        return None


def test_follow_process_reports_the_wait_and_never_exits(
    make_stream, own_redis, services, tmp_path
):
    import signal

    stream = make_stream(seed(500, 2), partitions=2)
    doc, config = on_own_redis(stream, own_redis)
    proc, port, log = start_follow_process(doc, tmp_path)
    client = own_redis.client()
    waiting = f'ferry_redis_waiting{{stream="{config.name}"}}'
    try:
        wait_until(lambda: frontier_total(client, config) == 500, "the history")
        own_redis.kill()
        produce_records(services.kafka_bootstrap, config.kafka.topic, seed(300, 2, start=500))
        wait_until(lambda: read_metric(port, waiting) == 1.0, "the gauge to show the wait")
        assert proc.poll() is None
        own_redis.start()
        wait_until(lambda: frontier_total(client, config) == 800, "the mirror to catch up")
        wait_until(lambda: read_metric(port, waiting) == 0.0, "the gauge to clear")
        retries = f'ferry_redis_fault_retries_total{{stream="{config.name}"}}'
        assert read_metric(port, retries) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text
    assert text.count("waiting for Redis") >= 1 and "Redis is back" in text, text
    assert_exact(config, client, services.kafka_bootstrap, 2)


def test_a_follow_process_told_to_stop_while_waiting_stops(
    make_stream, own_redis, services, tmp_path
):
    import signal

    stream = make_stream(seed(100, 2), partitions=2)
    doc, config = on_own_redis(stream, own_redis)
    proc, port, log = start_follow_process(doc, tmp_path)
    try:
        wait_until(lambda: frontier_total(own_redis.client(), config) == 100, "the history")
        own_redis.kill()
        produce_records(services.kafka_bootstrap, config.kafka.topic, seed(50, 2, start=100))
        waiting = f'ferry_redis_waiting{{stream="{config.name}"}}'
        wait_until(lambda: read_metric(port, waiting) == 1.0, "the wait")
        proc.send_signal(signal.SIGTERM)  # what Ctrl-C or `kubectl delete pod` sends
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 4, text  # Redis unreachable
    errors = [line for line in text.splitlines() if line.startswith("ferry: error:")]
    assert len(errors) == 1 and "stopped while waiting for Redis" in errors[0], text
    assert "Traceback" not in text, text
