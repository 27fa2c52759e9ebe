"""Backfill benchmark: ferry against the raw ceilings of its parts, measured in one run.

Seeds RECORDS records of VALUE_BYTES bytes over PARTITIONS partitions on fresh embedded
services, then measures side by side (median of RUNS each):

- ferry's backfill with confluent-kafka and with kafka-python (msg/s, MB/s);
- the raw read ceiling of each client (a bare consume loop touching every field);
- the raw XADD ceiling of the Redis server (redis-benchmark, pipelined, same 7 fields);
- Redis memory per entry beyond key + value, with ferry's recommended stream node size
  (stream-node-max-bytes 65536 / stream-node-max-entries 1000, what the embedded server
  runs with) and with Redis's stock 4096 / 100;
- the naive migrator of the postmortem (one XADD and one offset commit per record).

On a 2-core machine the broker, Redis and ferry share the cores, so it also reports the CPU
time per record of each process (ferry's, Redis's, the broker's; from getrusage and
/proc/PID/stat), which noise barely moves, for ferry's backfill and for the raw parts (the
bare read loop, pipelined XADD).

Each broker in --kafka gets the whole set (default: Tansu and Apache Kafka 3.7), plus a
sweep of the consumer's fetch wait (backfill rate and the tail latency of a following mirror).

Prints a table with ratios per broker and writes bench/results/backfill-<time>.json.
Usage: python bench/backfill_bench.py [--records N] [--runs K] [--kafka tansu,apache:3.7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import redis

PARTITIONS = 8
VALUE_BYTES = 512
RECOMMENDED = {"stream-node-max-bytes": "65536", "stream-node-max-entries": "1000"}
STOCK = {"stream-node-max-bytes": "4096", "stream-node-max-entries": "100"}


def seed(bootstrap: str, topic: str, records: int) -> None:
    from ferry.services.seed import BASE_TS_MS, SeedRecord, create_topic, produce_records

    create_topic(bootstrap, topic, PARTITIONS)
    value = bytes(range(256)) * (VALUE_BYTES // 256)
    produce_records(
        bootstrap,
        topic,
        (
            SeedRecord(i % PARTITIONS, b"k%07d" % i, value, (), BASE_TS_MS + i // 100)
            for i in range(records)
        ),
    )


def raw_read_confluent(bootstrap: str, topic: str, records: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    from ferry.kafka.confluent_client import SAFE_SETTINGS

    # the best bare-loop settings found on this broker: defaults, 5 ms fetch wait, consume(1000)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-raw",
            "fetch.wait.max.ms": 5,
            **SAFE_SETTINGS,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    n = 0
    started = time.perf_counter()
    while n < records:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            _ = (m.key(), m.value(), m.offset(), m.timestamp(), m.headers())
            n += 1
    seconds = time.perf_counter() - started
    c.close()
    return n / seconds


def raw_read_kafka_python(bootstrap: str, topic: str, records: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, 0)
    n = 0
    started = time.perf_counter()
    while n < records:
        for msgs in c.poll(timeout_ms=1000, max_records=500).values():
            for m in msgs:
                _ = (m.key, m.value, m.offset, m.timestamp, m.headers)
                n += 1
    seconds = time.perf_counter() - started
    c.close()
    return n / seconds


def xadd_ceiling(url: str, records: int) -> float:
    """redis-benchmark, 64-deep pipeline, the same seven fields ferry writes."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not on PATH (apt-get install redis-tools)")
    port = url.rsplit(":", 1)[1].split("/")[0]
    value = "v" * VALUE_BYTES
    out = subprocess.run(
        [
            binary, "-h", "127.0.0.1", "-p", port, "-n", str(records), "-P", "64", "-c", "1",
            "--csv", "XADD", "bench:{xadd}", "*", "p", "3", "o", "123456", "ts",
            "1790000000000", "f", "0", "k", "k0000001", "v", value, "h", "",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(out.strip().splitlines()[-1].split(",")[1].strip('"'))
    redis.Redis.from_url(url).delete("bench:{xadd}")
    return rps


def ferry_backfill(base_config, name: str, client: str) -> dict:
    from ferry.core.mirror import backfill

    config = replace(
        base_config,
        name=name,
        redis=replace(base_config.redis, stream="{" + name + "}:stream"),
        kafka=replace(base_config.kafka, client=client),
    )
    summary = backfill(config, progress=False)
    return {**summary.as_json(), "config": config}


def memory_per_entry(client: redis.Redis, key: str, records: int) -> float:
    """Bytes per entry beyond key + value (both known from the seed)."""
    usage = client.memory_usage(key, samples=0)
    payload = (8 + VALUE_BYTES) * records
    return (usage - payload) / records


def naive_migrator(bootstrap: str, url: str, topic: str, limit: int, seconds: float) -> float:
    """The postmortem's design: per record, XADD then commit the Kafka offset synchronously."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-naive", "enable.auto.commit": False}
    )
    c.assign([TopicPartition(topic, 0, 0)])
    r = redis.Redis.from_url(url)
    n = 0
    started = time.perf_counter()
    while n < limit and time.perf_counter() - started < seconds:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        r.xadd("bench:{naive}", {"k": m.key(), "v": m.value()})
        c.commit(offsets=[TopicPartition(topic, 0, m.offset() + 1)], asynchronous=False)
        n += 1
    rate = n / (time.perf_counter() - started)
    c.close()
    r.delete("bench:{naive}")
    return rate


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU used by this process (ferry or a bare loop), Redis and the broker over a block."""

    def __init__(self, services) -> None:
        self.pids = {"redis": services.redis_pid, "broker": services.kafka_pid}

    def __enter__(self):
        self.start = {"self": time.process_time(), **{k: proc_cpu(v) for k, v in self.pids.items()}}
        return self

    def __exit__(self, *exc) -> None:
        self.used = {
            "self": time.process_time() - self.start["self"],
            **{k: proc_cpu(v) - self.start[k] for k, v in self.pids.items()},
        }

    def per_record_us(self, records: int) -> dict[str, float]:
        return {k: v / records * 1e6 for k, v in self.used.items()}


def tail_latency_ms(base_config, services, name: str, count: int = 300) -> dict[str, float]:
    """A following mirror; records produced one at a time every 10 ms; delivery report ->
    visible in the stream, p50 and p99 (ms)."""
    from confluent_kafka import Producer

    from ferry.core.mirror import backfill
    from ferry.services.seed import create_topic

    topic = f"lat-{name}"
    create_topic(services.kafka_bootstrap, topic, 1)
    config = replace(
        base_config,
        name=topic,
        redis=replace(base_config.redis, stream="{" + topic + "}:stream"),
        kafka=replace(base_config.kafka, topic=topic),
    )
    stop = threading.Event()
    mirror = threading.Thread(
        target=backfill, args=(config,), kwargs={"follow": True, "progress": False,
                                                 "should_stop": stop.is_set}
    )  # fmt: skip
    mirror.start()
    client = redis.Redis.from_url(services.redis_url)
    delivered: dict[int, float] = {}
    seen: dict[int, float] = {}

    def watch() -> None:
        last = "0-0"
        while len(seen) < count and not stop.is_set():
            for _, entries in client.xread({config.redis.stream: last}, block=200) or []:
                now = time.perf_counter()
                for entry_id, fields in entries:
                    last = entry_id
                    seen[int(fields[b"v"])] = now

    watcher = threading.Thread(target=watch)
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap, "linger.ms": 0})
    deadline = time.monotonic() + 60
    while not client.hexists(f"{{{topic}}}:ferry:state", "frontier:0"):  # the mirror armed
        assert time.monotonic() < deadline, "the following mirror did not arm within 60 s"
        time.sleep(0.05)
    watcher.start()
    for i in range(count):
        producer.produce(
            topic, value=b"%d" % i,
            on_delivery=lambda err, msg, i=i: delivered.__setitem__(i, time.perf_counter()),
        )  # fmt: skip
        producer.poll(0.01)
    producer.flush(30)
    watcher.join(timeout=60)
    stop.set()
    mirror.join()
    lat = sorted((seen[i] - delivered[i]) * 1000 for i in delivered if i in seen)
    client.delete(config.redis.stream, f"{{{topic}}}:ferry:state")
    if not lat:
        return {"p50": float("nan"), "p99": float("nan"), "seen": 0}
    return {
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "seen": len(lat),
    }


