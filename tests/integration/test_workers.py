"""Mirror workers in a Kafka consumer group, on real servers: workers die, join, and wake up
after their partitions moved, under live traffic; an independent read of both sides finds
nothing lost, doubled or misordered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from confluent_kafka import ConsumerGroupState, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from ferry.core.ingest import migration_keys, read_state
from ferry.core.reconcile import reconcile
from ferry.kafka.groups import read_committed_groups
from ferry.services.seed import BASE_TS_MS, payment_events

from .helpers import ferry_cli, read_kafka_raw, read_redis_records, wait_for_mirror, wait_until

pytestmark = pytest.mark.kafka_side  # the brokers' group protocol: once per broker

PARTITIONS = 8
HISTORY = 40_000
SESSION_MS = 6_000  # Kafka's group.min.session.timeout.ms


class Traffic:
    """A producer thread writing ~RATE records/s over every partition until stopped."""

    RATE = 2_000

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        self.stop, self.sent, self.error = threading.Event(), 0, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20})
        try:
            while not self.stop.is_set():
                for _ in range(self.RATE // 20):
                    i = self.sent
                    producer.produce(
                        self.topic,
                        key=b"live-%d" % i,
                        value=b"x" * 150 + b"%d" % i,
                        partition=i % PARTITIONS,
                        headers=[("n", b"%d" % i)],
                        timestamp=BASE_TS_MS + HISTORY + i,
                    )
                    self.sent += 1
                producer.poll(0)
                self.stop.wait(0.05)  # pacing the traffic, not waiting for anything
            assert producer.flush(60) == 0
        except BaseException as exc:  # handed to close()
            self.error = exc

    def close(self):
        self.stop.set()
        self.thread.join(timeout=90)
        assert self.error is None, self.error


class Workers:
    """``ferry backfill --follow --workers`` processes, each with its own log."""

    def __init__(self, config_file, folder):
        self.config_file, self.folder = config_file, folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        out = open(self.folder / f"{name}.out", "wb")  # noqa: SIM115
        cmd = ferry_cli(
            "backfill", self.config_file, "--follow", "--workers", "--no-progress",
            "--session-timeout", SESSION_MS,
        )  # fmt: skip
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=log)
        return self.procs[name]

    def holding(self, name: str) -> list[int]:
        """The partitions the worker last said it holds (its ``... now [0, 3]`` log line)."""
        said = re.findall(
            r": (?:assigned|revoked|lost) \[[\d, ]*\], now \[([\d, ]*)\]", self.log(name)
        )
        return [int(p) for p in said[-1].split(",") if p.strip()] if said else []

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped one cannot take SIGTERM
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            codes[name] = proc.wait(timeout=60)
        return codes


def group_members(admin: AdminClient, group: str) -> dict[str, set[int]] | None:
    """client id -> partitions as the group coordinator describes a stable group; {} while
    it rebalances or cannot say; None where the broker describes groups without their members
    (Tansu 0.6)."""
    try:
        (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
        description = future.result(timeout=15)
    except KafkaException:  # NOT_COORDINATOR and the like while the group settles
        return {}
    if description.state != ConsumerGroupState.STABLE:
        return {}
    if not description.members:
        return None
    return {
        m.client_id: {tp.partition for tp in m.assignment.topic_partitions}
        for m in description.members
    }


def held_by(admin, group: str, workers: Workers, names: list[str]) -> bool:
    """The workers ``names`` together hold every partition, each once, as each worker says it
    was assigned (its log), and, where the broker describes members, exactly they are the
    group's members with those partitions."""
    said = {n: workers.holding(n) for n in names}
    held = [p for parts in said.values() for p in parts]
    if sorted(held) != list(range(PARTITIONS)):
        return False
    members = group_members(admin, group)
    if members is None:
        return True
    by_pid = {cid.rsplit("-", 1)[-1]: parts for cid, parts in members.items()}
    return by_pid == {str(workers.procs[n].pid): set(said[n]) for n in names}


def copied(redis_client, keys) -> int:
    _, frontiers = read_state(redis_client, keys)
    return sum(f + 1 for f in frontiers.values())


def test_workers_die_join_and_wake_without_losing_or_doubling(make_stream, redis_client, tmp_path):
    workers_die_join_and_wake(make_stream, redis_client, tmp_path)


@pytest.fixture
def cluster_redis(request, services):
    from .cluster import cluster_client, shared_cluster

    client = cluster_client(shared_cluster(request, services))
    yield client
    client.close()


@pytest.fixture
def make_cluster_stream(services, cluster_redis, request):
    from .cluster import shared_cluster
    from .conftest import stream_factory

    target = {"cluster": {"addresses": shared_cluster(request, services).addresses}}
    yield from stream_factory(services, cluster_redis, request, target, prefix="wc")


@pytest.mark.redis_side
def test_workers_on_a_3_primary_cluster(make_cluster_stream, cluster_redis, tmp_path):
    """The same scenario with the stream on a local 3-primary Redis Cluster, in the spread
    layout: each partition on its own slot, so the workers write to every shard."""
    workers_die_join_and_wake(make_cluster_stream, cluster_redis, tmp_path, layout="spread")


