import pytest

from ferry.core.entries import (
    FIELDS,
    KafkaRecord,
    decode_headers,
    encode_headers,
    entry_id_ms,
    entry_to_record,
    record_args,
    record_digest,
)


def as_fields(record: KafkaRecord) -> dict[bytes, bytes]:
    """What redis-py hands back for an entry the ingest script wrote from record_args."""
    offset, ts, flags, key, value, headers = record_args(record)
    values = [
        str(record.partition).encode(),
        str(offset).encode(),
        str(ts).encode(),
        str(flags).encode(),
        key,
        value,
        headers,
    ]
    return dict(zip(FIELDS, values, strict=True))


AWKWARD = [
    KafkaRecord(0, 0, 1, b"k", None),
    KafkaRecord(0, 1, 2, b"k", b""),
    KafkaRecord(0, 2, 3, None, b"v"),
    KafkaRecord(0, 3, 4, b"", b""),
    KafkaRecord(1, 99, -1, b"\x00\xff", b"\xc3\x28\x00"),
    KafkaRecord(2, 7, 5, b"k", b"v", (("a", b"1"), ("a", b"2"), ("n", None), ("e", b""))),
    KafkaRecord(2, 8, 5, b"k", b"v", (("ünï", b"\x00"),)),
]


@pytest.mark.parametrize("record", AWKWARD, ids=range(len(AWKWARD)))
def test_entry_round_trip_is_exact(record):
    assert entry_to_record(as_fields(record)) == record


def test_null_and_empty_are_distinct_in_flags():
    null_value = record_args(KafkaRecord(0, 0, 0, b"k", None))
    empty_value = record_args(KafkaRecord(0, 0, 0, b"k", b""))
    assert null_value[4] == empty_value[4] == b""
    assert null_value[2] == 2 and empty_value[2] == 0
    assert record_args(KafkaRecord(0, 0, 0, None, b"v"))[2] == 1


def test_headers_keep_order_duplicates_and_nulls():
    headers = (("trace", b"a"), ("trace", b"b"), ("x", None), ("x", b""), ("trace", b"c"))
    assert decode_headers(encode_headers(headers)) == headers
    assert encode_headers(()) == b""
    assert decode_headers(b"") == ()


def test_long_header_values_use_multibyte_lengths():
    headers = (("big", b"z" * 70_000),)
    encoded = encode_headers(headers)
    assert decode_headers(encoded) == headers
    assert len(encoded) == 1 + 3 + 3 + 70_000  # name len, name, 3-byte varint, value


def test_truncated_headers_are_rejected():
    encoded = encode_headers((("name", b"value"),))
    with pytest.raises(ValueError, match="truncated"):
        decode_headers(encoded[:-2])


def test_digest_tells_every_difference():
    base = KafkaRecord(0, 5, 10, b"k", b"v", (("a", b"1"),))
    variants = [
        base._replace(key=None),
        base._replace(key=b""),
        base._replace(value=None),
        base._replace(value=b""),
        base._replace(value=b"v2"),
        base._replace(timestamp_ms=11),
        base._replace(headers=()),
        base._replace(headers=(("a", None),)),
        base._replace(headers=(("a", b"1"), ("a", b"1"))),
        base._replace(key=b"kv", value=b""),
    ]
    digests = {record_digest(v) for v in variants}
    assert record_digest(base) not in digests
    assert len(digests) == len(variants)
    assert record_digest(base) == record_digest(
        base._replace(offset=6)
    )  # offset is the key, not content


def test_not_a_ferry_entry():
    with pytest.raises(ValueError, match="not a ferry entry"):
        entry_to_record({b"foo": b"bar"})


def test_entry_id_ms():
    assert entry_id_ms(b"1790000000000-3") == 1790000000000
    assert entry_id_ms("5-0") == 5
