"""Idempotency keys for the consumer helper: the postmortem's exactly-once device.

Each entry a consumer processes gets a key; once its effect is done the key is recorded in
Redis (``SET key entry-id NX EX ttl``) and an entry whose key is recorded is acknowledged
without being processed again. Keys are, by default, ``(partition, offset)`` for an entry
mirrored from Kafka (the same record mirrored twice has the same key) and the entry ID for
an entry written to Redis first (it has no offset); a key function of the record gives a
business key instead (a payment ID, so one payment sent twice is applied once).

Recorded keys live under the migration's hash tag, ``{name}:ferry:done:GROUP:KEY``, so they
share the stream's slot on Redis Cluster and can be written in the same ``MULTI`` as the
``XACK`` and the handler's own writes. Keys are per group: each group is its own reader.

The building functions here are pure; :class:`ProcessedKeys` is the Redis side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import redis

from ferry.core.entries import REDIS_ORIGIN, KafkaRecord

DEFAULT_TTL_S = 7 * 24 * 3600  # a week: longer than any redelivery or replay window
logger = logging.getLogger("ferry.live.idempotency")

# a business key from the record: the same key means the same effect
KeyFunction = Callable[[KafkaRecord], str | bytes]
# (entry ID, record) -> the entry's idempotency key
KeyBuilder = Callable[[str, KafkaRecord], bytes]


def default_key(entry_id: str, record: KafkaRecord) -> bytes:
    """``po:P:O`` for a Kafka-origin entry; ``id:ENTRY-ID`` for one written to Redis first."""
    if record.offset == REDIS_ORIGIN:
        return b"id:" + entry_id.encode()
    return b"po:%d:%d" % (record.partition, record.offset)


def key_builder(key_function: KeyFunction | None) -> KeyBuilder:
    """The key of each entry: :func:`default_key`, or ``key:`` + the function's value (the
    prefix keeps business keys apart from default ones)."""
    if key_function is None:
        return default_key

    def business_key(entry_id: str, record: KafkaRecord) -> bytes:
        key = key_function(record)
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, bytes):
            raise TypeError(
                f"idempotency key function returned {type(key).__name__}, not str or bytes"
            )
        return b"key:" + key

    return business_key


def processed_key_prefix(tag: str, group: str) -> bytes:
    return f"{tag}:ferry:done:{group}:".encode()


def processed_key(tag: str, group: str, key: bytes) -> bytes:
    """The Redis key recording that ``key`` was processed by ``group``. The tag comes first,
    so the slot is the tag's whatever braces the key itself holds."""
    return processed_key_prefix(tag, group) + key


class ProcessedKeys:
    """The processed-key record of one consumer group."""

    def __init__(
        self,
        client: redis.Redis,
        tag: str,
        group: str,
        key_function: KeyFunction | None = None,
        ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        if not isinstance(ttl_s, int) or ttl_s <= 0:
            raise ValueError(
                f"idempotency_ttl_s must be a positive number of seconds, not {ttl_s!r}"
            )
        self.client, self.tag, self.group, self.ttl_s = client, tag, group, ttl_s
        self._build = key_builder(key_function)

    def name_of(self, entry_id: str, record: KafkaRecord) -> bytes:
        """The Redis key for this entry (the key function may raise on a malformed record)."""
        return processed_key(self.tag, self.group, self._build(entry_id, record))

    def recorded(self, names: Sequence[bytes]) -> list[bool]:
        """Which of ``names`` are recorded (one MGET: the keys share a slot)."""
        if not names:
            return []
        return [value is not None for value in self.client.mget(list(names))]

    def record(self, pipe, name: bytes, entry_id: str) -> None:
        """Queue the record on ``pipe`` (inside the MULTI with the XACK): the value names the
        entry that did the work; NX keeps the first one's."""
        pipe.set(name, entry_id, nx=True, ex=self.ttl_s)


def log_duplicates(group: str, entries: Sequence[tuple[str, bytes]]) -> None:
    """One line per batch of duplicates: how many, and the first entry and key."""
    if entries:
        entry_id, name = entries[0]
        logger.info(
            "group %s: %d duplicate(s) acknowledged without processing (first: entry %s, key %s)",
            group,
            len(entries),
            entry_id,
            name.decode(errors="backslashreplace"),
        )
