"""Soak (``make soak``): three writer processes on every partition, a following mirror and a
``ferry cutover`` coordinator, with writers and the coordinator killed (SIGKILL) during the
cutover and in redis-primary, rollbacks between. Afterwards, by the writers' own
acknowledgement logs: every acknowledged record is in Redis exactly once (and in Kafka once
when its Delivery has an offset), no value is anywhere twice, nothing is there that was
never sent, and per writer and partition the send order is the order of Redis and Kafka.

``FERRY_SOAK_MANY_WRITERS_S`` lengthens it (default 150 s of kills)."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.live.ack_log import account, order_violations, parse_tag, read_ack_logs
from ferry.live.cutover import cutover_gates
from ferry.live.phases import DRAINING, DUAL_WRITE, REDIS_PRIMARY, read_phase, start_dual_write
from ferry.live.rollback import plan_rollback, roll_back
from ferry.services.seed import payment_events

from ..integration.helpers import (
    ferry_cli,
    read_kafka_raw,
    read_redis_records,
    stop_processes,
    wait_for_mirror,
)

SECONDS = float(os.environ.get("FERRY_SOAK_MANY_WRITERS_S", "150"))
WRITERS = 3
PARTITIONS = 3
RATE = 150  # per writer, msg/s
PAUSE_BOUND_S = 3.0  # the coordinator's; its draining lease is 6 s
WRITER_SCRIPT = Path(__file__).with_name("ack_writer.py")


def wait_for(predicate, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        threading.Event().wait(0.01)  # polling, bounded by the deadline


class Writers:
    """The writer processes: slot i runs as writer ``w{i}.{incarnation}``, each incarnation
    with its own acknowledgement log."""

    def __init__(self, config_file: Path, folder: Path):
        self.config_file, self.folder = config_file, folder
        self.procs: dict[int, subprocess.Popen] = {}
        self.incarnation = Counter()
        self.logs: list[Path] = []
        self.kills = 0

    def start(self, slot: int) -> None:
        self.incarnation[slot] += 1
        writer_id = f"w{slot}.{self.incarnation[slot]}"
        log = self.folder / f"{writer_id}.acks"
        self.logs.append(log)
        self.procs[slot] = subprocess.Popen(
            [
                sys.executable,
                str(WRITER_SCRIPT),
                str(self.config_file),
                writer_id,
                str(log),
                str(RATE),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / f"{writer_id}.err", "wb"),  # noqa: SIM115 - the child's
        )

    def check_alive(self) -> None:
        for slot, proc in self.procs.items():
            if proc.poll() is not None:
                err = (self.folder / f"w{slot}.{self.incarnation[slot]}.err").read_text()
                raise AssertionError(f"writer w{slot} died on its own: {err[-2000:]}")

    def kill_one(self, rng: random.Random) -> None:
        slot = rng.randrange(WRITERS)
        os.kill(self.procs[slot].pid, signal.SIGKILL)
        self.procs[slot].wait(timeout=30)
        self.kills += 1
        self.start(slot)


@pytest.mark.soak
def test_kill_9_writers_and_coordinator_during_cutover_and_redis_primary(
    make_stream, redis_client, tmp_path
):
    stream = make_stream(list(payment_events(3000, PARTITIONS)), partitions=PARTITIONS)
    config = stream.config
    config_file = stream.write_config(tmp_path / "s.yaml")
    keys = migration_keys(config)
    backfill(config, progress=False)
    start_dual_write(redis_client, keys, "soak")
    mirror = subprocess.Popen(
        ferry_cli("backfill", config_file, "--follow", "--no-progress"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    writers = Writers(config_file, tmp_path)
    for slot in range(WRITERS):
        writers.start(slot)
    rng = random.Random(11)
    n = Counter()  # what happened
    phase = lambda: read_phase(redis_client, keys).phase  # noqa: E731

    def pause(low: float, high: float) -> None:
        threading.Event().wait(rng.uniform(low, high))  # a random moment of traffic
        writers.check_alive()
        assert mirror.poll() is None, f"mirror died: {mirror.stderr.read().decode()[-2000:]}"

    began = time.monotonic()
    try:
        while time.monotonic() - began < SECONDS:
            pause(0.5, 2.0)
            if phase() == DUAL_WRITE:
                # wait out writers killed earlier (their heartbeat lapses) and the mirror's lag
                wait_for(
                    lambda: all(ok for _, ok, _ in cutover_gates(config, 2000)),
                    "the cutover's gates",
                    60,
                )
                coordinator = subprocess.Popen(
                    ferry_cli("cutover", config_file, "--pause-bound", PAUSE_BOUND_S),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                n["cutovers started"] += 1
                action = rng.choice(
                    [
                        "none",
                        "kill coordinator draining",
                        "kill writer draining",
                        "kill coordinator after switch",
                    ]
                )
                wait_for(
                    lambda c=coordinator: phase() != DUAL_WRITE or c.poll() is not None,
                    "draining",
                    30,
                )
                if action == "kill coordinator draining" and phase() == DRAINING:
                    threading.Event().wait(rng.uniform(0, 0.3))  # somewhere in the drain
                    if coordinator.poll() is None and phase() == DRAINING:
                        coordinator.kill()
                        n["coordinator killed in draining"] += 1
                        # the lease ends it: the writers go back to dual-write themselves
                        wait_for(lambda: phase() != DRAINING, "the writers ending the drain", 30)
                        n["drains ended by the lease"] += phase() == DUAL_WRITE
                elif action == "kill writer draining" and phase() == DRAINING:
                    writers.kill_one(rng)
                    n["writers killed in draining"] += 1
                elif action == "kill coordinator after switch":
                    wait_for(
                        lambda c=coordinator: phase() != DRAINING or c.poll() is not None,
                        "the switch",
                        30,
                    )
                    if coordinator.poll() is None and phase() == REDIS_PRIMARY:
                        coordinator.kill()
                        n["coordinator killed in redis-primary"] += 1
                rc = coordinator.wait(timeout=60)
                if rc not in (0, -signal.SIGKILL):
                    err = coordinator.stderr.read().decode()
                    assert "aborted" in err or "gates failed" in err, err[-2000:]
                    n["cutovers aborted"] += 1
                n["cutovers to redis-primary"] += phase() == REDIS_PRIMARY
            if phase() == REDIS_PRIMARY:
                for _ in range(rng.randint(1, 2)):
                    pause(0.5, 2.5)
                    writers.kill_one(rng)
                    n["writers killed in redis-primary"] += 1
                pause(0.5, 2.0)
                plan = plan_rollback(config)
                assert plan.target == DUAL_WRITE, plan
                roll_back(config, plan)
                n["rollbacks"] += 1
        writers.check_alive()
        for proc in writers.procs.values():  # close(): deliver what was sent, log its fate
            proc.send_signal(signal.SIGTERM)
        for proc in writers.procs.values():
            assert proc.wait(timeout=90) == 0
        wait_for_mirror(config, time.monotonic() + 180)
    finally:
        stop_processes([mirror, *writers.procs.values()])
    elapsed = time.monotonic() - began

    acks = read_ack_logs(writers.logs)
    entries = read_redis_records(redis_client, config.redis.stream)
    kafka = read_kafka_raw(stream.bootstrap, config.kafka.topic, PARTITIONS)
    in_redis = account(
        [r.value for _, r in entries], sent=acks.sent, acked=acks.acked, nowhere=acks.nowhere
    )
    in_kafka = account(
        [r.value for p in kafka for r in kafka[p]],
        sent=acks.sent,
        acked=[v for v, d in acks.acked.items() if d["o"] is not None],
        nowhere=acks.nowhere,
    )
    unacked_found = {
        r.value for _, r in entries if parse_tag(r.value) and r.value not in acks.acked
    }
    print(
        f"\nsoak (many writers): {elapsed:.0f}s, {dict(n)}, writers killed {writers.kills}, "
        f"{len(writers.logs)} writer processes; {len(acks.sent)} sent, {len(acks.acked)} "
        f"acknowledged, {len(acks.failed)} failed ({sum(acks.failed.values())} maybe somewhere), "
        f"{len(acks.refused)} refused at once; Redis holds {in_redis.found} "
        f"({len(unacked_found)} never acknowledged), Kafka {in_kafka.found}; "
        f"lost {len(in_redis.lost)}, doubled {len(in_redis.doubled) + len(in_kafka.doubled)}"
    )
    assert in_redis.ok, in_redis
    assert in_kafka.ok, in_kafka
    assert order_violations((r.partition, r.value) for _, r in entries) == []
    assert order_violations((p, r.value) for p in sorted(kafka) for r in kafka[p]) == []
    by_value = {r.value: (entry_id.decode(), r.partition) for entry_id, r in entries}
    at_offset = {(r.partition, r.offset): r.value for p in kafka for r in kafka[p]}
    for value, d in acks.acked.items():  # each Delivery names where the record is
        entry_id, partition = by_value[value]
        assert partition == d["p"] and d["e"] in (None, entry_id), (value, d)
        assert d["o"] is None or at_offset[(d["p"], d["o"])] == value, (value, d)
    # the soak did what it says
    assert n["cutovers to redis-primary"] >= 2 and n["rollbacks"] >= 2, n
    assert writers.kills >= 3 and n["writers killed in redis-primary"] >= 1, n
    assert len(acks.acked) > 1000
