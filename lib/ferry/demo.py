"""``make demo``: seed a payments topic on fresh embedded services, backfill, validate, report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ferry.config import load_config
from ferry.mirror import backfill
from ferry.seed import seed_demo_topic
from ferry.services import embedded_services
from ferry.validate import validate_stream

DEMO_CONFIG = Path("runbook/streams/payments.yaml")


def run_demo(records: int = 200_000, partitions: int = 6) -> int:
    """Returns the exit status: 0 when every invariant holds."""
    config = load_config(DEMO_CONFIG)
    home = Path(".ferry/demo").resolve()
    os.environ["FERRY_HOME"] = str(home)
    with embedded_services(home / "services") as services:
        print(
            f"services: kafka {services.kafka_bootstrap}, {services.redis_kind} {services.redis_url}"
        )
        produced = seed_demo_topic(
            services.kafka_bootstrap, config.kafka.topic, records, partitions
        )
        print(f"seeded {produced} records into {config.kafka.topic!r} ({partitions} partitions)")
        summary = backfill(config)
        print("backfill", json.dumps(summary.as_json()))
        report = validate_stream(config)
        totals = report.as_json()
        print(
            f"validate: kafka {totals['kafka_count']}, redis {totals['redis_count']}, "
            f"missing {totals['missing']}, duplicates {totals['duplicates']}, "
            f"misordered {totals['out_of_order']}, mismatched {totals['mismatched']}, "
            f"extra {totals['extra']}, unexplained gaps {totals['unexplained_gaps']}"
        )
        print("demo OK" if report.ok else "demo FAILED:\n  " + "\n  ".join(report.failures()))
        return 0 if report.ok else 1
