"""librdkafka's partitioners in pure Python: the partition a producer picks for a key.

The Redis-first phases choose the partition before Kafka sees the record, so they must pick
the one the application's Kafka producer would have picked, or one account's events land in
two partitions during a rolling deploy. The names are librdkafka's (``partitioner``):

=====================  ================================  =========================
name                   a key (bytes)                     a null key
=====================  ================================  =========================
``consistent_random``  CRC32; the empty key: random      random (librdkafka's default)
``consistent``         CRC32 (the empty key: 0)          as the empty key
``murmur2``            Java murmur2 & 0x7fffffff         as the empty key
``murmur2_random``     Java murmur2 & 0x7fffffff         random (the Java client's)
``fnv1a``              FNV-1a 32-bit, absolute value     as the empty key
``fnv1a_random``       FNV-1a 32-bit, absolute value     random
``random``             random                            random
=====================  ================================  =========================

The hash is taken modulo the partition count. FNV-1a takes the absolute value of the signed
32-bit hash (librdkafka matches Sarama's reference hash partitioner). Where librdkafka picks
at random it keeps one random partition for a while ("sticky"): there is no key mapping to
keep, so any random pick is as good. The table is what librdkafka 2.x does, checked against
a real producer in ``tests/integration/test_partitioner.py``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

DEFAULT_PARTITIONER = "consistent_random"  # librdkafka's own default
PARTITIONERS = (
    "consistent_random",
    "consistent",
    "murmur2",
    "murmur2_random",
    "fnv1a",
    "fnv1a_random",
    "random",
)

_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(key: bytes) -> int:
    """Kafka's Java ``Utils.murmur2`` (seed 0x9747b28c) as an unsigned 32-bit value."""
    length = len(key)
    h = (0x9747B28C ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    left = length % 4
    if left == 3:
        h ^= key[whole + 2] << 16
    if left >= 2:
        h ^= key[whole + 1] << 8
    if left >= 1:
        h ^= key[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def fnv1a(key: bytes) -> int:
    """32-bit FNV-1a."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) & _MASK32
    return h


def _fnv1a_abs(key: bytes) -> int:
    """librdkafka's ``rd_fnv1a``: the absolute value of the hash as a signed 32-bit int."""
    h = fnv1a(key)
    return (-(h - (1 << 32))) & _MASK32 if h & 0x80000000 else h


def crc32(key: bytes) -> int:
    return zlib.crc32(key) & _MASK32


def _random(partitions: int, rng: random.Random | None) -> int:
    return (rng or random).randrange(partitions)


def partition_for(
    name: str, key: bytes | None, partitions: int, rng: random.Random | None = None
) -> int:
    """The partition librdkafka's partitioner ``name`` picks for ``key`` among ``partitions``.

    Keys that librdkafka sends to a random partition get one from ``rng`` (default: the
    ``random`` module)."""
    return partitioner(name)(key, partitions, rng)


def is_keyed(name: str, key: bytes | None) -> bool:
    """Whether ``name`` maps ``key`` to a fixed partition (else the choice is random)."""
    if name == "random":
        return False
    if name == "consistent_random":
        return bool(key)
    return key is not None or not name.endswith("_random")


def _consistent_random(key, n, rng=None):
    return crc32(key) % n if key else _random(n, rng)


def _consistent(key, n, rng=None):
    return crc32(key or b"") % n


def _murmur2(key, n, rng=None):
    return (murmur2(key or b"") & 0x7FFFFFFF) % n


def _murmur2_random(key, n, rng=None):
    return _random(n, rng) if key is None else _murmur2(key, n)


def _fnv1a(key, n, rng=None):
    return _fnv1a_abs(key or b"") % n


def _fnv1a_random(key, n, rng=None):
    return _random(n, rng) if key is None else _fnv1a(key, n)


def _any(key, n, rng=None):
    return _random(n, rng)


_BY_NAME: dict[str, Callable[[bytes | None, int, random.Random | None], int]] = {
    "consistent_random": _consistent_random,
    "consistent": _consistent,
    "murmur2": _murmur2,
    "murmur2_random": _murmur2_random,
    "fnv1a": _fnv1a,
    "fnv1a_random": _fnv1a_random,
    "random": _any,
}


def partitioner(name: str) -> Callable[[bytes | None, int, random.Random | None], int]:
    """The function ``(key, partitions, rng=None) -> partition`` of librdkafka's ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown partitioner {name!r}; librdkafka's are {', '.join(PARTITIONERS)}"
        ) from None