def workers_die_join_and_wake(make_stream, redis_client, tmp_path, layout="merged"):
    stream = make_stream(
        list(payment_events(HISTORY, PARTITIONS)),
        partitions=PARTITIONS,
        client="confluent",
        layout=layout,
    )
    config = stream.config
    keys = migration_keys(config)
    group = f"ferry-mirror.{config.name}"
    config_file = stream.write_config(tmp_path / "stream.yaml", batch_size=500)
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})
    workers = Workers(config_file, tmp_path)
    traffic = Traffic(stream.bootstrap, config.kafka.topic)

    def assigned_to(*names):
        wait_until(
            lambda: held_by(admin, group, workers, list(names)),
            f"the group held by exactly {names}",
            timeout_s=60,
        )

    try:
        for name in ("w1", "w2", "w3"):
            workers.start(name)
        assigned_to("w1", "w2", "w3")
        wait_until(lambda: copied(redis_client, keys) >= HISTORY // 4, "a quarter copied", 60)

        workers.procs["w1"].kill()  # kill -9 mid-run: its partitions go to the others
        workers.procs["w1"].wait(timeout=30)
        assigned_to("w2", "w3")

        workers.start("w4")
        assigned_to("w2", "w3", "w4")
        w2_had = workers.holding("w2")

        os.kill(workers.procs["w2"].pid, signal.SIGSTOP)  # w2 freezes mid-copy
        assigned_to("w3", "w4")
        _, frontier_then = read_state(redis_client, keys)  # w2's last writes are in by now
        # its partitions moved and the others copied on past where w2 stopped
        wait_until(
            lambda: all(read_state(redis_client, keys)[1][p] > frontier_then[p] for p in w2_had),
            f"partitions {sorted(w2_had)} moving on without w2",
            timeout_s=60,
        )
        os.kill(workers.procs["w2"].pid, signal.SIGCONT)  # wakes with a stale assignment
        assigned_to("w2", "w3", "w4")
        wait_until(lambda: " lost [" in workers.log("w2"), "w2 noticing it lost them", 30)
    finally:
        traffic.close()

    try:
        wait_for_mirror(config, deadline=time.monotonic() + 90)
    finally:
        codes = workers.stop_all()
    assert codes == {"w1": -signal.SIGKILL, "w2": 0, "w3": 0, "w4": 0}, {
        n: workers.log(n)[-2000:] for n in codes
    }

    # the independent check: both sides read raw, every record compared
    kafka = read_kafka_raw(stream.bootstrap, config.kafka.topic, PARTITIONS)
    assert sum(len(v) for v in kafka.values()) == HISTORY + traffic.sent
    entries = [
        e
        for k in keys.streams(list(range(PARTITIONS)))
        for e in read_redis_records(redis_client, k)
    ]
    ordered = [r for p in sorted(kafka) for r in kafka[p]]
    result = reconcile(ordered, entries)
    assert (result.lost, result.duplicated, result.misordered) == (0, 0, 0), result
    assert result.ok and result.redis == result.kafka, result
    # the Redis frontier is the authority: the workers' group committed nothing to Kafka
    assert group not in read_committed_groups(config, range(PARTITIONS))


def test_two_groups_on_one_migration_write_nothing_twice(make_stream, redis_client, tmp_path):
    """Two workers that each believe they hold every partition (two groups on one migration:
    the worst case of a worker that missed a rebalance) race through the same history. The
    frontier fences them: every record is appended once in all, and they notice each other
    (a frontier beyond what they read) and read on from it. Without --follow each exits
    once the whole migration reached the ends it saw at its start."""
    stream = make_stream(list(payment_events(HISTORY, PARTITIONS)), partitions=PARTITIONS)
    config_file = stream.write_config(tmp_path / "stream.yaml", batch_size=200)
    procs = [
        subprocess.Popen(
            ferry_cli("backfill", config_file, "--group", group, "--no-progress"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for group in ("team-a", "team-b")
    ]
    outs = [proc.communicate(timeout=180) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in outs]
    summaries = [json.loads(out) for out, _ in outs]
    assert all(s["complete"] for s in summaries)
    assert sum(s["records"] for s in summaries) == HISTORY  # appended once, by one or other
    assert sum(s["overtaken"] for s in summaries) >= 1, summaries
    keys = migration_keys(stream.config)
    kafka = read_kafka_raw(stream.bootstrap, stream.config.kafka.topic, PARTITIONS)
    ordered = [r for p in sorted(kafka) for r in kafka[p]]
    result = reconcile(ordered, read_redis_records(redis_client, keys.stream))
    assert result.ok and result.redis == HISTORY, result


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 takes any session timeout")
def test_a_group_the_broker_refuses_is_one_line_and_exit_1(make_stream, tmp_path):
    """A session timeout below the broker's group.min.session.timeout.ms: the broker refuses
    the member; the worker stops with one line (exit 1), having written nothing."""
    stream = make_stream(list(payment_events(100, 2)), partitions=2)
    config_file = stream.write_config(tmp_path / "stream.yaml")
    proc = subprocess.run(
        ferry_cli("backfill", config_file, "--workers", "--session-timeout", 1000),
        capture_output=True,
        timeout=120,
    )
    err = proc.stderr.decode()
    lines = [line for line in err.splitlines() if line.startswith("ferry: error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "consumer group" in lines[0] and "session timeout" in lines[0].lower(), lines[0]
