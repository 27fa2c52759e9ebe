"""The long-lived follow mirror (``ferry backfill STREAM --follow``) as the runbook sees it:
it heartbeats into ``{name}:ferry:mirror`` so a step can tell a live one, and the runbook can
start one on this machine (the embedded, single-machine case) and stop it.

In production the follow mirror is a deployment of its own; the runbook only checks that
its heartbeat is fresh.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from ferry.config import StreamConfig
from ferry.errors import FerryError
from ferry.ingest import MigrationKeys, migration_keys
from ferry.redis_target import connect_redis
from ferry.services import services_home

HEARTBEAT_TTL_S = 5.0


@dataclass(frozen=True)
class FollowerInfo:
    pid: int
    host: str
    heartbeat_ms: int
    lag: int  # records Kafka holds beyond what the mirror read, all partitions

    def live(self, now_ms: int) -> bool:
        return now_ms - self.heartbeat_ms <= HEARTBEAT_TTL_S * 1000


def follower_key(keys: MigrationKeys) -> str:
    return f"{keys.tag}:ferry:mirror"


def beat(client: redis.Redis, keys: MigrationKeys, lag: dict[int, int]) -> None:
    """Called by the follow mirror about once a second."""
    info = FollowerInfo(
        os.getpid(), socket.gethostname(), int(time.time() * 1000), sum(lag.values())
    )
    client.set(follower_key(keys), json.dumps(info.__dict__), ex=int(HEARTBEAT_TTL_S * 4))


def read_follower(config: StreamConfig) -> FollowerInfo | None:
    raw = connect_redis(config).get(follower_key(migration_keys(config)))
    return FollowerInfo(**json.loads(raw)) if raw else None


def live_follower(config: StreamConfig) -> FollowerInfo | None:
    info = read_follower(config)
    return info if info is not None and info.live(int(time.time() * 1000)) else None


def start_follower(config: StreamConfig, wait_s: float = 30.0) -> FollowerInfo:
    """Start ``ferry backfill --follow`` for this stream in the background (unless one is
    live already) and wait for its first heartbeat. Its log is under FERRY_HOME/logs."""
    found = live_follower(config)
    if found is not None:
        return found
    logs = services_home().parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"mirror-{config.name}.log"
    source = config.source if Path(config.source).is_file() else config.name
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferry.cli",
                "backfill",
                str(source),
                "--follow",
                "--no-progress",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the notebook's kernel
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = live_follower(config)
        if found is not None and found.pid == proc.pid:
            return found
        if proc.poll() is not None:
            raise FerryError(f"the follow mirror exited with status {proc.returncode}; see {log}")
        time.sleep(0.1)  # waiting for its first heartbeat, bounded
    proc.terminate()
    raise FerryError(f"the follow mirror sent no heartbeat within {wait_s:.0f}s; see {log}")


def stop_follower(config: StreamConfig, wait_s: float = 30.0) -> bool:
    """Stop the follow mirror this machine runs for the stream (SIGTERM: it finishes its
    batch and exits). False when none is live here."""
    info = live_follower(config)
    if info is None or info.host != socket.gethostname():
        return False
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)  # waiting for it to exit, bounded
    connect_redis(config).delete(follower_key(migration_keys(config)))
    return True