def bench_broker(kafka: str, records: int, runs: int, fetch_waits: list[int]) -> dict:
    """Every figure on one broker (a fresh stack of that broker and Redis)."""
    home = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    os.environ["FERRY_HOME"] = str(home)
    from ferry.config import parse_config
    from ferry.services.servers import start_services, stop_services

    results: dict = {"records": records, "value_bytes": VALUE_BYTES, "partitions": PARTITIONS}
    services = start_services(home / "services", kafka=kafka)
    try:
        results["broker"] = f"{services.kafka_kind} {services.kafka_version}"
        results["redis_kind"] = services.redis_kind
        topic = "bench"
        t = time.perf_counter()
        seed(services.kafka_bootstrap, topic, records)
        results["seed_seconds"] = round(time.perf_counter() - t, 1)
        print(
            f"[{results['broker']}] seeded {records} x {VALUE_BYTES} B in {results['seed_seconds']} s"
        )
        base = parse_config(
            {
                "name": "bench",
                "kafka": {"bootstrap_servers": "embedded", "topic": topic},
                "redis": {"url": "embedded"},
            },
            "<bench>",
        )
        client = redis.Redis.from_url(services.redis_url)
        samples: dict[str, list[float]] = {}
        cpu: dict[str, list[dict[str, float]]] = {}
        memory: dict[str, float] = {}

        def timed_cpu(name: str, fn):
            with CpuMeter(services) as meter:
                value = fn()
            cpu.setdefault(name, []).append(meter.per_record_us(records))
            return value

        for run in range(runs):  # interleaved, so drift hits every figure alike
            for kafka_client in ("confluent", "kafka-python"):
                out = timed_cpu(
                    f"ferry_{kafka_client}",
                    lambda c=kafka_client, r=run: ferry_backfill(base, f"bench-{c}-{r}", c),
                )
                samples.setdefault(f"ferry_{kafka_client}", []).append(out["msg_per_s"])
                key = out["config"].redis.stream
                if run == 0 and kafka_client == "confluent":
                    node = {k: client.config_get(k)[k] for k in RECOMMENDED}
                    assert node == RECOMMENDED, f"the server runs with {node}"
                    memory["recommended_node_size_64k"] = memory_per_entry(client, key, records)
                client.delete(key, f"{{{out['config'].name}}}:ferry:state")
            raw_c = timed_cpu(
                "raw_read_confluent",
                lambda: raw_read_confluent(services.kafka_bootstrap, topic, records),
            )
            samples.setdefault("raw_read_confluent", []).append(raw_c)
            raw_k = timed_cpu(
                "raw_read_kafka-python",
                lambda: raw_read_kafka_python(services.kafka_bootstrap, topic, records),
            )
            samples.setdefault("raw_read_kafka-python", []).append(raw_k)
            xadd = timed_cpu("raw_xadd", lambda: xadd_ceiling(services.redis_url, records))
            samples.setdefault("raw_xadd", []).append(xadd)
            print(
                f"run {run + 1}/{runs}: "
                + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items())
            )
        for wait in fetch_waits:  # the consumer's fetch wait: backfill rate and tail latency
            os.environ["FERRY_FETCH_WAIT_MS"] = str(wait)
            try:
                out = ferry_backfill(base, f"bench-wait-{wait}", "confluent")
                client.delete(out["config"].redis.stream, f"{{bench-wait-{wait}}}:ferry:state")
                lat = tail_latency_ms(base, services, f"w{wait}")
            finally:
                del os.environ["FERRY_FETCH_WAIT_MS"]
            results.setdefault("fetch_wait", {})[wait] = {"msg_per_s": out["msg_per_s"], **lat}
            print(f"fetch wait {wait} ms: backfill {out['msg_per_s']:,.0f} msg/s, tail p50 "
                  f"{lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms")  # fmt: skip
        if services.kafka_kind == "tansu":  # memory and the naive design: broker-independent
            for k, v in STOCK.items():
                client.config_set(k, v)
            out = ferry_backfill(base, "bench-stock", "confluent")
            memory["stock_node_size_4k"] = memory_per_entry(
                client, out["config"].redis.stream, records
            )
            for k, v in RECOMMENDED.items():
                client.config_set(k, v)
            results["naive_migrator_msg_per_s"] = naive_migrator(
                services.kafka_bootstrap, services.redis_url, topic, 2000, 15.0
            )
    finally:
        stop_services(home / "services")
    med = {k: statistics.median(v) for k, v in samples.items()}
    cpu_med = {
        name: {proc: statistics.median(r[proc] for r in rows) for proc in rows[0]}
        for name, rows in cpu.items()
    }
    results.update(
        samples_msg_per_s=samples,
        median_msg_per_s=med,
        median_mb_per_s={k: v * (VALUE_BYTES + 8) / 1e6 for k, v in med.items()},
        cpu_us_per_record=cpu_med,
        memory_bytes_per_entry_beyond_key_value=memory,
    )
    ratios = {}
    for c in ("confluent", "kafka-python"):
        slower = min(med[f"raw_read_{c}"], med["raw_xadd"])
        ratios[f"ferry_{c}_vs_slower_ceiling"] = med[f"ferry_{c}"] / slower
        ratios[f"ferry_{c}_vs_raw_read"] = med[f"ferry_{c}"] / med[f"raw_read_{c}"]
        f, r, x = cpu_med[f"ferry_{c}"], cpu_med[f"raw_read_{c}"], cpu_med["raw_xadd"]
        ratios[f"cpu_redis_ingest_vs_xadd_{c}"] = f["redis"] / x["redis"]
        ratios[f"cpu_all_vs_raw_parts_{c}"] = sum(f.values()) / (
            r["self"] + r["broker"] + x["redis"]
        )
    ratios["ferry_confluent_vs_kafka_python"] = med["ferry_confluent"] / med["ferry_kafka-python"]
    if "naive_migrator_msg_per_s" in results:
        ratios["ferry_confluent_vs_naive"] = (
            med["ferry_confluent"] / results["naive_migrator_msg_per_s"]
        )
    results["ratios"] = ratios
    return results


