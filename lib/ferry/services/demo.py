"""``make demo``: a live migration of the demo stream on fresh embedded services.

History is seeded, then a traffic generator sends payment events through ``DualWriter`` at a
steady rate and a consumer group reads them, first from Kafka; the whole runbook runs while
both keep going (the consumer moves to Redis at step 05). At the end an independent check
reads every record of both sides and the consumer's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ferry.config import load_config
from ferry.core.follower import live_follower, read_follower, stop_follower
from ferry.errors import HandoverError
from ferry.exitcodes import ExitCode
from ferry.live.consumer import StreamConsumer
from ferry.live.live_check import LiveReport, check_live_migration
from ferry.runbook.audit import verify_archive
from ferry.runbook.plan import audit_home, ferry_home, project_root
from ferry.runbook.runner import format_steps, run_runbook
from ferry.services.seed import seed_demo_topic
from ferry.services.servers import embedded_services

DEMO_CONFIG = Path("runbook/streams/payments.yaml")
GROUP = "billing"
SETTLE_S = 60.0


def run_demo(records: int = 200_000, partitions: int = 6, rate: float = 2000.0) -> int:
    """Returns the exit status: 0 when every gate passed, the archive verifies and the
    independent check finds nothing lost, doubled or misordered; 5 when a step failed or the
    check found a problem; 130 when interrupted (SIGINT, SIGTERM or SIGHUP), after stopping
    everything it started."""
    root = project_root()
    config = load_config(root / DEMO_CONFIG)
    audit_root = audit_home()  # before FERRY_HOME points at the demo's own folder
    home = ferry_home() / "demo"
    os.environ["FERRY_HOME"] = str(home)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    consumer_log = logs / "consumer-processed.jsonl"
    consumer_log.unlink(missing_ok=True)
    children: list[subprocess.Popen] = []
    try:
        with _interrupt_on_termination(), embedded_services(home / "services") as services:
            broker = (
                "Tansu"
                if services.kafka_kind == "tansu"
                else f"Apache Kafka {services.kafka_version}"
            )
            print(f"services: kafka {services.kafka_bootstrap} ({broker}), {services.redis_kind} {services.redis_url}")  # fmt: skip
            seeded = seed_demo_topic(
                services.kafka_bootstrap, config.kafka.topic, records, partitions
            )
            print(f"seeded {seeded} payment events (awkward records included) into {config.kafka.topic!r}")  # fmt: skip
            traffic = _spawn(
                ["traffic", "payments", "--rate", str(rate)],
                logs / "traffic.json",
                logs / "traffic.log",
            )
            children.append(traffic)
            consumer = _spawn(
                ["group-consumer", "payments", GROUP, "--log", str(consumer_log)],
                None,
                logs / "consumer.log",
            )
            children.append(consumer)
            print(
                f"live: {rate:.0f} msg/s through DualWriter; consumer group {GROUP!r} reading "
                f"Kafka (their logs: {logs})"
            )
            try:
                # the group's consumer reads with auto.offset.reset=earliest: step 05 says so
                parameters = {"05": {"reset": "earliest"}}
                result = run_runbook("payments", audit_root=audit_root, parameters=parameters)
            finally:
                counts = _stop(traffic, logs / "traffic.json")
                _settle(config)
                _stop(consumer, None)
                _stop_mirror(config)
            report = check_live_migration(config, counts.get("sent", 0), consumer_log)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        for child in children:
            _stop(child, None, wait_s=10)
        print(
            "\ndemo interrupted: the traffic generator, the consumer, the follow mirror and the "
            "embedded services it started are stopped; the migration did not complete",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    problems = verify_archive(result.folder)
    print()
    print(format_steps(result))
    cutover = _read(result.folder / "cutover.json") or {}
    (home / "live-report.json").write_text(
        json.dumps({**report.as_json(), "cutover": cutover, "traffic": counts}, indent=2)
    )
    if not result.ok:
        failed = result.failed
        print(
            f"\nthe migration did not complete: step {failed.id} {failed.name} failed "
            f"({failed.message}); the steps after it did not run. The check below covers "
            "what was copied up to then."
        )
    _print_report(report, cutover, counts)
    print(f"archive: {result.folder} ({'verified' if not problems else 'BROKEN: ' + '; '.join(problems)})")  # fmt: skip
    ok = result.ok and not problems and report.ok
    print("demo OK" if ok else "demo FAILED")
    if ok:
        return ExitCode.OK
    return ExitCode.GATE_FAILED if not result.ok else ExitCode.INTEGRITY


@contextlib.contextmanager
def _interrupt_on_termination():
    """SIGTERM and SIGHUP end the demo the way Ctrl-C does, so its clean-up runs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_mirror(config) -> None:
    """Stop the follow mirror step 03 started here, live or not (a stalled one too)."""
    info = read_follower(config)
    if info is not None and info.local:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGTERM)
    stop_follower(config)


