"""The row-level sample of step 04: Kafka records drawn by offset across every partition,
each found in the stream and compared field by field.

Drawing by offset (not by entry time) gives every copied record the same chance, however
the timestamps are spread: a gap of weeks between history and live traffic cannot make
the sample land on one entry. The draw is pure (:func:`draw_offsets`); the Kafka reads and
one scan of the stream, looking only for the drawn ``(partition, offset)`` pairs, sit at
the edges (:func:`sample_rows`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import redis

from ferry.config import StreamConfig
from ferry.core.entries import KafkaRecord, entry_to_record, record_digest, shadow_of
from ferry.core.entries import without_shadow_header as _plain
from ferry.core.ingest import migration_keys, read_state
from ferry.core.validate import read_kafka_range
from ferry.kafka.source import open_source
from ferry.redis.target import connect_redis

SCAN_CHUNK = 5000
COLUMNS = (
    "partition",
    "offset",
    "entry_id",
    "timestamp_ms",
    "key_null",
    "value_null",
    "value_bytes",
    "headers",
    "in_stream",
    "digest_match",
)


def draw_offsets(
    ranges: dict[int, tuple[int, int]], size: int, rng: random.Random
) -> list[tuple[int, int]]:
    """``size`` distinct (partition, offset) pairs drawn uniformly from the union of the
    half-open ranges ``[first, end)`` (all of them when there are fewer), in order."""
    spans = [(p, lo, hi - lo) for p, (lo, hi) in sorted(ranges.items()) if hi > lo]
    total = sum(n for _, _, n in spans)
    picks = rng.sample(range(total), min(size, total))
    out = []
    for i in picks:
        for p, lo, n in spans:
            if i < n:
                out.append((p, lo + i))
                break
            i -= n
    return sorted(out)


def sample_rows(
    config: StreamConfig,
    size: int = 200,
    seed: int = 7,
    client: str | None = None,
    max_rounds: int = 5,
) -> list[dict]:
    """Up to ``size`` distinct records of the copied range, one row each: found in the
    stream or not, and whether its digest (key, value, headers, timestamp) matches Kafka's.
    Offsets are not dense (transaction markers, compaction): a drawn offset that holds no
    record is drawn again (up to ``max_rounds`` draws) until ``size`` distinct records are
    found or the range has no more."""
    target = connect_redis(config)
    keys = migration_keys(config)
    starts, frontiers = read_state(target, keys)
    positions = {p: f + 1 for p, f in frontiers.items()}  # the state keeps position - 1
    rng = random.Random(seed)
    source = open_source(config, client)
    records: dict[tuple[int, int], KafkaRecord] = {}
    try:
        info = source.describe_topic()
        ranges = {
            p: (max(starts[p], info.low.get(p, 0)), positions[p]) for p in positions if p in starts
        }
        drawn: set[tuple[int, int]] = set()
        for _ in range(max_rounds):
            fresh = [x for x in draw_offsets(ranges, size, rng) if x not in drawn]
            drawn.update(fresh)
            records.update(read_records_at(source, fresh[: size - len(records)]))
            if len(records) >= size or len(drawn) >= sum(hi - lo for lo, hi in ranges.values()):
                break
    finally:
        source.close()
    found = find_entries(target, keys.streams(sorted(positions)), records)
    return [_row(record, found.get(key)) for key, record in sorted(records.items())]


def read_records_at(source, wanted: list[tuple[int, int]]) -> dict[tuple[int, int], KafkaRecord]:
    """The record at each wanted (partition, offset), where one exists. Every partition is
    read at once, one wanted offset each per round, so the rounds number the most wanted of
    one partition, not the sum (a seek per round, not a read of the range between)."""
    queues: dict[int, list[int]] = {}
    for p, offset in sorted(wanted, reverse=True):
        queues.setdefault(p, []).append(offset)  # popped from the end: lowest first
    out: dict[tuple[int, int], KafkaRecord] = {}
    while queues:
        heads = {p: queue.pop() for p, queue in queues.items()}
        ranges = {p: (o, o) for p, o in heads.items()}
        batch = 4 * len(ranges) if getattr(source, "small_polls", False) else 20_000
        for record in read_kafka_range(source, ranges, batch=batch):
            if record.offset == heads[record.partition]:
                out[(record.partition, record.offset)] = record
        queues = {p: q for p, q in queues.items() if q}
    return out


def find_entries(
    client: redis.Redis, streams: list[str], records: dict[tuple[int, int], KafkaRecord]
) -> dict[tuple[int, int], tuple[bytes, KafkaRecord]]:
    """The stream entry of each wanted record: a shadow by the entry ID it carries, the rest
    by ``(partition, offset)`` in one pass over the streams (memory: the wanted set)."""
    found: dict[tuple[int, int], tuple[bytes, KafkaRecord]] = {}
    wanted = set()
    for key, record in records.items():
        entry_id = shadow_of(record)
        if entry_id is None:
            wanted.add(key)
            continue
        for stream in streams:
            hit = client.xrange(stream, min=entry_id, max=entry_id)
            if hit:
                found[key] = (hit[0][0], entry_to_record(hit[0][1]))
    for stream in streams if wanted else []:
        for entry_id, fields in _scan(client, stream):
            p, o = fields.get(b"p"), fields.get(b"o")
            if o and (int(p), int(o)) in wanted:
                found[(int(p), int(o))] = (entry_id, entry_to_record(fields))
    return found


def _scan(client: redis.Redis, stream: str) -> Iterator[tuple[bytes, dict]]:
    after = "-"
    while True:
        chunk = client.xrange(stream, min=after, count=SCAN_CHUNK)
        yield from chunk
        if len(chunk) < SCAN_CHUNK:
            return
        after = "(" + chunk[-1][0].decode()


def _row(kafka: KafkaRecord, found: tuple[bytes, KafkaRecord] | None) -> dict:
    entry_id, entry = found if found else (None, None)
    return {
        "partition": kafka.partition,
        "offset": kafka.offset,
        "entry_id": entry_id.decode() if entry_id else None,
        "timestamp_ms": kafka.timestamp_ms,
        "key_null": kafka.key is None,
        "value_null": kafka.value is None,
        "value_bytes": len(kafka.value or b""),
        "headers": len(_plain(kafka).headers),
        "in_stream": entry is not None,
        "digest_match": entry is not None and record_digest(entry) == record_digest(_plain(kafka)),
    }
