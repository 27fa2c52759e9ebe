"""``ferry run --all``: every stream config of a folder through its own ``ferry run``, a few at
a time, then one combined status table.

Each stream runs in a child process, ``ferry run PATH`` (what an operator types for one
stream), so one stream's crashed kernel or killed run cannot take the others down, and each
writes its own archive. The plan (which streams, in which order, how many at once), reading a
child's outcome, the table and the exit status are pure functions; ``run_fleet`` starts the
processes.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ferry.config import load_config
from ferry.errors import ConfigError, UsageError
from ferry.exitcodes import ExitCode
from ferry.runbook.plan import Step, plan_run

DEFAULT_PARALLEL = 2
RESULTS = ("passed", "failed", "interrupted", "not-run")


@dataclass(frozen=True)
class StreamFile:
    """One config file of the streams folder: its stream name, or why it does not parse."""

    path: Path
    name: str | None
    error: str | None = None


@dataclass(frozen=True)
class FleetPlan:
    runs: tuple[StreamFile, ...]  # in the order they start
    refused: tuple[StreamFile, ...]  # each with its error: reported, never run
    parallel: int  # how many run at once


@dataclass(frozen=True)
class StreamOutcome:
    stream: str  # the config's name (the file's stem when it does not parse)
    result: str  # one of RESULTS
    status: int  # what its `ferry run` exited with (0 when passed)
    seconds: float = 0.0
    step: str = ""  # the failed step, "id-name"
    cause: str = ""  # one line
    archive: str = ""


def check_run_options(
    stream: str | None,
    run_all: bool,
    parallel: int | None,
    streams_dir: str | None,
    start: str | None,
    only: str | None,
    steps: list[Step],
) -> None:
    """Refuse the ``ferry run`` option combinations that mean nothing, naming them."""
    if run_all and stream:
        raise UsageError(f"run: give a STREAM ({stream}) or --all, not both")
    if not run_all and not stream:
        raise UsageError("run: give a STREAM, or --all for every config in runbook/streams/")
    if not run_all and (parallel is not None or streams_dir is not None):
        given = "--parallel" if parallel is not None else "--streams"
        raise UsageError(f"run {stream}: {given} goes with --all only")
    if parallel is not None and parallel < 1:
        raise UsageError(f"run --all --parallel {parallel}: run at least 1 stream at a time")
    if run_all:
        on_demand = [s.label for s in plan_run(steps, start, only) if s.on_demand]
        if on_demand:
            raise UsageError(
                f"run --all --only {only}: {on_demand[0]} is decided stream by stream; "
                f"run 'ferry run STREAM --only {only}'"
            )


def discover_streams(folder: Path) -> list[StreamFile]:
    """Every ``*.yaml``/``*.yml`` of ``folder``, loaded as ``ferry run`` loads it."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder of stream configs")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no stream configs (*.yaml) in it")
    found = []
    for path in files:
        try:
            found.append(StreamFile(path, load_config(path).name))
        except ConfigError as exc:
            found.append(StreamFile(path, None, " ".join(str(exc).split())))
    return found


def plan_fleet(files: list[StreamFile], parallel: int = DEFAULT_PARALLEL) -> FleetPlan:
    """Runs in stream-name order, at most ``parallel`` at once. A file that does not parse,
    and every file sharing its stream name with another (two configs of one migration would
    write the same keys and archive folder), is refused."""
    if parallel < 1:
        raise UsageError(f"run --all --parallel {parallel}: run at least 1 stream at a time")
    names = Counter(f.name for f in files if f.error is None)
    runs, refused = [], []
    for f in files:
        if f.error is None and names[f.name] > 1:
            others = ", ".join(o.path.name for o in files if o.name == f.name and o is not f)
            f = StreamFile(
                f.path, f.name, f"{f.path}: name: {f.name!r} is also the name in {others}"
            )
        (runs if f.error is None else refused).append(f)
    runs.sort(key=lambda f: (f.name, str(f.path)))
    return FleetPlan(tuple(runs), tuple(refused), min(parallel, max(1, len(runs))))


