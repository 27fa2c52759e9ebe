"""Soak (``make soak``): kill -9 the mirror and the writer again and again while live traffic
flows; afterwards every record Kafka holds is in Redis exactly once, in order, identical."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.live.phases import start_dual_write
from ferry.services.seed import payment_events

from ..integration.helpers import (
    by_partition,
    ferry_cli,
    read_kafka_raw,
    read_redis_records,
    stop_processes,
    wait_for_mirror,
)

KILLS = int(os.environ.get("FERRY_SOAK_KILLS", "24"))


@pytest.mark.soak
def test_kill_9_mirror_and_writer_during_live_traffic(make_stream, redis_client, tmp_path):
    stream = make_stream(list(payment_events(20_000, 4)), partitions=4)
    config_file = stream.write_config(tmp_path / "s.yaml")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)  # arm and copy history
    start_dual_write(redis_client, keys, "soak")
    commands = {
        "mirror": ferry_cli("backfill", config_file, "--follow", "--no-progress"),
        "writer": ferry_cli("traffic", config_file, "--rate", 2000),
    }
    procs = {}

    def start(role, seed=0):
        cmd = commands[role] + (["--seed", str(seed)] if role == "writer" else [])
        procs[role] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    rng = random.Random(3)
    start("mirror")
    start("writer", 0)
    kills = {"mirror": 0, "writer": 0}
    try:
        for i in range(KILLS):
            threading.Event().wait(rng.uniform(0.5, 2.0))  # a random moment
            role = rng.choice(["mirror", "writer"])
            for name, proc in procs.items():
                assert proc.poll() is None, (
                    f"{name} died on its own: {proc.stderr.read().decode()[-2000:]}"
                )
            os.kill(procs[role].pid, signal.SIGKILL)
            procs[role].wait(timeout=30)
            kills[role] += 1
            start(role, i + 1)
        procs["writer"].send_signal(signal.SIGTERM)
        procs["writer"].wait(timeout=60)
        deadline = time.monotonic() + 120
        wait_for_mirror(stream.config, deadline)
    finally:
        stop_processes(procs.values())
    assert kills["mirror"] + kills["writer"] == KILLS >= 20
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, 4)
    redis_side = by_partition(
        r for _, r in read_redis_records(redis_client, stream.config.redis.stream)
    )
    total = sum(len(v) for v in kafka.values())
    print(f"soak: {kills}, {total} records in Kafka, {total - 20_000} of them live")
    assert redis_side == kafka  # 0 lost, 0 duplicated, 0 misordered, byte-identical
    assert total > 20_000
    assert validate_stream(stream.config).ok


@pytest.mark.soak
def test_kill_9_consumer_after_hand_over_is_exact(make_stream, redis_client, tmp_path):
    from ferry.live.handover import translate_group

    stream = make_stream(list(payment_events(20_000, 4)), partitions=4)
    config_file = stream.write_config(tmp_path / "s.yaml")
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    committed = {0: 1000, 1: 0, 2: 2500}  # the Kafka group's position at hand-over
    translate_group(stream.config, "billing", committed=committed, reset="earliest")
    start_dual_write(redis_client, keys, "soak")
    output = f"{keys.tag}:soak:processed"
    commands = {
        "mirror": ferry_cli("backfill", config_file, "--follow", "--no-progress"),
        "writer": ferry_cli("traffic", config_file, "--rate", 1000),
        "consumer": [
            sys.executable,
            "-m",
            "ferry.services.tools_consume",
            str(config_file),
            "billing",
            "c1",
            output,
        ],
    }
    procs = {role: subprocess.Popen(cmd, stderr=subprocess.PIPE) for role, cmd in commands.items()}
    rng = random.Random(5)
    kills = 0
    try:
        for _ in range(KILLS):
            threading.Event().wait(rng.uniform(0.3, 1.5))  # a random moment
            role = rng.choice(["consumer", "consumer", "mirror", "writer"])
            for name, proc in procs.items():
                assert proc.poll() is None, (
                    f"{name} died on its own: {proc.stderr.read().decode()[-2000:]}"
                )
            os.kill(procs[role].pid, signal.SIGKILL)
            procs[role].wait(timeout=30)
            kills += 1
            procs[role] = subprocess.Popen(commands[role], stderr=subprocess.PIPE)
        procs["writer"].send_signal(signal.SIGTERM)
        procs["writer"].wait(timeout=60)
        deadline = time.monotonic() + 120
        wait_for_mirror(stream.config, deadline)
        while True:  # the consumer drains the group: nothing new, nothing pending
            info = next(
                g for g in redis_client.xinfo_groups(keys.stream) if g["name"] == b"billing"
            )
            if info["lag"] == 0 and info["pending"] == 0:
                break
            assert time.monotonic() < deadline, f"consumer still behind: {info}"
            threading.Event().wait(0.05)
    finally:
        stop_processes(procs.values())
    processed = [(int(f[b"p"]), int(f[b"o"])) for _, f in redis_client.xrange(output)]
    entries = [
        (r.partition, r.offset)
        for _, r in read_redis_records(redis_client, stream.config.redis.stream)
    ]
    expected = sorted((p, o) for p, o in entries if o >= committed.get(p, 0))
    print(f"consumer soak: {kills} kills, {len(processed)} processed, {len(entries)} entries")
    assert kills >= 20
    assert len(processed) == len(set(processed))  # nothing processed twice
    assert sorted(processed) == expected  # nothing skipped, nothing the Kafka group had consumed
