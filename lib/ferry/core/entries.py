"""The Redis entry schema and content digests: pure functions, no I/O.

Each Kafka record becomes one stream entry with the same seven fields in the same order
(so Redis stores the field names once per listpack node, not once per entry):

=====  =======================================================================
field  meaning
=====  =======================================================================
``p``  partition, decimal
``o``  offset, decimal
``ts`` record timestamp in ms, decimal (``-1`` when Kafka has none)
``f``  null flags: bit 1 = key is null, bit 2 = value is null (``0`` = neither)
``k``  key bytes (empty when null: ``f`` tells null from empty)
``v``  value bytes (empty when null)
``h``  headers, binary (empty when there are none), see :func:`encode_headers`
=====  =======================================================================

From ``redis-primary`` on, writers append to Redis first (see ``primary.lua``): such an
entry has an empty ``o`` (Kafka has not given it an offset yet) and decodes with offset
``REDIS_ORIGIN``. Its Kafka copy, the *shadow*, carries the entry's ID in a last header
named ``SHADOW_HEADER``; the mirror moves the frontier over a shadow without appending.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

FIELDS = (b"p", b"o", b"ts", b"f", b"k", b"v", b"h")
KEY_NULL = 1
VALUE_NULL = 2
SHADOW = 4  # ingest-script flag: the record is the Kafka shadow of an entry already in Redis
REDIS_ORIGIN = -1  # the offset of an entry written to Redis first (its ``o`` is empty)
SHADOW_HEADER = "ferry-shadow-of"

Header = tuple[str, bytes | None]


class KafkaRecord(NamedTuple):
    """One Kafka record as ferry sees it (a NamedTuple: it is built on the hot path)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated header block")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_headers(headers: tuple[Header, ...] | list[Header]) -> bytes:
    """Headers as bytes: per header ``uvarint(len(name)) name uvarint(len(value)+1) value``.

    A null value is written as length prefix 0, so null and empty stay distinct; order and
    repeated names are kept as they are.
    """
    if not headers:
        return b""
    out = bytearray()
    for name, value in headers:
        raw = name.encode() if isinstance(name, str) else bytes(name)
        out += _uvarint(len(raw))
        out += raw
        if value is None:
            out += b"\x00"
        else:
            out += _uvarint(len(value) + 1)
            out += value
    return bytes(out)


def decode_headers(data: bytes) -> tuple[Header, ...]:
    """Inverse of :func:`encode_headers`."""
    headers: list[Header] = []
    pos = 0
    while pos < len(data):
        size, pos = _read_uvarint(data, pos)
        name = data[pos : pos + size].decode()
        pos += size
        size, pos = _read_uvarint(data, pos)
        if size == 0:
            headers.append((name, None))
        else:
            headers.append((name, data[pos : pos + size - 1]))
            pos += size - 1
        if pos > len(data):
            raise ValueError("truncated header block")
    return tuple(headers)


def shadow_of(record: KafkaRecord) -> bytes | None:
    """The Redis entry ID a shadow record stands for; None for an ordinary record."""
    headers = record.headers
    if headers and headers[-1][0] == SHADOW_HEADER:
        return headers[-1][1]
    return None


def without_shadow_header(record: KafkaRecord) -> KafkaRecord:
    """The record as its producer sent it: a shadow without ferry's header."""
    return record._replace(headers=record.headers[:-1]) if shadow_of(record) else record


def record_args(record: KafkaRecord) -> list[bytes | int]:
    """The six ingest-script arguments of one record: offset, ts, flags, key, value, headers.

    A shadow (see :func:`shadow_of`) is passed as flag ``SHADOW`` with the entry ID as its key
    and nothing else: the script checks that entry exists and moves the frontier over it.
    """
    entry_id = shadow_of(record)
    if entry_id is not None:
        return [record.offset, record.timestamp_ms, SHADOW, entry_id, b"", b""]
    key, value = record.key, record.value
    return [
        record.offset,
        record.timestamp_ms,
        (KEY_NULL if key is None else 0) | (VALUE_NULL if value is None else 0),
        b"" if key is None else key,
        b"" if value is None else value,
        encode_headers(record.headers) if record.headers else b"",
    ]


def entry_to_record(fields: dict[bytes, bytes]) -> KafkaRecord:
    """Rebuild the Kafka record from one stream entry's fields (as redis-py returns them)."""
    try:
        flags = int(fields[b"f"])
        offset = fields[b"o"]
        return KafkaRecord(
            partition=int(fields[b"p"]),
            offset=int(offset) if offset else REDIS_ORIGIN,
            timestamp_ms=int(fields[b"ts"]),
            key=None if flags & KEY_NULL else fields[b"k"],
            value=None if flags & VALUE_NULL else fields[b"v"],
            headers=decode_headers(fields[b"h"]),
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a ferry entry ({exc}): fields {sorted(fields)}") from exc


def record_digest(record: KafkaRecord) -> bytes:
    """A 16-byte digest of everything faithful means: key, value, headers, timestamp.

    Each part is length-prefixed (with a distinct marker for null) so no two different
    records share an encoding.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(b"%d:%d:" % (record.partition, record.timestamp_ms))
    for part in (record.key, record.value):
        h.update(b"N" if part is None else b"B%d:" % len(part))
        if part is not None:
            h.update(part)
    h.update(encode_headers(record.headers))
    return h.digest()


def entry_id_key(entry_id: bytes) -> tuple[int, int]:
    """A stream entry ID as (ms, seq), which orders IDs the way Redis does."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def entry_id_ms(entry_id: bytes | str) -> int:
    """The millisecond part of a stream entry ID."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])
