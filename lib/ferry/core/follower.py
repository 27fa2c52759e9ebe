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
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ferry.config import StreamConfig
from ferry.core.ingest import MigrationKeys, migration_keys
from ferry.errors import FerryError
from ferry.redis.target import connect_redis
from ferry.services.servers import services_home

HEARTBEAT_TTL_S = 5.0
MIRROR_NOT_LIVE = 1  # exit status of `ferry mirror status|stop` when no mirror is live


@dataclass(frozen=True)
class FollowerInfo:
    pid: int
    host: str
    heartbeat_ms: int
    lag: int  # records Kafka holds beyond what the mirror read, all partitions
    partitions: dict[str, int] = field(default_factory=dict)  # the lag of each partition
    metrics: str | None = None  # HOST:PORT of its Prometheus endpoint, when it serves one

    def live(self, now_ms: int) -> bool:
        return now_ms - self.heartbeat_ms <= HEARTBEAT_TTL_S * 1000

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()


def follower_key(keys: MigrationKeys) -> str:
    return f"{keys.tag}:ferry:mirror"


def beat(
    client: redis.Redis, keys: MigrationKeys, lag: dict[int, int], metrics: str | None = None
) -> None:
    """Called by the follow mirror about once a second."""
    info = FollowerInfo(
        os.getpid(),
        socket.gethostname(),
        int(time.time() * 1000),
        sum(lag.values()),
        {str(p): v for p, v in sorted(lag.items())},
        metrics,
    )
    client.set(follower_key(keys), json.dumps(info.__dict__), ex=int(HEARTBEAT_TTL_S * 4))


def heartbeat_on_lag(config: StreamConfig, then=None, metrics: str | None = None):
    """The ``on_lag`` of a follow mirror: ``then(lag)`` (its metrics) first, then a
    heartbeat (with the lag) so the runbook and ``ferry mirror status`` can tell it is live."""
    keys = migration_keys(config)
    client: list = []

    def on_lag(values: dict[int, int]) -> None:
        if then is not None:
            then(values)
        try:  # a beat missed while Redis is away is the signal that something is wrong
            if not client:
                client.append(connect_redis(config))
            beat(client[0], keys, values, metrics)
        except (redis.RedisError, FerryError):
            pass

    return on_lag


def read_follower(config: StreamConfig) -> FollowerInfo | None:
    raw = connect_redis(config).get(follower_key(migration_keys(config)))
    if not raw:
        return None
    doc = json.loads(raw)
    known = FollowerInfo.__dataclass_fields__
    return FollowerInfo(**{k: v for k, v in doc.items() if k in known})


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
    batch and exits). False when none is live here or it did not exit within ``wait_s``
    (then its heartbeat record stays: it still runs)."""
    return stop_mirror(config, wait_s).stopped


def mirror_status(config: StreamConfig) -> dict:
    """What ``ferry mirror status`` shows: whether a follow mirror heartbeats for the stream,
    and its pid, host, heartbeat age and lag per partition (from its last heartbeat)."""
    info = read_follower(config)
    now_ms = int(time.time() * 1000)
    if info is None:
        return {"stream": config.name, "live": False}
    return {
        "stream": config.name,
        "live": info.live(now_ms),
        "pid": info.pid,
        "host": info.host,
        "local": info.local,
        "heartbeat_age_s": round((now_ms - info.heartbeat_ms) / 1000, 3),
        "lag": info.partitions,
        "lag_total": info.lag,
        "metrics": info.metrics,
    }


def format_status(status: dict) -> str:
    name = status["stream"]
    if "pid" not in status:
        return f"{name}: no live follow mirror (no heartbeat)"
    head = (
        (f"{name}: follow mirror live" if status["live"] else f"{name}: no live follow mirror")
        + f", pid {status['pid']} on {status['host']}"
        + ("" if status["local"] else " (elsewhere)")
    )
    lines = [head, f"  heartbeat {status['heartbeat_age_s']:.1f}s ago"]
    if status["metrics"]:
        lines.append(f"  metrics http://{status['metrics']}/metrics")
    lines += [f"  partition {p}: lag {v}" for p, v in status["lag"].items()]
    lines.append(f"  lag total {status['lag_total']}")
    return "\n".join(lines)


@dataclass(frozen=True)
class StopResult:
    stopped: bool
    message: str


def stop_mirror(config: StreamConfig, wait_s: float = 30.0) -> StopResult:
    """SIGTERM the follow mirror of the stream when it runs on this machine, and wait up to
    ``wait_s`` for it to exit (it finishes its batch first)."""
    info = live_follower(config)
    if info is None:
        return StopResult(
            False, f"{config.name}: no live follow mirror (no heartbeat); nothing to stop"
        )
    if not info.local:
        return StopResult(
            False,
            f"{config.name}: the follow mirror runs on {info.host} (pid {info.pid}), not here; "
            "stop it there (or stop its deployment)",
        )
    began = time.monotonic()
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return StopResult(False, f"{config.name}: pid {info.pid} is gone already")
    if not _wait_exit(info.pid, wait_s):
        return StopResult(
            False,
            f"{config.name}: sent SIGTERM to pid {info.pid}; it still runs after {wait_s:.0f}s",
        )
    connect_redis(config).delete(follower_key(migration_keys(config)))
    return StopResult(
        True,
        f"{config.name}: stopped the follow mirror (pid {info.pid}) in "
        f"{time.monotonic() - began:.1f}s",
    )


def _wait_exit(pid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _exited(pid):
            return True
        time.sleep(0.05)  # waiting for it to exit, bounded
    return False


def _exited(pid: int) -> bool:
    """Exited but not reaped yet (a zombie: its parent, a notebook kernel say, has not waited
    for it); our own child is reaped here."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"
