"""The independent end-of-migration check: every record of both sides, what the producers
sent, and what a consumer group processed across its hand-over."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ferry.config import StreamConfig
from ferry.core.entries import entry_to_record
from ferry.core.ingest import migration_keys
from ferry.core.reconcile import Reconciliation, kafka_identity, reconcile
from ferry.core.validate import read_kafka_range, retired_by_retention, scan_stream
from ferry.kafka.source import open_source
from ferry.redis.retention import read_trimmed, read_trimmed_ids
from ferry.redis.target import connect_redis


@dataclass(frozen=True)
class ConsumerCheck:
    processed: int
    from_kafka: int
    from_redis: int
    duplicates: int  # records processed more than once
    gaps: int  # records never processed


@dataclass(frozen=True)
class LiveReport:
    sides: Reconciliation
    retired_by_retention: int  # Kafka records retention removed from the stream on purpose
    produced_live: int  # what the live producers sent
    live_found: int  # of those, found in Kafka or Redis
    consumer: ConsumerCheck | None

    @property
    def lost_live(self) -> int:
        return self.produced_live - self.live_found

    @property
    def ok(self) -> bool:
        consumer_ok = self.consumer is None or not (self.consumer.duplicates or self.consumer.gaps)
        return self.sides.ok and self.lost_live == 0 and consumer_ok

    def as_json(self) -> dict:
        return {**asdict(self), "lost_live": self.lost_live, "ok": self.ok}


def check_live_migration(
    config: StreamConfig, produced_live: int, consumer_log: Path | None = None
) -> LiveReport:
    """Read all of Kafka (shadows included) and the whole stream and compare record by record;
    Kafka records retention removed from the stream on purpose are counted apart."""
    client = connect_redis(config)
    keys = migration_keys(config)
    trimmed = read_trimmed(client, config)
    source = open_source(config)
    try:
        info = source.describe_topic()
        ranges = {p: (info.low[p], info.high[p] - 1) for p in info.partitions}
        kafka = list(read_kafka_range(source, ranges))
    finally:
        source.close()
    kafka.sort(key=lambda r: (r.partition, r.offset))
    trimmed_id = read_trimmed_ids(client, keys, info.partitions)
    entries = [
        (i, entry_to_record(f))
        for key in keys.streams(info.partitions)
        for i, f in scan_stream(client, key)
    ]

    def retired(record) -> bool:
        identity = kafka_identity(record)
        if isinstance(identity, bytes):
            return retired_by_retention(identity, trimmed_id[record.partition])
        return record.offset <= trimmed.get(record.partition, -1)

    kept = [r for r in kafka if not retired(r)]
    everything = {kafka_identity(r) for r in kafka}
    live_ids = _live_ids(r.value for r in kafka) | _live_ids(r.value for _, r in entries)
    consumer = _check_consumer(consumer_log, everything) if consumer_log else None
    return LiveReport(
        sides=reconcile(kept, entries),
        retired_by_retention=len(kafka) - len(kept),
        produced_live=produced_live,
        live_found=len(live_ids),
        consumer=consumer,
    )


def _live_ids(values) -> set[str]:
    """The ids of the traffic generator's events (``live_<seed>_<n>``) among the values."""
    found = set()
    for value in values:
        if value and value.startswith(b'{"id": "live_'):
            found.add(json.loads(value)["id"])
    return found


def _check_consumer(log: Path, everything: set) -> ConsumerCheck:
    seen: dict = {}
    sides = {"kafka": 0, "redis": 0}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        identity = tuple(row["id"]) if isinstance(row["id"], list) else row["id"].encode()
        seen[identity] = seen.get(identity, 0) + 1
        sides[row["side"]] += 1
    processed = sum(seen.values())
    return ConsumerCheck(
        processed=processed,
        from_kafka=sides["kafka"],
        from_redis=sides["redis"],
        duplicates=processed - len(seen),
        gaps=len(everything - set(seen)),
    )
