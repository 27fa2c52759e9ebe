"""The independent check: Kafka-origin records match by (partition, offset), shadows by ID."""

from ferry.core.entries import REDIS_ORIGIN, SHADOW_HEADER, KafkaRecord, record_args
from ferry.core.reconcile import reconcile


def kafka(p, o, v, shadow=None):
    headers = ((SHADOW_HEADER, shadow),) if shadow else ()
    return KafkaRecord(p, o, 1000 + o, b"k", v, headers)


def entry(p, o, v, ts=None):
    return KafkaRecord(p, o, ts if ts is not None else 1000 + o, b"k", v, ())


KAFKA = [kafka(0, 0, b"a"), kafka(0, 1, b"b"), kafka(0, 2, b"c", shadow=b"9-0"), kafka(1, 0, b"x")]
REDIS = [
    (b"1-0", entry(0, 0, b"a")),
    (b"2-0", entry(1, 0, b"x")),
    (b"3-0", entry(0, 1, b"b")),
    (b"9-0", entry(0, REDIS_ORIGIN, b"c", ts=1002)),
]


def test_a_faithful_migration_with_shadows_is_clean():
    result = reconcile(KAFKA, REDIS)
    assert result.ok
    assert (result.kafka, result.redis, result.redis_first, result.lost) == (4, 4, 1, 0)


def test_every_fault_is_counted():
    redis = [
        (b"1-0", entry(0, 0, b"a")),
        (b"1-1", entry(0, 0, b"a")),  # doubled
        (b"9-0", entry(0, REDIS_ORIGIN, b"C", ts=1002)),  # altered
        (b"9-1", entry(0, 1, b"b")),  # after the shadowed entry: misordered
        (b"9-2", entry(0, 7, b"?")),  # Kafka never had it
        (b"9-3", entry(0, REDIS_ORIGIN, b"d")),  # written first, no shadow
    ]  # partition 1's record is lost
    result = reconcile(KAFKA, redis)
    assert not result.ok
    assert (result.lost, result.duplicated, result.mismatched) == (1, 1, 1)
    assert (result.misordered, result.extra, result.unshadowed) == (1, 1, 1)


def test_a_second_shadow_of_one_entry_is_a_duplicate():
    result = reconcile([*KAFKA, kafka(0, 3, b"c", shadow=b"9-0")], REDIS)
    assert result.duplicated == 1


def test_a_shadow_is_passed_to_the_script_as_its_entry_id_only():
    assert record_args(kafka(0, 5, b"payload", shadow=b"17-3")) == [5, 1005, 4, b"17-3", b"", b""]
    assert record_args(kafka(0, 5, b"payload"))[2:5] == [0, b"k", b"payload"]
