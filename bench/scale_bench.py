"""Scale benchmark: backfill, validation and hand-over at 1M (or 10M) entries, side by side.

Seeds RECORDS records of VALUE_BYTES bytes over PARTITIONS partitions on fresh embedded
services (Tansu by default) with ferry's own seed functions, backfills them with ferry's
backfill, then measures in the same run (median of RUNS each, alternating):

- ferry's backfill (msg/s);
- validation: today's ``validate_stream`` and, when ``--baseline`` names a commit, the
  ``validate_stream`` of that commit, loaded from git beside it (entries/s, peak RSS);
- the hand-over of a group committed half-way through every partition: today's
  ``translate_group`` and the baseline's (seconds, Redis calls, peak RSS).

Every validation and hand-over runs in a fresh interpreter (a child process), so its
peak RSS (getrusage ru_maxrss) is its own; the figure printed is the peak minus the RSS the
interpreter had before the call (the imports). Redis calls are counted with INFO
commandstats on the server, before and after.

Prints a table with ratios and writes bench/results/scale-<time>.json.
Usage: python bench/scale_bench.py [--records N] [--runs K] [--baseline COMMIT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

PARTITIONS = 8
VALUE_BYTES = 100
ROOT = Path(__file__).resolve().parent.parent


def seed(bootstrap: str, topic: str, records: int, value_bytes: int) -> None:
    from ferry.seed import BASE_TS_MS, SeedRecord, create_topic, produce_records

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


def load_baseline(commit: str, module: str):
    """``ferry.<module>`` as it was at ``commit``, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:lib/ferry/{module}.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="ferry-baseline-")) / f"baseline_{module}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"baseline_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_config():
    from ferry.config import parse_config

    return parse_config(
        {
            "name": "scale",
            "kafka": {"bootstrap_servers": "embedded", "topic": "scale"},
            "redis": {"url": "embedded"},
        },
        "<bench>",
    )


def child(spec: dict) -> None:
    """One measured call in a fresh interpreter: seconds, peak RSS above the imports."""
    if spec["which"] == "baseline":
        validate = load_baseline(spec["baseline"], "validate")
        handover = load_baseline(spec["baseline"], "handover")
    else:
        import ferry.handover as handover
        import ferry.validate as validate
    import ferry.kafka_python  # noqa: F401 - imported before the baseline figure

    config = bench_config()
    base = current_rss_mb()
    started = time.perf_counter()
    if spec["kind"] == "validate":
        report = validate.validate_stream(config)
        detail = {"ok": report.ok, "entries": sum(p.redis_count for p in report.partitions)}
    else:
        committed = {int(p): o for p, o in spec["committed"].items()}
        t = handover.translate_group(config, spec["group"], committed)
        detail = {"start_id": t.start_id, "entries_read": t.entries_read}
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mb": rss_mb() - base, "base_mb": base, **detail}))


def measure(client: redis.Redis, **spec) -> dict:
    calls_before = redis_calls(client)
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"{spec['kind']} {spec['which']} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["redis_calls"] = redis_calls(client) - calls_before
    return result


