"""What the runbook notebooks share: set-up, the evidence folder, and the gate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.errors import GateFailed
from ferry.runbook.plan import ferry_home, project_root


@dataclass(frozen=True)
class Check:
    """One line of a gate or a pass/fail table."""

    name: str
    ok: bool
    detail: str = ""


def setup_notebook(run_dir: str, stream: str) -> Path:
    """Render charts as SVG (so archived HTML needs no script from anywhere), work from the
    project root, and return the run's evidence folder (created): ``run_dir`` when
    ``ferry run`` passes one, else ``$FERRY_HOME/scratch/<stream>`` for interactive use."""
    import os

    import altair as alt
    import pandas as pd

    alt.renderers.enable("svg")
    alt.data_transformers.disable_max_rows()
    pd.set_option("display.max_columns", 30)
    root = project_root()
    os.chdir(root)
    folder = Path(run_dir) if run_dir else ferry_home() / "scratch" / Path(stream).stem
    folder = folder if folder.is_absolute() else root / folder
    folder.mkdir(parents=True, exist_ok=True)
    # client libraries' messages (librdkafka, kafka-python, Great Expectations, warnings) go
    # to a log beside the evidence, not into the notebook as error boxes
    from ferry.logs import route_client_logs_to

    route_client_logs_to(folder / "clients.log")
    return folder


def checks_table(checks: list[Check]):
    """The checks as a DataFrame with a PASS/FAIL column."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"check": c.name, "result": "PASS" if c.ok else "FAIL", "detail": c.detail}
            for c in checks
        ]
    )


def save_evidence(folder: Path, name: str, data: Any) -> Path:
    """Write JSON evidence a later step (or an auditor) reads."""
    path = folder / name
    path.write_text(json.dumps(data, indent=2, default=str, sort_keys=True))
    return path


def load_evidence(folder: Path, name: str) -> Any | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def gate(step: str, checks: list[Check]) -> str:
    """Raise GateFailed naming every failed check; return a one-line pass message."""
    failed = [c for c in checks if not c.ok]
    if failed:
        raise GateFailed(
            f"step {step}: "
            + "; ".join(f"{c.name}: {c.detail}" if c.detail else c.name for c in failed)
        )
    return f"step {step}: gate passed ({len(checks)} checks)"


class ProgressLog:
    """Collects (seconds, records written) from the mirror's ``on_batch`` callback."""

    def __init__(self) -> None:
        import threading
        import time

        self._clock = time.monotonic
        self._start = self._clock()
        self._lock = threading.Lock()
        self._records = 0
        self.points: list[tuple[float, int]] = [(0.0, 0)]

    def on_batch(self, partition: int, frontier: int, appended: int) -> None:
        with self._lock:
            self._records += appended
            now = self._clock() - self._start
            if now - self.points[-1][0] >= 0.05:  # one point per 50 ms is plenty for a chart
                self.points.append((now, self._records))

    def frame(self):
        import pandas as pd

        with self._lock:
            points = [*self.points, (self._clock() - self._start, self._records)]
        return pd.DataFrame(points, columns=["seconds", "records"])


def final_report(folder: Path):
    """Key figures from every step's evidence in the run folder, one row each."""
    import pandas as pd

    rows = []
    sizing = load_evidence(folder, "sizing.json")
    if sizing:
        s, i = sizing["sizing"], sizing["inputs"]
        rows.append(
            (
                "00 capacity sizing",
                f"{i['bytes_per_entry']:.0f} B/entry, {s['memory_gb']:.2f} GB, "
                f"{s['shards']} shard(s), {s['nodes']} node(s), {s['monthly_cost']:.0f}/month",
            )
        )
    preflight = load_evidence(folder, "preflight.json")
    if preflight:
        failed = [c["name"] for c in preflight["checks"] if not c["ok"]]
        rows.append(
            ("01 preflight", f"{len(preflight['checks'])} checks, failed: {failed or 'none'}")
        )
    backfill = load_evidence(folder, "backfill.json")
    if backfill:
        rows.append(
            (
                "03 backfill",
                f"{backfill['records']} records, {backfill['msg_per_s']:,.0f} msg/s, "
                f"complete: {backfill['complete']}",
            )
        )
    dual = load_evidence(folder, "dual-write.json")
    if dual:
        c, w = dual["canaries"], dual["window"]
        rows.append(
            (
                "02 dual-write",
                f"{len(dual['live_writers'])} writer(s) acknowledged epoch {dual['epoch']}; "
                f"canaries sent {c['sent']}, in Redis {c['in_redis']}, identical in Kafka "
                f"{c['identical_in_kafka']}; window {w['seconds']:.0f}s, {w['records']} records, "
                f"divergence {w['divergence']}",
            )
        )
    validation = load_evidence(folder, "validation.json")
    if validation:
        sample = load_evidence(folder, "row-sample.json") or {}
        rows.append(
            (
                "04 validation",
                f"kafka {validation['kafka_count']}, redis {validation['redis_count']}, "
                f"missing {validation['missing']}, duplicates {validation['duplicates']}, "
                f"misordered {validation['out_of_order']}, mismatched {validation['mismatched']}"
                + (
                    f"; row sample {sample['distinct']} distinct records over partitions "
                    f"{sample['partitions']}, digest mismatches {sample['mismatched']}"
                    if sample
                    else ""
                ),
            )
        )
    cutover = load_evidence(folder, "cutover.json")
    if cutover:
        groups = ", ".join(f"{g['group']} from {g['start_id']}" for g in cutover.get("groups", []))
        writers = cutover.get("writer_pause_ms") or {}
        rows.append(
            (
                "05 cutover",
                f"pause {cutover['pause_ms']:.0f} ms (longest writer hold "
                f"{max(writers.values(), default=0):.0f} ms, {len(writers)} writer(s)), "
                f"epoch {cutover['epoch']}, attempt {cutover.get('attempts', 1)}, lag at the switch "
                f"{sum(cutover.get('lag_at_switch', {}).values())}; groups handed over: "
                f"{groups or 'none'}",
            )
        )
    retention = load_evidence(folder, "retention.json")
    if retention:
        rows.append(
            (
                "06 retention",
                f"removed {retention['removed']}, {retention['length_after']} entries left, "
                f"lag threshold {retention['lag_threshold']}",
            )
        )
    pd.set_option("display.max_colwidth", None)  # the report is evidence: never cut with "..."
    return pd.DataFrame(rows, columns=["step", "result"])
