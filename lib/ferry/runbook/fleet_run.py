"""The processes of ``ferry run --all``: a bounded pool of ``ferry run STREAM`` children.

Children start in their own session, so a terminal's Ctrl-C reaches only this process; it
then asks every running child to stop (SIGTERM: the child ends its step, archives what ran
and exits 130), starts no more, and reports what finished.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from ferry.runbook.fleet import (
    DEFAULT_PARALLEL,
    FleetPlan,
    StreamFile,
    StreamOutcome,
    build_child_command,
    choose_exit_status,
    describe_not_run,
    describe_refused,
    discover_streams,
    find_archive,
    format_progress,
    format_table,
    plan_fleet,
    read_outcome,
)

STOP_WAIT_S = 60.0  # after SIGTERM, how long a child may take to archive before SIGKILL


class _Pool:
    """The children running now, and whether the fleet is stopping (under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def stop_children(self, sig: signal.Signals) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.live.values():
                if proc.poll() is None:
                    proc.send_signal(sig)


def run_fleet(
    plan: FleetPlan,
    command_for: Callable[[StreamFile], list[str]],
    echo: Callable[[str], None] = print,
) -> tuple[list[StreamOutcome], bool]:
    """Run the plan; the outcomes in plan order (refused configs last) and whether it was
    interrupted (SIGINT or SIGTERM)."""
    pool = _Pool()
    total = len(plan.runs) + len(plan.refused)
    finished: dict[str, StreamOutcome] = {}
    for f in plan.refused:
        finished[str(f.path)] = outcome = describe_refused(f)
        echo(format_progress(len(finished), total, outcome))
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with ThreadPoolExecutor(plan.parallel, thread_name_prefix="ferry-run") as workers:
            futures = {
                workers.submit(_run_child, f, command_for(f), pool, echo): f for f in plan.runs
            }
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished[str(futures[future].path)] = outcome = future.result()
                        echo(format_progress(len(finished), total, outcome))
            except KeyboardInterrupt:
                interrupted = True
                echo(f"interrupted: stopping {len(pool.live)} running stream(s)")
                pool.stop_children(signal.SIGTERM)
                try:
                    _, late = wait(pending, timeout=STOP_WAIT_S)
                except KeyboardInterrupt:
                    late = pending
                if late:
                    pool.stop_children(signal.SIGKILL)
                for future, f in futures.items():
                    finished.setdefault(str(f.path), future.result())
    finally:
        signal.signal(signal.SIGTERM, previous)
    order = [*plan.runs, *plan.refused]
    return [finished.get(str(f.path)) or describe_not_run(f) for f in order], interrupted


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run_child(f: StreamFile, command: list[str], pool: _Pool, echo) -> StreamOutcome:
    name = f.name or f.path.stem
    with pool.lock:
        if pool.stopping:
            return describe_not_run(f)
        began = time.monotonic()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the fleet, which stops the children
        )
        pool.live[str(f.path)] = proc
    echo(f"{name}: started (pid {proc.pid}, config {f.path})")
    stdout, stderr = proc.communicate()
    with pool.lock:
        pool.live.pop(str(f.path), None)
        stopped = pool.stopping
    seconds = time.monotonic() - began
    manifest = _load_manifest(find_archive(stdout))
    return read_outcome(name, proc.returncode, stdout, stderr, manifest, seconds, stopped)


def _load_manifest(archive: str) -> dict | None:
    if not archive:
        return None
    try:
        return json.loads((Path(archive) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def run_all_streams(
    streams: str | None,
    parallel: int | None,
    start: str | None,
    only: str | None,
    audit: str | None,
    params: list[str] | None,
) -> int:
    """``ferry run --all``: each config of the streams folder in its own ``ferry run``; a
    progress line as each ends, then the table. Returns the exit status (``choose_exit_status``)."""
    from ferry.config import STREAMS_DIR

    def say(line: str) -> None:
        print(line, flush=True)

    folder = Path(streams) if streams else STREAMS_DIR
    plan = plan_fleet(discover_streams(folder), parallel or DEFAULT_PARALLEL)
    refused = f"; {len(plan.refused)} config(s) refused" if plan.refused else ""
    say(f"{len(plan.runs)} stream(s) from {folder}, {plan.parallel} at a time{refused}")
    outcomes, interrupted = run_fleet(
        plan, lambda f: build_child_command(f.path, start, only, audit, params), echo=say
    )
    say(format_table(outcomes))
    status = choose_exit_status(outcomes)
    if interrupted:
        print("ferry: interrupted; rerun to resume from the frontier", file=sys.stderr)
    elif status:
        failed = sum(o.result != "passed" for o in outcomes)
        print(f"ferry: error: {failed} of {len(outcomes)} stream(s) did not pass", file=sys.stderr)
    return status
