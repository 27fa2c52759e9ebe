"""``ferry demo`` stops everything it started when it is interrupted or killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def processes_with_env(entry: bytes) -> list[int]:
    """Live processes whose environment holds ``entry`` (they inherited the demo's)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if entry in environ and state != "Z":
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def started_by(home: Path) -> set[int]:
    """The demo's children (they inherit its FERRY_HOME) and the services it recorded."""
    pids = set(processes_with_env(f"FERRY_HOME={home}".encode()))
    state = home / "services" / "services.json"
    if state.exists():
        recorded = json.loads(state.read_text())
        pids |= {recorded["kafka_pid"], recorded["redis_pid"]}
    return {pid for pid in pids if alive(pid)}


def wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {needle!r} within {timeout_s}s; output: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_demo_leaves_nothing_running(tmp_path, how):
    home = tmp_path / "home"
    env = {**os.environ, "FERRY_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ferry.cli",
            "demo",
            "--records",
            "3000",
            "--partitions",
            "2",
            "--rate",
            "50",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # mid-run: services, traffic, consumer, the papermill kernel and, in 03, the mirror
        wait_for_line(demo, "[03-backfill] running", 300)
        started = started_by(home / "demo")
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in started}
        for part in (b"traffic", b"group-consumer"):
            assert any(part in c for c in commands.values()), (part, commands)
        assert len(started) >= 4, commands  # broker, redis, traffic, consumer (+ kernel)
        demo.send_signal(how)
        assert demo.wait(timeout=180) == 130
        stderr = demo.stderr.read()
        assert "demo interrupted" in stderr and "Traceback" not in stderr, stderr
        left = sorted(pid for pid in started | started_by(home / "demo") if alive(pid))
        assert left == [], f"still running after the demo ended: {left}"
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in started_by(home / "demo"):
            os.kill(pid, signal.SIGKILL)
