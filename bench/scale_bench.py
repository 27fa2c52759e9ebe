"""Scale benchmark: backfill, validation and hand-over at 1M (or 10M) entries, old code beside new.

Seeds RECORDS records of VALUE_BYTES bytes over PARTITIONS partitions on fresh embedded
services (``--kafka apache:3.7`` by default: Tansu slows down at 10M) with ferry's own seed
functions, then measures, every call in a fresh interpreter (a child process) so its peak RSS
is its own:

- the backfill (msg/s): today's code into stream ``scale`` and, with ``--baseline COMMIT``,
  that commit's code (checked out in a temporary git worktree) into stream ``scale-base``;
- validation of ``scale`` (entries/s, peak RSS), today's and the baseline's, alternating;
- the hand-over of a group committed half-way through every partition (seconds, Redis calls,
  peak RSS, and which method today's code used), today's and the baseline's. With
  ``--layout spread`` (or ``per-partition``; no baseline) the hand-over makes a group per
  partition stream; it is measured as today's code runs it (a seek per partition) and again
  with the seek switched off (a scan of every partition stream), side by side.

Peak RSS is getrusage's ru_maxrss minus the RSS the child had after its imports, plus the
peak of its own child process if it started one (validation reads the stream in one). Redis calls
are INFO commandstats on the server, before and after (commands run inside scripts count too).
Prints a table (medians of ``--runs``, ratios) and writes bench/results/scale-<time>.json.

Usage: python bench/scale_bench.py [--records N] [--runs K] [--baseline COMMIT] [--kafka K]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTITIONS = 8
VALUE_BYTES = 100
ROOT = Path(__file__).resolve().parent.parent


def seed(bootstrap: str, topic: str, records: int, value_bytes: int) -> None:
    from ferry.services.seed import BASE_TS_MS, SeedRecord, create_topic, produce_records

    create_topic(bootstrap, topic, PARTITIONS)
    value = (bytes(range(256)) * (value_bytes // 256 + 1))[:value_bytes]
    produce_records(
        bootstrap,
        topic,
        (
            SeedRecord(i % PARTITIONS, b"k%08d" % i, value, (), BASE_TS_MS + i // 100)
            for i in range(records)
        ),
    )


def baseline_tree(commit: str) -> Path:
    """A detached worktree of ``commit`` (removed at the end of the run)."""
    path = Path(tempfile.mkdtemp(prefix=f"ferry-{commit[:12]}-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
        check=True,
        capture_output=True,
    )
    return path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_mb() -> float:
    """The largest peak RSS of the call's own child processes (validation reads the stream in
    one), 0 without any."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_config(name: str = "scale", batch_size: int | None = None, layout: str = "merged"):
    from ferry.config import parse_config

    doc = {
        "name": name,
        "kafka": {"bootstrap_servers": "embedded", "topic": "scale"},
        "redis": {"url": "embedded", "layout": layout},
    }
    if batch_size is not None:
        doc["batch_size"] = batch_size
    return parse_config(doc, "<bench>")


def child(spec: dict) -> None:
    """One measured call in a fresh interpreter (its ``lib`` first on the path)."""
    sys.path.insert(0, spec["lib"])
    import ferry.handover as handover  # the flat names import in both layouts
    import ferry.kafka_python  # noqa: F401 - imported before the baseline figure
    import ferry.mirror as mirror
    import ferry.validate as validate

    assert Path(validate.__file__).is_relative_to(spec["lib"]), validate.__file__
    config = bench_config(
        spec.get("name", "scale"), spec.get("batch_size"), spec.get("layout", "merged")
    )
    base = current_rss_mb()
    started = time.perf_counter()
    if spec["kind"] == "validate":
        chosen = None if spec.get("client", "default") == "default" else spec["client"]
        report = validate.validate_stream(config, client=chosen)
        detail = {
            "client": report.client,
            "ok": report.ok,
            "entries": sum(p.redis_count for p in report.partitions),
        }
        if not report.ok:
            detail["failures"] = report.failures()
    elif spec["kind"] == "backfill":
        summary = mirror.backfill(config, progress=False)
        detail = {"summary": str(summary)[:200]}
    else:
        committed = {int(p): o for p, o in spec["committed"].items()}
        if spec.get("force_scan"):
            from ferry.live import handover_partitions

            handover_partitions.seek_partition = lambda *_: "switched off by the benchmark"
        t = handover.translate_group(config, spec["group"], committed)
        detail = {
            "start_id": t.start_id,
            "entries_read": t.entries_read,
            "skipped_later": t.skipped_later,
            "method": getattr(t, "method", "scan"),
            "scan_reason": getattr(t, "scan_reason", ""),
        }
    seconds = time.perf_counter() - started
    own, children = peak_mb() - base, children_peak_mb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": own + children,  # this process above its imports, plus its child's
                "own_peak_mb": own,
                "child_peak_mb": children,
                "base_mb": base,
                **detail,
            }
        )
    )


