"""Independent readers of both sides, used to check what the mirror did."""

from __future__ import annotations

import subprocess
import threading
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import redis
from confluent_kafka import Consumer, TopicPartition

from ferry.core.entries import KafkaRecord, entry_to_record
from ferry.core.mirror import backfill
from ferry.services.seed import SeedRecord
from ferry.services.servers import _spawn, _wait_ready, free_port, probe_redis


def read_redis_records(client: redis.Redis, stream: str) -> list[tuple[bytes, KafkaRecord]]:
    """Every entry of the stream (ID, record), in stream order, with one plain XRANGE."""
    return [(entry_id, entry_to_record(fields)) for entry_id, fields in client.xrange(stream)]


def by_partition(records) -> dict[int, list[KafkaRecord]]:
    out: dict[int, list[KafkaRecord]] = defaultdict(list)
    for r in records:
        out[r.partition].append(r)
    return dict(out)


def expected_records(seeded: list[SeedRecord]) -> dict[int, list[KafkaRecord]]:
    """What Kafka must hold: one producer, in order, so offsets are 0.. per partition."""
    out: dict[int, list[KafkaRecord]] = defaultdict(list)
    for s in seeded:
        part = out[s.partition]
        part.append(KafkaRecord(s.partition, len(part), s.timestamp_ms, s.key, s.value, s.headers))
    return dict(out)


def read_kafka_raw(bootstrap: str, topic: str, partitions: int) -> dict[int, list[KafkaRecord]]:
    """Read every partition to the high watermark it had when the read began, with a bare
    confluent consumer. An end-of-partition event counts only at or past that mark: the
    broker can report one early (CI saw Apache Kafka 3.7 cut a partition 16 records short)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 5,
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
        }
    )
    high = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
        for p in range(partitions)
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[int, list[KafkaRecord]] = defaultdict(list)
    ended: set[int] = set()
    try:
        for _ in range(10_000):
            if len(ended) == partitions:
                break
            for m in consumer.consume(10_000, 0.5):
                if m.error():
                    assert m.error().code() == -191, m.error()
                    if m.offset() >= high[m.partition()]:
                        ended.add(m.partition())
                    continue
                out[m.partition()].append(
                    KafkaRecord(
                        m.partition(),
                        m.offset(),
                        m.timestamp()[1],
                        m.key(),
                        m.value(),
                        tuple(m.headers() or ()),
                    )
                )
        assert len(ended) == partitions, f"only partitions {ended} reached their end {high}"
    finally:
        consumer.close()
    return dict(out)


def ferry_cli(*args: object) -> list[str]:
    """The command line that runs ``ferry`` with this interpreter."""
    import sys

    return [sys.executable, "-m", "ferry.cli", *map(str, args)]


def wait_for_mirror(config, deadline: float) -> None:
    """Until the mirror has copied everything Kafka holds; fails past ``deadline`` (monotonic)."""
    import threading
    import time

    from ferry.live.cutover import mirror_lag

    while any(lag := mirror_lag(config).values()):
        assert time.monotonic() < deadline, f"mirror still behind: {list(lag)}"
        threading.Event().wait(0.05)  # polling the lag, bounded by the deadline


def stop_processes(procs) -> None:
    """SIGTERM whatever still runs and wait for it."""
    import signal

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@contextmanager
def dual_writing(client, config):
    """The migration backfilled and in dual-write, with a follow mirror and a DualWriter
    running (both closed on the way out): where every live cutover test starts."""
    from ferry import DualWriter
    from ferry.core.ingest import migration_keys
    from ferry.live.phases import start_dual_write

    backfill(config, progress=False)
    start_dual_write(client, migration_keys(config), "test")
    mirror = Mirror(config)
    writer = DualWriter(config, poll_interval_s=0.05)
    try:
        yield writer
    finally:
        writer.close()
        mirror.close()


class Mirror:
    """A following mirror in a thread."""

    def __init__(self, config):
        self.stop = threading.Event()
        self.result = {}
        self.thread = threading.Thread(target=self._run, args=(config,))
        self.thread.start()

    def _run(self, config):
        try:
            self.result["summary"] = backfill(
                config, follow=True, progress=False, should_stop=self.stop.is_set
            )
        except BaseException as exc:  # handed to close(): a mirror that died fails its test
            self.result["error"] = exc

    def close(self):
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        if "error" in self.result:
            raise AssertionError(f"the following mirror died: {self.result['error']!r}")


def backfill_cli_error(
    doc: dict, folder, env: dict | None = None, status: int = 1
) -> tuple[str, str]:
    """Run ``ferry backfill`` on the config ``doc`` and require an expected failure: exit
    ``status`` (1: any other error; see ferry.exitcodes), exactly one ``ferry: error:`` line,
    no traceback. Returns (that line, all of stderr)."""
    import os
    import subprocess

    import yaml

    path = folder / "stream.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        ferry_cli("backfill", path, "--no-progress"),
        capture_output=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )
    err = proc.stderr.decode()
    lines = [line for line in err.splitlines() if line.startswith("ferry: error:")]
    assert proc.returncode == status, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0], err


def wait_until(predicate, what: str, timeout_s: float = 60.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        done.wait(0.05)  # polling a condition, bounded by timeout_s
    raise AssertionError(f"timed out waiting for {what}")


class OwnRedis:
    """A Redis server of the stack's kind on its own port and folder, with an AOF fsynced on
    every write, so a kill loses nothing and a restart brings the same data back."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.folder), "--save", "", "--daemonize", "no"]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += ["--maxmemory-policy", "noeviction"]
        self.proc = _spawn(args, self.folder / "redis.log")
        _wait_ready(
            "own redis", self.proc, lambda: probe_redis(self.url), self.folder / "redis.log"
        )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def start_authorizing_kafka(folder: Path, version: str, secure, authorizer):
    """An Apache Kafka KRaft node that enforces ACLs (``authorizer``: an
    :class:`ferry.services.apache_kafka.Authorizer`), with ``secure``'s SASL_SSL listener beside the
    plaintext one; returns (process, plaintext bootstrap)."""
    from ferry.services.apache_kafka import KafkaListeners, broker_command
    from ferry.services.servers import APACHE_READY_TIMEOUT_S, probe_kafka

    ports = KafkaListeners(plaintext=free_port(), controller=free_port(), sasl_ssl=secure.port)
    log = folder / "kafka.log"
    proc = _spawn(broker_command(folder, version, ports, secure=secure, authorizer=authorizer), log)
    _wait_ready(
        f"Kafka broker (Apache Kafka {version}, with an authorizer)",
        proc,
        lambda: probe_kafka("127.0.0.1", ports.plaintext),
        log,
        timeout=APACHE_READY_TIMEOUT_S,
    )
    return proc, f"127.0.0.1:{ports.plaintext}"