def print_broker(results: dict, runs: int) -> None:
    mb = VALUE_BYTES + 8
    print(f"\n== {results['broker']} ==")
    print(f"{f'figure (median of {runs})':<36}{'msg/s':>12}{'MB/s':>9}")
    for k, v in results["median_msg_per_s"].items():
        print(f"{k:<36}{v:>12,.0f}{v * mb / 1e6:>9.1f}")
    if "naive_migrator_msg_per_s" in results:
        print(
            f"{'naive migrator (postmortem design)':<36}{results['naive_migrator_msg_per_s']:>12,.0f}"
        )
    print(f"\nCPU µs per record (median){'':<10}{'own':>8}{'redis':>8}{'broker':>8}{'all':>8}")
    for name, row in results["cpu_us_per_record"].items():
        total = sum(row.values())
        print(
            f"  {name:<34}{row['self']:>8.2f}{row['redis']:>8.2f}{row['broker']:>8.2f}{total:>8.2f}"
        )
    print("\nratios")
    for k, v in results["ratios"].items():
        print(f"  {k:<40}{v:>8.2f}")
    for k, v in results["memory_bytes_per_entry_beyond_key_value"].items():
        print(f"  Redis memory per entry beyond key + value, {k}: {v:.1f} B")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kafka", default="tansu,apache:3.7", help="brokers, comma-separated")
    parser.add_argument("--fetch-waits", default="5,100,500", help="fetch.wait.max.ms to sweep")
    args = parser.parse_args()
    waits = [int(w) for w in args.fetch_waits.split(",") if w]
    results = {}
    for kafka in args.kafka.split(","):
        results[kafka] = bench_broker(kafka, args.records, args.runs, waits)
        print_broker(results[kafka], args.runs)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"backfill-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
