"""Validation's block tallies: a record hashes the same from Kafka and from its stream entry,
a block differs when any record of it is lost, doubled, moved or altered, and the blocks that
differ are compared record by record with the old rules."""

from ferry.core.entries import FIELDS, KafkaRecord, record_args
from ferry.core.tallies import (
    BLOCK,
    add,
    block_range,
    compare_block,
    differing,
    entry_fields_hash,
    record_hash,
)


def stored(record: KafkaRecord) -> dict[bytes, bytes]:
    """The fields the ingest script stores for a record, as Redis returns them."""
    offset, ts, flags, key, value, headers = record_args(record)
    values = [record.partition, offset, ts, flags, key, value, headers]
    return {
        f: v if isinstance(v, bytes) else b"%d" % v for f, v in zip(FIELDS, values, strict=True)
    }


def rec(o, value=b"v", key=b"k", headers=(), p=0):
    return KafkaRecord(p, o, 1000 + o, key, value, headers)


RECORDS = [
    rec(0),
    rec(1, key=None),
    rec(2, value=None),
    rec(3, key=b"", value=b""),
    rec(4, headers=(("a", b"1"), ("b", None))),
]


def test_a_record_hashes_the_same_from_kafka_and_from_its_entry():
    for r in RECORDS:
        assert record_hash(r) == entry_fields_hash(stored(r))


def test_null_and_empty_and_headers_are_told_apart():
    hashes = {record_hash(r._replace(offset=0)) for r in RECORDS}
    assert len(hashes) == len(RECORDS)


def tally(records):
    blocks = {}
    for r in records:
        add(blocks, r.partition, r.offset, record_hash(r), b"%d-0" % r.offset)
    return blocks


def test_equal_sides_differ_nowhere():
    assert differing(tally(RECORDS), tally(RECORDS)) == []


def test_values_swapped_between_two_offsets_make_the_block_differ():
    swapped = [rec(0, value=b"y"), rec(1, value=b"x")]
    assert differing(tally([rec(0, value=b"x"), rec(1, value=b"y")]), tally(swapped)) == [(0, 0)]


def test_a_lost_record_a_double_and_a_block_on_one_side_only():
    kafka = tally([rec(0), rec(1), rec(BLOCK)])
    assert differing(tally([rec(0)]), kafka) == [(0, 0), (0, 1)]
    assert differing(tally([rec(0), rec(1), rec(1), rec(BLOCK)]), kafka) == [(0, 0)]
    assert differing(tally([rec(0), rec(1), rec(BLOCK), rec(5, p=1)]), kafka) == [(1, 0)]


def test_block_boundaries_and_the_ids_it_spans():
    assert block_range(1) == (BLOCK, 2 * BLOCK - 1)
    blocks = tally([rec(BLOCK - 1), rec(BLOCK), rec(2 * BLOCK - 1)])
    assert set(blocks) == {(0, 0), (0, 1)}
    assert blocks[(0, 1)].count == 2
    assert (blocks[(0, 1)].first_id, blocks[(0, 1)].last_id) == (b"4096-0", b"8191-0")


def test_a_differing_block_is_compared_record_by_record():
    kafka = [rec(0), rec(1), rec(2), rec(3)]
    redis = [rec(0), rec(0), rec(2, value=b"other"), rec(9, key=b"gone"), rec(10, value=None)]
    found = compare_block(redis, kafka)
    assert (found.duplicates, found.missing, found.first_missing, found.mismatched) == (1, 2, 1, 1)
    assert found.unmatched == {9: b"gone", 10: None}  # a tombstone keeps no key


def test_a_block_equal_record_by_record_is_clean():
    found = compare_block(RECORDS, RECORDS)
    assert (found.duplicates, found.missing, found.mismatched, found.unmatched) == (0, 0, 0, {})