def build_child_command(
    path: Path,
    start: str | None = None,
    only: str | None = None,
    audit: str | None = None,
    params: list[str] | None = None,
) -> list[str]:
    """The ``ferry run`` of one stream, with this interpreter."""
    argv = [sys.executable, "-m", "ferry.cli", "run", str(path)]
    for option, value in (("--from", start), ("--only", only), ("--audit", audit)):
        if value is not None:
            argv += [option, value]
    for item in params or ():
        argv += ["-p", item]
    return argv


def find_archive(stdout: str) -> str:
    """The archive folder a ``ferry run`` printed (``archive: PATH``), or ""."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("archive: ")]
    return lines[-1][len("archive: ") :].strip() if lines else ""


def read_outcome(
    stream: str,
    returncode: int,
    stdout: str,
    stderr: str,
    manifest: dict | None,
    seconds: float,
    stopped: bool = False,
) -> StreamOutcome:
    """One table row from what a child left: its status, output and archive's manifest.
    ``stopped``: ferry run --all asked it to stop (Ctrl-C, SIGTERM)."""
    archive = find_archive(stdout)
    seconds = round(seconds, 1)
    if returncode == 0:
        return StreamOutcome(stream, "passed", 0, seconds, archive=archive)
    steps = (manifest or {}).get("metadata", {}).get("steps", [])
    failed = next((s for s in steps if s.get("outcome") == "failed"), None)
    step = f"{failed['id']}-{failed['name']}" if failed else ""
    cause = " ".join(str(failed.get("message", "")).split()) if failed else ""
    if not cause:
        errors = [ln for ln in stderr.splitlines() if ln.strip()]
        marked = [ln for ln in errors if ln.startswith("ferry: error: ")]
        if marked:
            cause = marked[-1][len("ferry: error: ") :]
        elif returncode < 0:
            cause = f"killed by {signal.Signals(-returncode).name}"
        else:
            cause = errors[-1].strip() if errors else f"exited with status {returncode}"
    if stopped or returncode == ExitCode.INTERRUPTED:
        return StreamOutcome(
            stream, "interrupted", ExitCode.INTERRUPTED, seconds, step, cause, archive
        )
    status = returncode if 0 < returncode < ExitCode.INTERRUPTED else ExitCode.ERROR
    return StreamOutcome(stream, "failed", status, seconds, step, cause, archive)


def describe_refused(f: StreamFile) -> StreamOutcome:
    return StreamOutcome(
        f.name or f.path.stem, "failed", ExitCode.CONFIG, step="config", cause=f.error or ""
    )


def describe_not_run(f: StreamFile) -> StreamOutcome:
    return StreamOutcome(f.name or f.path.stem, "not-run", ExitCode.INTERRUPTED)


def choose_exit_status(outcomes: list[StreamOutcome]) -> int:
    """0 when every stream passed; 130 when the run was interrupted (a stream interrupted or
    not run); else the highest status of the streams that did not pass: 6 (integrity) over
    5 (a gate failed) over 4 (unreachable) over 3 (a config) over 1 (anything else)."""
    if all(o.result == "passed" for o in outcomes):
        return ExitCode.OK
    if any(o.result in ("interrupted", "not-run") for o in outcomes):
        return ExitCode.INTERRUPTED
    return max(o.status for o in outcomes if o.result != "passed")


def format_progress(done: int, total: int, o: StreamOutcome) -> str:
    line = f"[{done}/{total}] {o.stream} {o.result} in {o.seconds:.1f}s"
    if o.step or o.cause:
        line += f" at {o.step or '?'}: {o.cause}"
    return line + (f" (archive: {o.archive})" if o.archive else "")


def format_table(outcomes: list[StreamOutcome]) -> str:
    """One row per stream: result, seconds, the failed step, the archive, the one-line cause."""
    head = ("stream", "result", "seconds", "step", "archive", "cause")
    rows = [
        (o.stream, o.result, f"{o.seconds:.1f}" if o.result != "not-run" else "-",
         o.step or "-", o.archive or "-", o.cause or "-")
        for o in outcomes
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in (head, *rows)
    )
