"""``make demo``: the whole runbook for the demo stream on fresh embedded services."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ferry.audit import verify_archive
from ferry.config import load_config
from ferry.runbook import project_root
from ferry.runner import run_runbook
from ferry.seed import seed_demo_topic
from ferry.services import embedded_services

DEMO_CONFIG = Path("runbook/streams/payments.yaml")


def run_demo(records: int = 200_000, partitions: int = 6) -> int:
    """Returns the exit status: 0 when every gate passed and the archive verifies."""
    root = project_root()
    config = load_config(root / DEMO_CONFIG)
    home = root / ".ferry" / "demo"
    os.environ["FERRY_HOME"] = str(home)
    with embedded_services(home / "services") as services:
        print(
            f"services: kafka {services.kafka_bootstrap} (Tansu), {services.redis_kind} {services.redis_url}"
        )
        produced = seed_demo_topic(
            services.kafka_bootstrap, config.kafka.topic, records, partitions
        )
        print(
            f"seeded {produced} payment events (awkward records included) into {config.kafka.topic!r}"
        )
        result = run_runbook("payments")
    problems = verify_archive(result.folder)
    print()
    for step in result.steps:
        print(
            f"  {step.id} {step.name:<18} {step.outcome:<13} {step.seconds:>6.1f}s  {step.message}"
        )
    summary = _read(result.folder / "validation.json")
    if summary:
        print(
            f"\nvalidation: kafka {summary['kafka_count']}, redis {summary['redis_count']}, "
            f"missing {summary['missing']}, duplicates {summary['duplicates']}, "
            f"misordered {summary['out_of_order']}, mismatched {summary['mismatched']}"
        )
    backfill = _read(result.folder / "backfill.json")
    if backfill:
        print(f"backfill: {backfill['records']} records at {backfill['msg_per_s']:,.0f} msg/s")
    print(
        f"archive: {result.folder} ({'verified' if not problems else 'BROKEN: ' + '; '.join(problems)})"
    )
    ok = result.ok and not problems
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