def _spawn(args: list[str], out: Path | None, log: Path) -> subprocess.Popen:
    """A ferry verb in the background: its final JSON line to ``out``, its log to ``log``
    (the demo's own output stays the runbook's progress)."""
    command = [sys.executable, "-m", "ferry.cli", *args]
    with open(out or os.devnull, "w") as stdout, open(log, "a") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr)  # the child keeps its own


def _stop(proc: subprocess.Popen, out: Path | None, wait_s: float = 120.0) -> dict:
    """SIGTERM, then SIGKILL if it has not exited within ``wait_s``; its last JSON line."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if out is None or not out.exists():
        return {}
    text = out.read_text().strip()
    return json.loads(text.splitlines()[-1]) if text else {}


def _settle(config) -> None:
    """After the producers stop: the follow mirror passes the last shadows and the consumer
    group drains the stream (bounded)."""
    from ferry.live.cutover import mirror_lag

    try:
        reader = StreamConsumer(config, GROUP)
    except HandoverError:  # not translated (a step failed): nothing to drain in Redis
        reader = None
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        lag = mirror_lag(config) if live_follower(config) else {}
        backlog = 0
        if reader is not None:
            backlog = reader.backlog()
        if not any(lag.values()) and backlog == 0:
            return
        time.sleep(0.2)  # waiting on the mirror and the consumer, bounded by SETTLE_S
    print(
        f"after {SETTLE_S:.0f}s the follow mirror still lags {sum(lag.values())} records and "
        f"group {GROUP!r} has {backlog} entries to read: the check below counts what arrived"
    )


def _print_report(report: LiveReport, cutover: dict, counts: dict) -> None:
    s = report.sides
    print(
        f"\nindependent check of every record: Kafka {s.kafka:,} (shadows included), "
        f"Redis {s.redis:,} ({s.redis_first:,} written Redis-first), "
        f"retired by retention {report.retired_by_retention:,}"
    )
    print(
        f"  produced live {report.produced_live:,}, found {report.live_found:,}, lost {report.lost_live}; "
        f"lost {s.lost}, duplicated {s.duplicated}, misordered {s.misordered}, "
        f"mismatched {s.mismatched}, extra {s.extra}"
    )
    if report.consumer is not None:
        c = report.consumer
        print(
            f"  consumer group {GROUP!r}: {c.from_kafka:,} from Kafka + {c.from_redis:,} from Redis; "
            f"hand-over duplicates {c.duplicates}, gaps {c.gaps}"
        )
    holds = counts.get("hold_ms") or []
    if cutover:
        print(
            f"  cutover pause {cutover.get('pause_ms', 0):.0f} ms; sends held during it: "
            f"{len(holds)}, p50 {_pct(holds, 0.5):.0f} ms, p99 {_pct(holds, 0.99):.0f} ms, "
            f"max {max(holds, default=0):.0f} ms"
        )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
