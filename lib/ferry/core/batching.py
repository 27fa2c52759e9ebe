"""Batches bounded in records and in bytes, from the Redis server's own limits.

A script call carries every record of its batch as arguments; Redis refuses (by closing the
connection) an argument longer than ``proto-max-bulk-len``, and a connection whose pending
query grows past ``client-query-buffer-limit``. The mirror therefore cuts each partition's
records into batches that stay well inside both, and refuses, before sending anything of it,
a record that no batch could carry, naming its partition and offset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import redis

from ferry.errors import RecordTooLargeError

MAX_BATCH_BYTES = 16 * 1024 * 1024  # latency: one script call holds the server this long
HEADER_OVERHEAD = 10  # per header in the encoded form: two length prefixes


@dataclass(frozen=True)
class ServerLimits:
    max_bulk: int  # proto-max-bulk-len: the longest single argument
    query_buffer: int  # client-query-buffer-limit: the most a connection may have pending
    read: bool = True  # False when CONFIG was not permitted and these are the defaults

    def batch_bytes(self, pipelined: int) -> int:
        """The byte budget of one batch when ``pipelined`` batches go out in one write."""
        return max(1, min(MAX_BATCH_BYTES, self.query_buffer // (2 * pipelined)))


DEFAULT_LIMITS = ServerLimits(512 * 1024 * 1024, 1024 * 1024 * 1024, read=False)


def read_server_limits(client: redis.Redis) -> ServerLimits:
    """The server's limits, or Redis' defaults where CONFIG is not permitted (managed
    services rename or deny it)."""
    try:
        got = client.config_get("proto-max-bulk-len")
        got.update(client.config_get("client-query-buffer-limit"))
        return ServerLimits(int(got["proto-max-bulk-len"]), int(got["client-query-buffer-limit"]))
    except (redis.ResponseError, KeyError, ValueError):
        return DEFAULT_LIMITS


def record_size(record) -> tuple[int, int]:
    """(bytes the record adds to a batch, its longest single argument)."""
    key = len(record[3] or b"")
    value = len(record[4] or b"")
    headers = 0
    for name, header_value in record[5] or ():
        headers += len(name) + (len(header_value) if header_value else 0) + HEADER_OVERHEAD
    return key + value + headers + 40, max(key, value, headers)


def split_batches(
    records: Sequence, max_records: int, limits: ServerLimits, pipelined: int
) -> Iterator[Sequence]:
    """``records`` (one partition, in order) as consecutive batches of at most
    ``max_records`` records and the byte budget; a record too large for the server raises
    :class:`RecordTooLargeError` when its batch is reached, after the batches before it.

    On the mirror's hot path: sizes are summed inline, and a record's fields are looked at
    one by one only when its key and value alone come near a limit or it has headers."""
    budget = limits.batch_bytes(pipelined)
    single = min(limits.max_bulk, limits.query_buffer // 2)
    start, size = 0, 0
    for i, record in enumerate(records):
        key, value, headers = record[3], record[4], record[5]
        nbytes = 40 + (len(key) if key else 0) + (len(value) if value else 0)
        if headers or nbytes > single:
            nbytes, longest = record_size(record)
            if longest > limits.max_bulk or nbytes > limits.query_buffer // 2:
                if i > start:
                    yield records[start:i]
                raise _too_large(record, longest, limits)
        if i > start and (i - start >= max_records or size + nbytes > budget):
            yield records[start:i]
            start, size = i, 0
        size += nbytes
    if start < len(records):
        yield records[start:]


def _too_large(record, longest: int, limits: ServerLimits) -> RecordTooLargeError:
    return RecordTooLargeError(
        f"partition {record.partition} offset {record.offset}: the record has a "
        f"{longest:,}-byte field, more than this Redis server takes in one argument "
        f"(proto-max-bulk-len {limits.max_bulk:,}, client-query-buffer-limit "
        f"{limits.query_buffer:,}); raise them (CONFIG SET proto-max-bulk-len ...) and "
        "rerun: everything before this offset was copied, nothing from it on"
    )
