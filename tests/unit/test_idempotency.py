"""Idempotency keys of the consumer helper: how they are built, without a server."""

import pytest
from redis.crc import key_slot

from ferry.core.entries import REDIS_ORIGIN, KafkaRecord
from ferry.live.idempotency import (
    DEFAULT_TTL_S,
    default_key,
    key_builder,
    processed_key,
    processed_key_prefix,
)


def record(partition=0, offset=7, value=b'{"id": "pay_1"}') -> KafkaRecord:
    return KafkaRecord(partition, offset, 1_700_000_000_000, b"k", value)


def test_a_kafka_origin_entry_is_keyed_by_partition_and_offset():
    assert default_key("1700000000000-0", record(2, 41)) == b"po:2:41"
    # the entry ID does not matter: the same record mirrored again has the same key
    assert default_key("1700000000001-3", record(2, 41)) == b"po:2:41"
    assert default_key("1-0", record(2, 42)) != default_key("1-0", record(2, 41))
    assert default_key("1-0", record(3, 41)) != default_key("1-0", record(2, 41))


def test_a_redis_first_entry_is_keyed_by_its_entry_id():
    first = record(1, REDIS_ORIGIN)
    assert default_key("1700000000000-5", first) == b"id:1700000000000-5"
    assert default_key("1700000000000-6", first) != default_key("1700000000000-5", first)


def test_a_key_function_of_the_record_gives_the_business_key():
    import json

    build = key_builder(lambda r: json.loads(r.value)["id"])
    assert build("1-0", record(0, 1)) == build("2-0", record(5, 9)) == b"key:pay_1"
    assert key_builder(lambda r: r.key)("1-0", record()) == b"key:k"  # bytes kept as they are
    assert key_builder(None)("1-0", record(0, 3)) == b"po:0:3"  # none given: the default


def test_a_key_function_returning_neither_str_nor_bytes_is_refused():
    with pytest.raises(TypeError, match="idempotency key function returned int"):
        key_builder(lambda r: 12)("1-0", record())


def test_processed_keys_carry_the_migrations_hash_tag_and_share_the_streams_slot():
    prefix = processed_key_prefix("{payments}", "billing")
    assert prefix == b"{payments}:ferry:done:billing:"
    name = processed_key("{payments}", "billing", b"po:2:41")
    assert name == b"{payments}:ferry:done:billing:po:2:41"
    assert key_slot(name) == key_slot(b"{payments}:stream")
    # a business key with braces of its own does not move the key to another slot
    odd = processed_key("{payments}", "billing", b"key:{other}")
    assert key_slot(odd) == key_slot(b"{payments}:stream")


def test_the_default_ttl_is_seven_days():
    assert DEFAULT_TTL_S == 7 * 24 * 3600
