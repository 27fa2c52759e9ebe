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

Prints a table with ratios and writes bench/results/backfill-<time>.json.
Usage: python bench/backfill_bench.py [--records N] [--runs K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import redis

PARTITIONS = 8
VALUE_BYTES = 512
RECOMMENDED = {"stream-node-max-bytes": "65536", "stream-node-max-entries": "1000"}
STOCK = {"stream-node-max-bytes": "4096", "stream-node-max-entries": "100"}


def seed(bootstrap: str, topic: str, records: int) -> None:
    from ferry.seed import BASE_TS_MS, SeedRecord, create_topic, produce_records

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

    from ferry.kafka_confluent import SAFE_SETTINGS

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
    from ferry.mirror import backfill

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    records, runs = args.records, args.runs

    home = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    os.environ["FERRY_HOME"] = str(home)
    from ferry.config import parse_config
    from ferry.services import embedded_services

    results: dict = {"records": records, "value_bytes": VALUE_BYTES, "partitions": PARTITIONS}
    with embedded_services(home / "services") as services:
        results["redis_kind"] = services.redis_kind
        topic = "bench"
        t = time.perf_counter()
        seed(services.kafka_bootstrap, topic, records)
        results["seed_seconds"] = round(time.perf_counter() - t, 1)
        print(f"seeded {records} x {VALUE_BYTES} B in {results['seed_seconds']} s")
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
        memory: dict[str, float] = {}
        for run in range(runs):  # interleaved, so drift hits every figure alike
            for kafka_client in ("confluent", "kafka-python"):
                out = ferry_backfill(base, f"bench-{kafka_client}-{run}", kafka_client)
                samples.setdefault(f"ferry_{kafka_client}", []).append(out["msg_per_s"])
                key = out["config"].redis.stream
                if run == 0 and kafka_client == "confluent":
                    node = {k: client.config_get(k)[k] for k in RECOMMENDED}
                    assert node == RECOMMENDED, f"the server runs with {node}"
                    memory["recommended_node_size_64k"] = memory_per_entry(client, key, records)
                client.delete(key, f"{{{out['config'].name}}}:ferry:state")
            raw_c = raw_read_confluent(services.kafka_bootstrap, topic, records)
            samples.setdefault("raw_read_confluent", []).append(raw_c)
            raw_k = raw_read_kafka_python(services.kafka_bootstrap, topic, records)
            samples.setdefault("raw_read_kafka-python", []).append(raw_k)
            samples.setdefault("raw_xadd", []).append(xadd_ceiling(services.redis_url, records))
            print(
                f"run {run + 1}/{runs}: "
                + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items())
            )
        for k, v in STOCK.items():
            client.config_set(k, v)
        out = ferry_backfill(base, "bench-stock", "confluent")
        memory["stock_node_size_4k"] = memory_per_entry(client, out["config"].redis.stream, records)
        samples["ferry_confluent_stock_node"] = [out["msg_per_s"]]
        for k, v in RECOMMENDED.items():
            client.config_set(k, v)
        naive = naive_migrator(services.kafka_bootstrap, services.redis_url, topic, 2000, 15.0)

    med = {k: statistics.median(v) for k, v in samples.items()}
    mb = VALUE_BYTES + 8
    results["samples_msg_per_s"] = samples
    results["median_msg_per_s"] = med
    results["median_mb_per_s"] = {k: v * mb / 1e6 for k, v in med.items()}
    results["memory_bytes_per_entry_beyond_key_value"] = memory
    results["naive_migrator_msg_per_s"] = naive
    ratios = {}
    for c in ("confluent", "kafka-python"):
        slower = min(med[f"raw_read_{c}"], med["raw_xadd"])
        ratios[f"ferry_{c}_vs_slower_ceiling"] = med[f"ferry_{c}"] / slower
        ratios[f"ferry_{c}_vs_raw_read"] = med[f"ferry_{c}"] / med[f"raw_read_{c}"]
    ratios["ferry_confluent_vs_kafka_python"] = med["ferry_confluent"] / med["ferry_kafka-python"]
    ratios["ferry_confluent_vs_naive"] = med["ferry_confluent"] / naive
    results["ratios"] = ratios

    print(f"\n{f'figure (median of {runs})':<36}{'msg/s':>12}{'MB/s':>9}")
    for k, v in med.items():
        print(f"{k:<36}{v:>12,.0f}{v * mb / 1e6:>9.1f}")
    print(f"{'naive migrator (postmortem design)':<36}{naive:>12,.0f}")
    print("\nratios")
    for k, v in ratios.items():
        print(f"  {k:<40}{v:>8.2f}")
    print("\nRedis memory per entry beyond key + value (bytes)")
    for k, v in memory.items():
        print(f"  {k:<40}{v:>8.1f}")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"backfill-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
