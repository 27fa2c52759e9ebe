"""``ferry lab`` (``make lab``): JupyterLab on the runbook's notebooks, against the embedded
services.

The services are started (and the demo topic seeded) when they are not already up; the ones
started here are stopped when JupyterLab exits, is interrupted (Ctrl-C) or is terminated
(SIGTERM, SIGHUP). Services that were already running are left running. As root, JupyterLab
gets ``--allow-root`` (it refuses to start otherwise).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ferry.extras import require


def jupyter_command(
    notebook_dir: Path,
    *,
    port: int | None = None,
    no_browser: bool = False,
    euid: int | None = None,
) -> list[str]:
    """The ``jupyter lab`` command line, run with this interpreter."""
    euid = os.geteuid() if euid is None else euid
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebook_dir}"]
    if euid == 0:
        cmd.append("--allow-root")
    if port is not None:
        cmd.append(f"--port={port}")
    if no_browser:
        cmd.append("--no-browser")
    return cmd


def run_foreground(cmd: Sequence[str]) -> int:
    """Run ``cmd`` until it exits and return its exit code (128 + signal when killed).

    Ctrl-C reaches the child from the terminal by itself (JupyterLab asks to confirm), so this
    process only ignores it; SIGTERM and SIGHUP are passed on to the child. Either way the
    caller's cleanup runs once the child has gone.
    """
    proc = subprocess.Popen(list(cmd))
    forward = {signal.SIGTERM, signal.SIGHUP}

    def on_signal(signum, _frame) -> None:
        if signum in forward and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, *forward)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # this process was interrupted some other way
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 128 - code if code < 0 else code


def seed_demo(bootstrap: str, records: int = 200_000, partitions: int = 6) -> str:
    from ferry.config import load_config
    from ferry.errors import KafkaError
    from ferry.runbook.plan import project_root
    from ferry.services.seed import seed_demo_topic

    config = load_config(project_root() / "runbook" / "streams" / "payments.yaml")
    try:
        n = seed_demo_topic(bootstrap, config.kafka.topic, records, partitions)
    except KafkaError as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
        return f"topic {config.kafka.topic!r} already exists; left as it is"
    return f"seeded {n} records into {config.kafka.topic!r}"


def run_lab(
    notebook_dir: Path | None = None,
    *,
    folder: Path | None = None,
    port: int | None = None,
    no_browser: bool = False,
    echo: Callable[[str], None] = print,
    run: Callable[[Sequence[str]], int] = run_foreground,
) -> int:
    require("lab", "lab")
    from ferry.runbook.plan import project_root
    from ferry.services import servers as services

    notebook_dir = notebook_dir or project_root() / "notebooks"
    started = None
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        status = services.service_status(folder)
        if status["kafka"] == "up" and status["redis"] == "up":
            echo(f"using the running services in {status['folder']} (left running on exit)")
            bootstrap = str(status["kafka_bootstrap"])
        else:
            started = services.start_services(folder)
            echo(f"started kafka {started.kafka_bootstrap}, redis {started.redis_url}")
            bootstrap = started.kafka_bootstrap
        echo(seed_demo(bootstrap))
        return run(jupyter_command(notebook_dir, port=port, no_browser=no_browser))
    finally:
        if started is not None:
            services.stop_services(Path(started.folder))
            echo("stopped the services ferry lab started")
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt(signum, _frame) -> None:
    """SIGTERM or SIGHUP while the services start or the topic is seeded: clean up as Ctrl-C."""
    raise KeyboardInterrupt


def cmd_lab(args: argparse.Namespace) -> int:
    return run_lab(
        Path(args.notebook_dir) if args.notebook_dir else None,
        folder=Path(args.folder).resolve() / "services" if args.folder else None,
        port=args.port,
        no_browser=args.no_browser,
    )
