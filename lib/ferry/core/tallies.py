"""Validation in bounded memory: both sides folded into per-block tallies, compared block by
block; only the blocks that differ are read again and compared record by record.

A block is ``BLOCK`` consecutive offsets of one partition. Each side keeps, per block, the
number of records and the sum (mod 2**128) of a 128-bit hash of each record's offset and
content (:func:`entry_hash`), a multiset digest: equal tallies mean the same records, with
the chance of a false match that of a 128-bit collision. The Redis side also keeps the first
and last entry ID of the block, so a block that differs is found again with one ID range.
Memory is two small records per ``BLOCK`` offsets, whatever the number of entries.

The tallies are a filter, never the verdict: a block whose tallies differ is compared with
the record-by-record rules (:func:`compare_block`), so a block that differs only in how its
bytes are spelt (headers encoded another way, say) is not a failure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ferry.core.entries import KEY_NULL, VALUE_NULL, KafkaRecord, encode_headers, record_digest

BLOCK = 4096
MASK = (1 << 128) - 1


def entry_hash(offset: bytes, ts: bytes, flags: bytes, key: bytes, value: bytes, h: bytes) -> int:
    """128 bits of one record: offset, timestamp, null flags, key, value, encoded headers."""
    digest = hashlib.blake2b(
        b"%b:%b:%b:%d:%b%d:%b%b" % (offset, ts, flags, len(key), key, len(value), value, h),
        digest_size=16,
    ).digest()
    return int.from_bytes(digest, "little")


def entry_fields_hash(fields: dict[bytes, bytes]) -> int:
    """:func:`entry_hash` of a stream entry, from its fields as stored."""
    return entry_hash(
        fields[b"o"], fields[b"ts"], fields[b"f"], fields[b"k"], fields[b"v"], fields[b"h"]
    )


def record_hash(record: KafkaRecord) -> int:
    """:func:`entry_hash` of a Kafka record, spelt the way the ingest script stores it."""
    key, value = record.key, record.value
    flags = (KEY_NULL if key is None else 0) | (VALUE_NULL if value is None else 0)
    return entry_hash(
        b"%d" % record.offset,
        b"%d" % record.timestamp_ms,
        b"%d" % flags,
        b"" if key is None else key,
        b"" if value is None else value,
        encode_headers(record.headers) if record.headers else b"",
    )


@dataclass
class Tally:
    count: int = 0
    total: int = 0
    first_id: bytes | None = None
    last_id: bytes | None = None

    def add(self, value: int, entry_id: bytes | None = None) -> None:
        self.count += 1
        self.total = (self.total + value) & MASK
        if entry_id is not None:
            if self.first_id is None:
                self.first_id = entry_id
            self.last_id = entry_id

    def same(self, other: Tally | None) -> bool:
        return other is not None and (self.count, self.total) == (other.count, other.total)


Blocks = dict[tuple[int, int], Tally]


def add(blocks: Blocks, partition: int, offset: int, value: int, entry_id=None) -> None:
    block = blocks.get((partition, offset // BLOCK))
    if block is None:
        block = blocks[(partition, offset // BLOCK)] = Tally()
    block.add(value, entry_id)


def differing(redis_blocks: Blocks, kafka_blocks: Blocks) -> list[tuple[int, int]]:
    """The blocks whose tallies differ (present on one side only included), in order."""
    out = []
    for name in redis_blocks.keys() | kafka_blocks.keys():
        ours = redis_blocks.get(name)
        if ours is None or not ours.same(kafka_blocks.get(name)):
            out.append(name)
    return sorted(out)


def block_range(block: int) -> tuple[int, int]:
    """The offsets ``[first, last]`` of one block."""
    return block * BLOCK, block * BLOCK + BLOCK - 1


@dataclass
class BlockResult:
    """What the record-by-record comparison of one differing block found."""

    duplicates: int = 0
    missing: int = 0
    mismatched: int = 0
    first_missing: int | None = None
    unmatched: dict[int, bytes | None] = field(default_factory=dict)  # offset -> key (or None)


def compare_block(
    redis_entries: list[KafkaRecord], kafka_records: list[KafkaRecord]
) -> BlockResult:
    """Pure: the old rules on one block. ``redis_entries`` in stream order (Kafka-origin,
    already in the validated window), ``kafka_records`` in offset order (no shadows).
    Unmatched entries keep their key (None for a tombstone): the caller decides which the
    log cleaner removed."""
    out = BlockResult()
    digests: dict[int, bytes] = {}
    keys: dict[int, bytes | None] = {}
    for entry in redis_entries:
        if entry.offset in digests:
            out.duplicates += 1
            continue
        digests[entry.offset] = record_digest(entry)
        keys[entry.offset] = entry.key if entry.value is not None else None
    for record in kafka_records:
        digest = digests.pop(record.offset, None)
        if digest is None:
            out.missing += 1
            if out.first_missing is None:
                out.first_missing = record.offset
        elif digest != record_digest(record):
            out.mismatched += 1
    out.unmatched = {o: keys[o] for o in digests}
    return out
