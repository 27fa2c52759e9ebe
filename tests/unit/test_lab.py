"""``ferry lab``: --allow-root as root, and the services it started are stopped however
JupyterLab ends; services that were already running are left alone."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ferry.services import lab
from ferry.services import servers as services

from .test_runbook import ROOT


def test_root_gets_allow_root_and_nobody_else_does(tmp_path):
    as_root = lab.jupyter_command(tmp_path, euid=0)
    assert as_root[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--allow-root" in as_root
    assert f"--notebook-dir={tmp_path}" in as_root
    assert "--allow-root" not in lab.jupyter_command(tmp_path, euid=1000)
    assert lab.jupyter_command(tmp_path, port=9999, no_browser=True, euid=1000)[-2:] == [
        "--port=9999",
        "--no-browser",
    ]


@pytest.fixture
def fake_services(monkeypatch, tmp_path):
    calls = {"started": 0, "stopped": [], "up": False}

    def status(folder=None):
        up = "up" if calls["up"] else "down"
        return {"kafka": up, "redis": up, "kafka_bootstrap": "127.0.0.1:1", "folder": "x"}

    def start(folder=None):
        calls["started"] += 1
        return SimpleNamespace(
            kafka_bootstrap="127.0.0.1:1", redis_url="redis://x", folder=str(tmp_path)
        )

    monkeypatch.setattr(services, "service_status", status)
    monkeypatch.setattr(services, "start_services", start)
    monkeypatch.setattr(services, "stop_services", lambda f=None: calls["stopped"].append(f))
    monkeypatch.setattr(lab, "seed_demo", lambda bootstrap: "seeded")
    return calls


def test_services_it_started_are_stopped_when_jupyterlab_exits(fake_services, tmp_path):
    ran = []
    code = lab.run_lab(tmp_path, echo=lambda _: None, run=lambda cmd: ran.append(cmd) or 0)
    assert code == 0 and len(ran) == 1
    assert fake_services["started"] == 1
    assert fake_services["stopped"] == [Path(tmp_path)]


def test_services_it_started_are_stopped_when_interrupted(fake_services, tmp_path):
    def interrupted(cmd):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lab.run_lab(tmp_path, echo=lambda _: None, run=interrupted)
    assert fake_services["stopped"] == [Path(tmp_path)]


def test_services_already_running_are_left_running(fake_services, tmp_path):
    fake_services["up"] = True
    assert lab.run_lab(tmp_path, echo=lambda _: None, run=lambda cmd: 3) == 3
    assert fake_services["started"] == 0 and fake_services["stopped"] == []


def test_sigterm_reaches_jupyterlab_and_lab_returns_once_it_has_gone():
    child = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    parent = (
        "import sys; from ferry.services.lab import run_foreground; "
        f"sys.exit(run_foreground([sys.executable, '-c', {child!r}]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        child_pid = int(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
