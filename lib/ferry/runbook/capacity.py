"""Measurements for capacity sizing, taken on the real topic and the real target."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.entries import FIELDS, KafkaRecord, record_args
from ferry.core.validate import read_kafka_range
from ferry.kafka.source import KafkaSource


@dataclass(frozen=True)
class Measurements:
    sampled_records: int
    avg_key_value_bytes: float
    bytes_per_entry: float  # MEMORY USAGE of the scratch stream / entries
    event_rate: float  # msg/s over the sampling interval
    rate_interval_s: float
    xadd_rate: float  # entries/s in the timed run
    xadd_entries: int
    topic_records: int  # records the topic holds now (upper bound with gaps)


def scratch_key(config: StreamConfig) -> str:
    return f"{config.hash_tag}:ferry:scratch"


def sample_records(source: KafkaSource, per_partition: int) -> list[KafkaRecord]:
    """The newest ``per_partition`` records of every partition."""
    info = source.describe_topic()
    ranges = {
        p: (max(info.low[p], info.high[p] - per_partition), info.high[p] - 1)
        for p in info.partitions
    }
    return list(read_kafka_range(source, ranges))


def measure_event_rate(source: KafkaSource, interval_s: float) -> tuple[float, int]:
    """(msg/s, records now) from the partitions' ends sampled ``interval_s`` apart."""
    first = source.describe_topic()
    began = time.monotonic()
    time.sleep(interval_s)  # the measurement interval itself, not a readiness wait
    second = source.describe_topic()
    elapsed = time.monotonic() - began
    grown = sum(second.high[p] - first.high.get(p, 0) for p in second.partitions)
    return grown / elapsed, second.records_upper_bound


def _entry(record: KafkaRecord) -> dict[bytes, bytes | int]:
    offset, ts, flags, key, value, headers = record_args(record)
    return dict(
        zip(FIELDS, (record.partition, offset, ts, flags, key, value, headers), strict=True)
    )


def measure_target(
    client: redis.Redis, key: str, records: list[KafkaRecord], min_entries: int = 20_000
) -> tuple[float, float, int]:
    """Write the sampled records (repeated up to ``min_entries``) to a scratch stream with
    ferry's entry layout: (bytes per entry, XADD entries/s, entries). The key is removed."""
    if not records:
        raise ValueError("no records to sample: the topic is empty")
    if client.exists(key):
        raise ValueError(f"scratch key {key} already exists; remove it or pick another stream name")
    entries = [_entry(r) for r in records]
    rounds = max(1, -(-min_entries // len(entries)))
    try:
        began = time.perf_counter()
        for _ in range(rounds):
            pipe = client.pipeline(transaction=False)
            for i, fields in enumerate(entries):
                pipe.xadd(key, fields)
                if i % 1000 == 999:
                    pipe.execute()
            pipe.execute()
        seconds = time.perf_counter() - began
        total = rounds * len(entries)
        usage = client.memory_usage(key, samples=0)
        # the sampled key/value payload is part of the usage; bytes_per_entry includes it
        return usage / total, total / seconds, total
    finally:
        client.delete(key)