def redis_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if not k.startswith("cmdstat_info"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--value-bytes", type=int, default=VALUE_BYTES)
    parser.add_argument("--kafka", default="tansu")
    parser.add_argument("--baseline", help="a commit whose validate/handover run beside today's")
    parser.add_argument("--skip-baseline-validate", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    home = Path(tempfile.mkdtemp(prefix="ferry-scale-"))
    os.environ["FERRY_HOME"] = str(home)
    from ferry.mirror import backfill
    from ferry.services import start_services, stop_services

    services = start_services(home / "services", kafka=args.kafka)
    results: dict = {
        "records": args.records,
        "partitions": PARTITIONS,
        "value_bytes": args.value_bytes,
        "broker": f"{services.kafka_kind} {services.kafka_version}",
        "baseline": args.baseline,
    }
    try:
        t = time.perf_counter()
        seed(services.kafka_bootstrap, "scale", args.records, args.value_bytes)
        results["seed_seconds"] = round(time.perf_counter() - t, 1)
        print(f"seeded {args.records} x {args.value_bytes} B in {results['seed_seconds']} s")
        base = bench_config()
        client = redis.Redis.from_url(services.redis_url)
        t = time.perf_counter()
        summary = backfill(base, progress=False)
        backfill_s = time.perf_counter() - t
        results["backfill"] = {
            "seconds": round(backfill_s, 2),
            "per_s": round(args.records / backfill_s),
            "copied": summary.as_json().get("records", None),
        }
        print(f"backfill: {backfill_s:.1f} s, {args.records / backfill_s:,.0f} msg/s")
        from ferry.ingest import migration_keys, read_state

        _, frontiers = read_state(client, migration_keys(base))
        committed = {p: (f + 1) // 2 for p, f in frontiers.items()}
        whiches = ["new"] + (["baseline"] if args.baseline else [])
        samples: dict[str, list[dict]] = {}
        for run in range(args.runs):
            for which in whiches if run % 2 == 0 else whiches[::-1]:
                if not (which == "baseline" and args.skip_baseline_validate):
                    r = measure(client, kind="validate", which=which, baseline=args.baseline)
                    samples.setdefault(f"validate_{which}", []).append(r)
                    print(f"validate {which}: {r}")
                group = f"g-{which}-{run}"
                r = measure(
                    client,
                    kind="handover",
                    which=which,
                    baseline=args.baseline,
                    group=group,
                    committed=committed,
                )
                samples.setdefault(f"handover_{which}", []).append(r)
                print(f"handover {which}: {r}")
        results["samples"] = samples
        report(results, samples, args.records, backfill_s)
    finally:
        stop_services(home / "services")
    out = ROOT / "bench" / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


def report(results: dict, samples: dict, records: int, backfill_s: float) -> None:
    def med(name: str, field: str) -> float | None:
        runs = samples.get(name)
        return statistics.median(r[field] for r in runs) if runs else None

    summary = {}
    print(
        f"\n{records:,} entries, {PARTITIONS} partitions (medians of {len(samples.get('validate_new', []))})"
    )
    print(f"{'':22}{'seconds':>10}{'entries/s':>12}{'peak RSS MB':>13}{'Redis calls':>13}")
    print(f"{'backfill':22}{backfill_s:>10.1f}{records / backfill_s:>12,.0f}")
    for name in ("validate_new", "validate_baseline", "handover_new", "handover_baseline"):
        if name not in samples:
            continue
        s, mb = med(name, "seconds"), med(name, "peak_mb")
        calls = med(name, "redis_calls")
        summary[name] = {
            "seconds": round(s, 3),
            "per_s": round(records / s),
            "peak_mb": round(mb, 1),
            "redis_calls": calls,
        }
        print(f"{name:22}{s:>10.2f}{records / s:>12,.0f}{mb:>13.1f}{calls:>13,.0f}")
    if "validate_new" in summary:
        v = summary["validate_new"]["per_s"]
        summary["validate_vs_backfill"] = round(v / (records / backfill_s), 2)
        print(f"validate (new) / backfill rate: {summary['validate_vs_backfill']:.2f}")
    for kind in ("validate", "handover"):
        if f"{kind}_baseline" in summary and f"{kind}_new" in summary:
            new, old = summary[f"{kind}_new"], summary[f"{kind}_baseline"]
            ratio = old["seconds"] / new["seconds"]
            summary[f"{kind}_speedup"] = round(ratio, 2)
            print(
                f"{kind}: new is {ratio:.2f}x the baseline's speed, "
                f"peak RSS {new['peak_mb']:.0f} MB vs {old['peak_mb']:.0f} MB"
            )
    results["summary"] = summary


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "lib"))
    main()