def measure(redis_client, **spec) -> dict:
    calls_before = redis_calls(redis_client)
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{spec['kind']} ({spec['lib']}) failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["redis_calls"] = redis_calls(redis_client) - calls_before
    return result


def redis_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if not k.startswith("cmdstat_info"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backfill-runs", type=int, help="backfills (default: --runs)")
    parser.add_argument("--value-bytes", type=int, default=VALUE_BYTES)
    parser.add_argument("--kafka", default="apache:3.7")
    parser.add_argument("--baseline", help="a commit whose code runs beside today's")
    parser.add_argument(
        "--new", default="HEAD", help="the commit measured as today's (checked out apart)"
    )
    parser.add_argument(
        "--validate-clients",
        default="default,confluent",
        help="Kafka clients today's validation reads with ('default': the one the mirror "
        "did not use)",
    )
    parser.add_argument(
        "--skip-baseline-backfill",
        action="store_true",
        help="backfill with today's code only (the baseline still validates and hands over)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the backfill's batch_size: small batches interleave the partitions finely in "
        "the merged stream, as live traffic does (default: the config's default)",
    )
    parser.add_argument("--skip-validate", action="store_true", help="backfill and hand-over only")
    parser.add_argument(
        "--handover-behind",
        type=int,
        default=None,
        help="the group committed this many records behind the end of every partition "
        "(default: half-way through every partition)",
    )
    parser.add_argument(
        "--layout",
        default="merged",
        choices=["merged", "per-partition", "spread"],
        help="the Redis layout of today's stream (not merged: no baseline; the hand-over is "
        "measured with its seek and with the seek switched off)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.layout != "merged" and args.baseline:
        parser.error("--baseline compares the merged layout only")

    sys.path.insert(0, str(ROOT / "lib"))
    import redis

    from ferry.services.servers import start_services, stop_services

    home = Path(tempfile.mkdtemp(prefix="ferry-scale-"))
    os.environ["FERRY_HOME"] = str(home)
    trees = [baseline_tree(args.new)]  # edits to the working tree during a run do not count
    libs = {"new": str(trees[0] / "lib")}
    if args.baseline:
        trees.append(baseline_tree(args.baseline))
        libs["baseline"] = str(trees[-1] / "lib")
    services = start_services(home / "services", kafka=args.kafka)
    results: dict = {
        "records": args.records,
        "partitions": PARTITIONS,
        "value_bytes": args.value_bytes,
        "broker": f"{services.kafka_kind} {services.kafka_version}",
        "redis": services.redis_kind,
        "baseline": args.baseline,
        "batch_size": args.batch_size,
        "layout": args.layout,
        "new": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.new],
            capture_output=True,
            text=True,
        ).stdout.strip(),
    }
    samples: dict[str, list[dict]] = {}
    try:
        t = time.perf_counter()
        seed(services.kafka_bootstrap, "scale", args.records, args.value_bytes)
        results["seed_seconds"] = round(time.perf_counter() - t, 1)
        print(f"seeded {args.records:,} x {args.value_bytes} B in {results['seed_seconds']} s")
        client = redis.Redis.from_url(services.redis_url)
        names = {"new": "scale", "baseline": "scale-base"}
        for run in range(args.backfill_runs or args.runs):  # alternating; into a fresh stream
            backfills = ["new"] if args.skip_baseline_backfill else list(libs)
            for which in backfills if run % 2 == 0 else backfills[::-1]:
                # {name} and the spread layout's {name:p}
                for key in client.scan_iter(match=f"*{{{names[which]}[:}}]*", count=1000):
                    client.delete(key)
                r = measure(
                    client,
                    kind="backfill",
                    lib=libs[which],
                    name=names[which],
                    batch_size=args.batch_size,
                    layout=args.layout,
                )
                samples.setdefault(f"backfill_{which}", []).append(r)
                print(
                    f"backfill {which}: {r['seconds']:.1f} s, {args.records / r['seconds']:,.0f}/s"
                )
        for key in client.scan_iter(match="*{scale-base}*", count=1000):
            client.delete(key)  # only `scale` is validated and handed over
        from ferry.core.ingest import migration_keys, read_state

        _, frontiers = read_state(client, migration_keys(bench_config(layout=args.layout)))
        if args.handover_behind is None:
            committed = {p: (f + 1) // 2 for p, f in frontiers.items()}
        else:
            committed = {p: max(0, f + 1 - args.handover_behind) for p, f in frontiers.items()}
        results["handover_committed"] = (
            "half" if args.handover_behind is None else (f"{args.handover_behind} behind the end")
        )
        whiches = list(libs)
        for run in range(args.runs):
            for which in whiches if run % 2 == 0 else whiches[::-1]:
                clients = args.validate_clients.split(",") if which == "new" else ["default"]
                if args.skip_validate:
                    clients = []
                for kafka_client in clients:
                    r = measure(
                        client,
                        kind="validate",
                        lib=libs[which],
                        client=kafka_client,
                        layout=args.layout,
                    )
                    label = f"validate_{which}" + (
                        "" if kafka_client == "default" else "_confluent"
                    )
                    samples.setdefault(label, []).append(r)
                    print(f"{label}: {r}")
                scans = [False, True] if args.layout != "merged" else [False]
                for force_scan in scans if run % 2 == 0 else scans[::-1]:
                    r = measure(
                        client,
                        kind="handover",
                        lib=libs[which],
                        group=f"g-{which}-{run}-{int(force_scan)}",
                        committed=committed,
                        layout=args.layout,
                        force_scan=force_scan,
                    )
                    label = f"handover_{which}" + ("_scan" if force_scan else "")
                    samples.setdefault(label, []).append(r)
                    print(f"{label}: {r}")
        results["samples"] = samples
        report(results, samples, args.records)
    finally:
        stop_services(home / "services")
        for tree in trees:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )
    out = ROOT / "bench" / "results" / f"scale-{args.records}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


