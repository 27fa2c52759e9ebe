"""Mirror-worker benchmark: one pre-filled topic copied by 1, 2 and 4 worker processes
(``ferry backfill --workers``, one Kafka consumer group), into a 3-primary local Redis Cluster
and into a standalone Redis, side by side in one run; the single-process mirror (``ferry
backfill``, assign() with two writer threads) is the baseline row.

Every run is a fresh migration (new stream name) of the same topic, timed from the workers'
start until every partition's frontier in Redis reached the topic's end (the workers then
exit by themselves: ``--workers`` without ``--follow``). Reported per configuration (median
of --runs): msg/s end to end (process start included: group join and arming), msg/s from the
first write, the ratio to 1 worker, and CPU seconds: per worker process (getrusage of each
child, interpreter start included), all workers together, the Redis server(s) and the
broker; the workers' CPU microseconds per record (the per-core figure: a core running only
workers would copy 1e6 / that many records a second); and the cores the copy got (all that
CPU over the wall time: below 2 on this machine means other work had the rest).

Three targets: a standalone Redis, the cluster with the default layout (every key of a
migration on the tag ``{name}``: one slot, one shard) and the cluster with the ``spread``
layout (a tag per partition: the partitions spread over the 3 shards; the busiest shard's
share of the Redis CPU is reported).

Usage: python bench/workers_bench.py [--records 1000000] [--runs 3] [--workers 1,2,4]
Writes bench/results/workers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

PARTITIONS = 12
VALUE_BYTES = 200
TICKS = os.sysconf("SC_CLK_TCK")


def seed(bootstrap: str, topic: str, records: int) -> None:
    from ferry.services.seed import BASE_TS_MS, SeedRecord, create_topic, produce_records

    create_topic(bootstrap, topic, PARTITIONS)
    value = bytes(range(256))[:VALUE_BYTES]
    produce_records(
        bootstrap,
        topic,
        (
            SeedRecord(i % PARTITIONS, b"k%08d" % i, value, (), BASE_TS_MS + i // 100)
            for i in range(records)
        ),
    )


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a running process (the broker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def redis_cpu_s(clients: list[redis.Redis]) -> float:
    total = 0.0
    for c in clients:
        info = c.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def frontier_sum(client, keys) -> int:
    from ferry.core.ingest import read_state

    return sum(f + 1 for f in read_state(client, keys)[1].values())


def redis_cpu_per_node(clients: list[redis.Redis]) -> list[float]:
    return [redis_cpu_s([c]) for c in clients]


def one_run(target: dict, nodes, reader, workers: int, bootstrap: str, topic: str, records, tmp):
    """One fresh migration of the topic by ``workers`` processes (0: the single mirror)."""
    name = f"wb{time.time_ns() % 10**10}"
    doc = {
        "name": name,
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "client": "confluent"},
        "redis": {**target, "stream": f"{{{name}}}:events"},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cli = [sys.executable, "-m", "ferry.cli", "--log-level", "WARNING", "backfill", str(path)]
    cli += ["--no-progress"] + (["--workers"] if workers else [])
    from ferry.core.ingest import MigrationKeys

    keys = MigrationKeys(f"{{{name}}}", doc["redis"]["stream"], target.get("layout", "merged"))
    redis_before = redis_cpu_per_node(nodes)
    started = time.monotonic()
    procs = [
        subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(max(1, workers))
    ]
    first_write = done_at = None
    while done_at is None:
        copied = frontier_sum(reader, keys)
        now = time.monotonic()
        if first_write is None and copied > 0:
            first_write = now
        if copied >= records:
            done_at = now
        elif all(p.poll() is not None for p in procs):
            errors = [p.stderr.read().decode()[-800:] for p in procs]
            raise SystemExit(f"workers exited at {copied}/{records}: {errors}")
        time.sleep(0.02)  # sampling the frontiers; the timing resolution
    cpu = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed: {p.stderr.read().decode()[-800:]}")
        cpu.append(usage.ru_utime + usage.ru_stime)
    per_node = [a - b for a, b in zip(redis_cpu_per_node(nodes), redis_before, strict=True)]
    for node in nodes:
        node.flushall()
    return {
        "seconds": done_at - started,
        "copy_seconds": done_at - (first_write or started),
        "worker_cpu_s": cpu,
        "redis_cpu_s": sum(per_node),
        "busiest_shard_share": max(per_node) / sum(per_node) if sum(per_node) else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--kafka", default="apache:3.7")
    parser.add_argument("--targets", default="", help="standalone,cluster-3,spread-3 (all)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    from ferry.services.servers import start_redis_cluster, start_services, stop_services

    tmp = Path(tempfile.mkdtemp(prefix="ferry-workers-bench-"))
    services = start_services(tmp / "services", kafka=args.kafka)
    cluster = None
    try:
        cluster = start_redis_cluster(
            tmp / "cluster", server=(services.redis_kind, services.redis_binary)
        )
        topic = "workers-bench"
        t = time.monotonic()
        seed(services.kafka_bootstrap, topic, args.records)
        print(f"seeded {args.records:,} records of {VALUE_BYTES} B over {PARTITIONS} partitions "
              f"in {time.monotonic() - t:.0f}s ({args.kafka}, {services.redis_kind}, "
              f"{os.cpu_count()} cores)", flush=True)  # fmt: skip
        from redis.cluster import RedisCluster

        targets = {
            "standalone": (
                {"url": services.redis_url},
                [redis.Redis.from_url(services.redis_url)],
                redis.Redis.from_url(services.redis_url),
            ),
            "cluster-3": (
                {"cluster": {"addresses": cluster.addresses}},
                [redis.Redis(host="127.0.0.1", port=p) for p in cluster.ports],
                RedisCluster(host="127.0.0.1", port=cluster.ports[0]),
            ),
            "spread-3": (
                {"cluster": {"addresses": cluster.addresses}, "layout": "spread"},
                [redis.Redis(host="127.0.0.1", port=p) for p in cluster.ports],
                RedisCluster(host="127.0.0.1", port=cluster.ports[0]),
            ),
        }
        if args.targets:
            targets = {k: v for k, v in targets.items() if k in args.targets.split(",")}
        rows = []
        for target_name, (target, nodes, reader) in targets.items():
            for workers in [0, *counts]:
                runs = []
                for _ in range(args.runs):
                    broker_before = proc_cpu_s(services.kafka_pid)
                    run = one_run(
                        target, nodes, reader, workers, services.kafka_bootstrap, topic,
                        args.records, tmp,
                    )  # fmt: skip
                    run["broker_cpu_s"] = proc_cpu_s(services.kafka_pid) - broker_before
                    runs.append(run)
                    label = f"{workers} workers" if workers else "mirror"
                    print(f"  {target_name:10} {label:10} {args.records / run['seconds']:>9,.0f} "
                          f"msg/s  ({run['seconds']:.1f}s)", flush=True)  # fmt: skip
                rows.append(summarize(target_name, workers, runs, args.records))
        print_table(rows)
        out = ROOT / "bench" / "results" / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        meta = {"records": args.records, "partitions": PARTITIONS, "value_bytes": VALUE_BYTES,
                "kafka": args.kafka, "redis": services.redis_kind, "cores": os.cpu_count(),
                "runs": args.runs, "load_avg_end": os.getloadavg()}  # fmt: skip
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"\nwritten {out.relative_to(ROOT)}")
    finally:
        if cluster is not None:
            cluster.stop()
        stop_services(tmp / "services")


def summarize(target: str, workers: int, runs: list[dict], records: int) -> dict:
    med = statistics.median
    total_cpu = [sum(r["worker_cpu_s"]) for r in runs]
    return {
        "target": target,
        "workers": workers,
        "msg_per_s": med(records / r["seconds"] for r in runs),
        "copy_msg_per_s": med(records / r["copy_seconds"] for r in runs),
        "seconds": [round(r["seconds"], 2) for r in runs],
        "cpu_s_per_worker": med(t / max(1, workers) for t in total_cpu),
        "cpu_s_workers": med(total_cpu),
        "cpu_us_per_record": med(total_cpu) / records * 1e6,
        "redis_cpu_s": med(r["redis_cpu_s"] for r in runs),
        "busiest_shard_share": med(r["busiest_shard_share"] for r in runs),
        "broker_cpu_s": med(r["broker_cpu_s"] for r in runs),
        # how much of the machine the copy got: workers + Redis + broker CPU over wall time
        "cores_used": med(
            (sum(r["worker_cpu_s"]) + r["redis_cpu_s"] + r["broker_cpu_s"]) / r["seconds"]
            for r in runs
        ),
    }


def print_table(rows: list[dict]) -> None:
    print()
    head = ("target", "procs", "msg/s", "x 1w", "copy msg/s", "cpu s/proc", "cpu s all",
            "us/rec", "redis cpu", "busiest", "broker cpu", "cores used")  # fmt: skip
    print("  ".join(f"{h:>10}" for h in head))
    base = {r["target"]: r["msg_per_s"] for r in rows if r["workers"] == 1}
    for r in rows:
        procs = f"{r['workers']} wkr" if r["workers"] else "mirror"
        ratio = r["msg_per_s"] / base[r["target"]] if base.get(r["target"]) else 0.0
        cells = (r["target"], procs, f"{r['msg_per_s']:,.0f}", f"{ratio:.2f}",
                 f"{r['copy_msg_per_s']:,.0f}", f"{r['cpu_s_per_worker']:.1f}",
                 f"{r['cpu_s_workers']:.1f}", f"{r['cpu_us_per_record']:.1f}",
                 f"{r['redis_cpu_s']:.1f}", f"{r['busiest_shard_share']:.0%}",
                 f"{r['broker_cpu_s']:.1f}",
                 f"{r['cores_used']:.2f}")  # fmt: skip
        print("  ".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    main()
