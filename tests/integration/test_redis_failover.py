"""A Redis primary fails over to its replica under a following mirror: a primary, a replica
and a Sentinel of the stack's kind on loopback; the config names the Sentinel and the
service; the primary is killed while records keep arriving in Kafka. The mirror follows the
failover, resumes from the frontier the new primary holds (re-copying from Kafka whatever
the old primary acknowledged but never replicated) and ends exact."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from ferry.config import parse_config
from ferry.services.seed import produce_records
from ferry.services.servers import _spawn, _wait_ready, free_port, probe_redis

from .helpers import Mirror, wait_until
from .test_redis_faults import assert_exact, frontier_total, seed

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server

SERVICE = "ferry-primary"


class SentinelSet:
    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.ports = {"primary": free_port(), "replica": free_port(), "sentinel": free_port()}
        self.procs: dict[str, subprocess.Popen] = {}

    def _server(self, role: str, *extra: str) -> None:
        folder = self.folder / role
        folder.mkdir()
        args = [self.binary, "--port", str(self.ports[role]), "--bind", "127.0.0.1"]
        args += ["--dir", str(folder), "--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--maxmemory-policy", "noeviction", *extra]
        self.procs[role] = _spawn(args, folder / "server.log")
        url = f"redis://127.0.0.1:{self.ports[role]}"
        _wait_ready(role, self.procs[role], lambda: probe_redis(url), folder / "server.log")

    def start(self) -> None:
        self._server("primary")
        self._server("replica", "--replicaof", "127.0.0.1", str(self.ports["primary"]))
        conf = self.folder / "sentinel.conf"  # Sentinel rewrites its own config file
        conf.write_text(
            f"port {self.ports['sentinel']}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['primary']} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.procs["sentinel"] = _spawn(
            [self.binary, str(conf), "--sentinel"], self.folder / "sentinel.log"
        )
        wait_until(lambda: self.replica_known(), "the Sentinel to see the replica")

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.ports["sentinel"], decode_responses=True)

    def replica_known(self) -> bool:
        try:
            replicas = self.sentinel().sentinel_slaves(SERVICE)
        except redis.RedisError:
            return False
        return any(r.get("master-link-status") == "ok" for r in replicas)

    def primary_port(self) -> int | None:
        try:
            return int(self.sentinel().sentinel_get_master_addr_by_name(SERVICE)[1])
        except (redis.RedisError, TypeError):
            return None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def sentinel_set(services, tmp_path):
    servers = SentinelSet(services.redis_binary, tmp_path)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def test_follow_mirror_rides_a_failover_and_ends_exact(make_stream, sentinel_set, services):
    stream = make_stream(seed(1000, 2), partitions=2)
    config = sentinel_config(stream, sentinel_set)
    primary = redis.Redis(port=sentinel_set.ports["primary"])
    mirror = Mirror(config)
    try:
        wait_until(lambda: frontier_total(primary, config) == 1000, "the history")
        produce_records(services.kafka_bootstrap, config.kafka.topic, seed(300, 2, start=1000))
        sentinel_set.procs["primary"].kill()  # while records are arriving
        produce_records(services.kafka_bootstrap, config.kafka.topic, seed(300, 2, start=1300))
        new_port = sentinel_set.ports["replica"]
        wait_until(lambda: sentinel_set.primary_port() == new_port, "the failover", 90)
        promoted = redis.Redis(port=new_port)
        wait_until(
            lambda: frontier_total(promoted, config) == 1600, "the mirror on the new primary"
        )
        assert mirror.thread.is_alive()
    finally:
        mirror.close()
    assert_exact(config, promoted, services.kafka_bootstrap, 2)


def test_a_phase_change_waits_for_the_replicas(make_stream, sentinel_set):
    import os
    import signal

    from ferry.core.ingest import migration_keys
    from ferry.errors import ReplicationError
    from ferry.live.phases import DRAINING, DUAL_WRITE, read_phase, set_phase

    stream = make_stream(seed(10, 1), partitions=1)
    keys = migration_keys(stream.config)
    primary = redis.Redis(port=sentinel_set.ports["primary"])
    replica = redis.Redis(port=sentinel_set.ports["replica"])
    set_phase(primary, keys, DUAL_WRITE)
    assert read_phase(replica, keys).phase == DUAL_WRITE  # there before set_phase returned
    replica_pid = sentinel_set.procs["replica"].pid
    os.kill(replica_pid, signal.SIGSTOP)  # a replica that stopped acknowledging
    try:
        with pytest.raises(ReplicationError, match=r"phase change to draining .* 0 of 1 replicas"):
            set_phase(primary, keys, DRAINING)
    finally:
        os.kill(replica_pid, signal.SIGCONT)
    assert read_phase(primary, keys).phase == DRAINING  # in effect on the primary, as it says


def sentinel_config(stream, sentinel_set):
    doc = {
        **stream.doc,
        "redis": {
            "sentinel": {
                "addresses": [f"127.0.0.1:{sentinel_set.ports['sentinel']}"],
                "service": SERVICE,
            }
        },
    }
    return parse_config(doc, "<sentinel>")


def test_dual_write_traffic_rides_a_failover_and_ends_exact(make_stream, sentinel_set, services):
    from ferry.core.ingest import migration_keys
    from ferry.core.mirror import backfill
    from ferry.live.phases import start_dual_write

    stream = make_stream(seed(500, 2), partitions=2)
    config = sentinel_config(stream, sentinel_set)
    backfill(config, progress=False)  # history first, as the runbook does
    start_dual_write(redis.Redis(port=sentinel_set.ports["primary"]), migration_keys(config))
    mirror = Mirror(config)
    try:
        new_port, sent = _traffic_through_a_failover(config, sentinel_set)
        promoted = redis.Redis(port=new_port)
        wait_until(lambda: frontier_total(promoted, config) == 500 + sent, "the mirror")
    finally:
        mirror.close()
    assert_exact(config, promoted, services.kafka_bootstrap, 2)


def _traffic_through_a_failover(config, sentinel_set) -> tuple[int, int]:
    """A DualWriter sends on while the primary is killed and Sentinel promotes the
    replica; returns the new primary's port and how many records were sent."""
    import threading

    from ferry.live.dualwriter import DualWriter

    writer = DualWriter(config, poll_interval_s=0.05)
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            writer.send(b"live %d" % i, key=b"k%d" % (i % 20))
            i += 1
            stop.wait(0.002)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_until(lambda: writer.counts.written_redis >= 50, "dual-writes landing in Redis")
        sentinel_set.procs["primary"].kill()
        at_kill = writer.counts.sent
        new_port = sentinel_set.ports["replica"]
        wait_until(lambda: sentinel_set.primary_port() == new_port, "the failover", 90)
        wait_until(lambda: writer.counts.sent >= at_kill + 300, "traffic after the failover")
    finally:
        stop.set()
        sender.join(timeout=30)
        writer.flush()
        writer.close()
    print("writer counts:", writer.counts)
    assert writer.counts.failures == 0 and writer.counts.delivered == writer.counts.sent
    return new_port, writer.counts.sent