def report(results: dict, samples: dict, records: int) -> None:
    def med(name: str, field: str) -> float:
        return statistics.median(r[field] for r in samples[name])

    summary: dict = {}
    print(
        f"\n{records:,} entries, {PARTITIONS} partitions, {results['broker']}, {results['layout']}"
    )
    print(f"{'':24}{'runs':>5}{'seconds':>10}{'per s':>12}{'peak RSS MB':>13}{'Redis calls':>13}")
    for name in (
        "backfill_new",
        "backfill_baseline",
        "validate_new",
        "validate_new_confluent",
        "validate_baseline",
        "handover_new",
        "handover_new_scan",
        "handover_baseline",
    ):
        if name not in samples:
            continue
        s, mb, calls = med(name, "seconds"), med(name, "peak_mb"), med(name, "redis_calls")
        summary[name] = {
            "runs": len(samples[name]),
            "seconds": round(s, 3),
            "per_s": round(records / s),
            "peak_mb": round(mb, 1),
            "redis_calls": calls,
        }
        if name.startswith("handover"):
            summary[name]["method"] = samples[name][-1].get("method")
        print(
            f"{name:24}{len(samples[name]):>5}{s:>10.2f}{records / s:>12,.0f}{mb:>13.1f}"
            f"{calls:>13,.0f}"
        )
    for name in ("validate_new", "validate_new_confluent"):
        if name in summary and "backfill_new" in summary:
            ratio = summary[name]["per_s"] / summary["backfill_new"]["per_s"]
            summary[f"{name}_vs_backfill"] = round(ratio, 2)
            print(f"{name} / backfill_new rate: {ratio:.2f}")
    if "handover_new" in summary and "handover_new_scan" in summary:
        ratio = summary["handover_new_scan"]["seconds"] / summary["handover_new"]["seconds"]
        summary["handover_seek_speedup"] = round(ratio, 1)
        print(f"hand-over: the seek per partition is {ratio:.1f}x faster than scanning")
    for kind in ("backfill", "validate", "handover"):
        new, old = summary.get(f"{kind}_new"), summary.get(f"{kind}_baseline")
        if new and old:
            summary[f"{kind}_speedup"] = round(old["seconds"] / new["seconds"], 2)
            print(
                f"{kind}: new {old['seconds'] / new['seconds']:.2f}x the baseline's speed, "
                f"peak RSS {new['peak_mb']:.0f} MB vs {old['peak_mb']:.0f} MB"
            )
    results["summary"] = summary


if __name__ == "__main__":
    main()
