"""Live-migration benchmark, measured side by side in one run on fresh embedded services:

- DualWriter send path (phase dual-write) vs a bare confluent Producer with the same
  settings: microseconds per send() call and the ratio (median of RUNS);
- time from Kafka delivery to visibility in Redis through the DualWriter (p50/p99), under
  the paced traffic, before the cutover starts;
- cutover pause under paced live traffic (default 5,000 msg/s): the pause from draining
  to redis-primary and the holds the writer's senders saw (p50/p99/max), over RUNS cutovers.
  The mirror follows in its own process (``ferry backfill --follow``), as in production.

Usage: python bench/live_bench.py [--records N] [--rate R] [--runs K]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

PARTITIONS = 8
VALUE = b"v" * 200


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def fresh_stream(base, bootstrap: str, name: str):
    from ferry.services.seed import create_topic

    create_topic(bootstrap, name, PARTITIONS)
    return replace(
        base,
        name=name,
        kafka=replace(base.kafka, topic=name),
        redis=replace(base.redis, stream="{" + name + "}:stream"),
    )


def arm_and_dual_write(config) -> None:
    from ferry.core.ingest import migration_keys
    from ferry.core.mirror import backfill
    from ferry.live.phases import start_dual_write
    from ferry.redis.target import connect_redis

    backfill(config, progress=False)  # arms the (empty) topic: frontiers at -1
    start_dual_write(connect_redis(config), migration_keys(config), "bench")


def send_path(config, bootstrap: str, records: int) -> tuple[float, float]:
    """(µs per DualWriter.send, µs per bare produce), sending as fast as the caller can."""
    from confluent_kafka import Producer

    import ferry

    writer = ferry.DualWriter(config, poll_interval_s=0.05)
    began = time.perf_counter()
    for i in range(records):
        writer.send(VALUE, key=b"%d" % i, partition=i % PARTITIONS)
    dual_us = (time.perf_counter() - began) / records * 1e6
    writer.flush()
    writer.close()
    bare = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    began = time.perf_counter()
    for i in range(records):
        while True:
            try:
                bare.produce(
                    config.kafka.topic, value=VALUE, key=b"%d" % i, partition=i % PARTITIONS
                )
                break
            except BufferError:
                bare.poll(0.01)
        bare.poll(0)
    bare_us = (time.perf_counter() - began) / records * 1e6
    bare.flush(30)
    return dual_us, bare_us


def cutover_under_load(config, rate: int, warmup_s: float = 2.0) -> dict:
    import signal
    import subprocess
    import sys

    import yaml

    import ferry
    from ferry.live.cutover import run_cutover

    stop = threading.Event()
    # the mirror runs as its own process, as it does in production
    config_file = Path(tempfile.mkdtemp()) / f"{config.name}.yaml"
    config_file.write_text(yaml.safe_dump({
        "name": config.name,
        "kafka": {"bootstrap_servers": config.kafka.bootstrap_servers, "topic": config.kafka.topic},
        "redis": {"url": config.redis.url, "stream": config.redis.stream},
    }))  # fmt: skip
    mirror = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ferry.cli",
            "backfill",
            str(config_file),
            "--follow",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
    )
    writer = ferry.DualWriter(config, poll_interval_s=0.05, hold_bound_s=5.0, track_latency=True)
    sent = [0]

    def traffic() -> None:
        began = time.monotonic()
        while not stop.is_set():
            writer.send(VALUE, key=b"%d" % sent[0])  # on into redis-primary after the switch
            sent[0] += 1
            ahead = sent[0] / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)  # pacing to the target rate

    producer = threading.Thread(target=traffic)
    producer.start()
    time.sleep(warmup_s)  # writers run before a cutover
    visibility = list(writer.visibility_ms or [])
    try:
        report = run_cutover(config, pause_bound_s=3.0)
    finally:
        stop.set()
        producer.join(timeout=30)
        writer.flush()
        writer.close()
        mirror.send_signal(signal.SIGTERM)
        mirror.wait(timeout=60)
    holds = writer.holds_ms
    return {
        "pause_ms": report.pause_ms,
        "stages_ms": report.stages_ms,
        "sent": sent[0],
        "holds": len(holds),
        "hold_p50_ms": pct(holds, 0.5),
        "hold_p99_ms": pct(holds, 0.99),
        "hold_max_ms": max(holds, default=0.0),
        "visibility": visibility,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only", choices=("send", "cutover"), help="measure one part (default: both)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ferry-live-bench-"))
    os.environ["FERRY_HOME"] = str(home)
    from ferry.config import parse_config
    from ferry.services.servers import embedded_services

    out: dict = {"records": args.records, "rate": args.rate, "runs": args.runs}
    with embedded_services(home / "services") as services:
        base = parse_config(
            {"name": "live", "kafka": {"bootstrap_servers": "embedded", "topic": "live"},
             "redis": {"url": "embedded"}},
            "<bench>",
        )  # fmt: skip
        dual, bare, visibility, cutovers = [], [], [], []
        for run in range(args.runs if args.only != "cutover" else 0):
            config = fresh_stream(base, services.kafka_bootstrap, f"send{run}")
            arm_and_dual_write(config)
            d, b = send_path(config, services.kafka_bootstrap, args.records)
            dual.append(d)
            bare.append(b)
            print(f"run {run + 1}: send {d:.2f} µs vs bare {b:.2f} µs")
        for run in range(args.runs if args.only != "send" else 0):
            config = fresh_stream(base, services.kafka_bootstrap, f"cut{run}")
            arm_and_dual_write(config)
            result = cutover_under_load(config, args.rate)
            visibility += result.pop("visibility")
            cutovers.append(result)
            print(
                f"cutover {run + 1}: pause {result['pause_ms']:.0f} ms, holds p99 {result['hold_p99_ms']:.0f} ms; "
                f"stages {result['stages_ms']}"
            )
    if dual:
        out["send_us_dualwriter"] = statistics.median(dual)
        out["send_us_bare"] = statistics.median(bare)
        out["send_ratio"] = out["send_us_dualwriter"] / out["send_us_bare"]
        print(
            f"\nsend path: DualWriter {out['send_us_dualwriter']:.2f} µs, "
            f"bare {out['send_us_bare']:.2f} µs, ratio {out['send_ratio']:.2f}"
        )
    if cutovers:
        out["visibility_ms"] = {
            "p50": pct(visibility, 0.5),
            "p99": pct(visibility, 0.99),
            "n": len(visibility),
        }
        pauses = [c["pause_ms"] for c in cutovers]
        holds_p99 = [c["hold_p99_ms"] for c in cutovers]
        out["cutover"] = {
            "pause_ms_median": statistics.median(pauses),
            "pause_ms_p99": pct(pauses, 0.99),
            "pause_ms_max": max(pauses),
            "hold_p99_ms_median": statistics.median(holds_p99),
            "hold_max_ms": max(c["hold_max_ms"] for c in cutovers),
            "runs": cutovers,
        }
        print(
            f"delivery -> Redis visibility: p50 {out['visibility_ms']['p50']:.1f} ms, "
            f"p99 {out['visibility_ms']['p99']:.1f} ms over {len(visibility)} records"
        )
        print(
            f"cutover at {args.rate} msg/s: pause median {out['cutover']['pause_ms_median']:.0f} ms "
            f"(max {max(pauses):.0f}); sender holds p99 "
            f"{out['cutover']['hold_p99_ms_median']:.0f} ms, max {out['cutover']['hold_max_ms']:.0f} ms"
        )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"live-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
