"""librdkafka's partitioners in Python: known vectors and the names a writer accepts.

The vectors were read back from a topic of 7 (and 13) partitions on the embedded broker after
producing each key with confluent-kafka 2.16 / librdkafka 2.16 and the partitioner named;
``tests/integration/test_partitioner.py`` repeats the comparison live with random keys.
"""

import random

import pytest

from ferry.config import parse_config
from ferry.errors import ConfigError
from ferry.kafka.partitioner import (
    DEFAULT_PARTITIONER,
    PARTITIONERS,
    is_keyed,
    murmur2,
    partition_for,
)

KEYS = [
    b"",
    b"a",
    b"acct_1",
    b"\x00",
    b"\xff\xfe",
    "caf\u00e9".encode(),
    bytes.fromhex("e44da7f2370d9e260e27136550a4a3a6d07f5c0c12"),
    bytes.fromhex("11e81818f8c99d5d5d9831957504d90e945de2e8f54ee781cc75f636d8509909a30016"),
]
# partition librdkafka chose for KEYS[i] among 7 partitions (None: it chose at random)
SEEN_7 = {
    "consistent_random": [None, 4, 5, 2, 1, 5, 2, 3],
    "consistent": [0, 4, 5, 2, 1, 5, 2, 3],
    "murmur2": [2, 5, 1, 0, 0, 6, 1, 5],
    "murmur2_random": [2, 5, 1, 0, 0, 6, 1, 5],
    "fnv1a": [2, 6, 1, 5, 1, 1, 4, 2],
    "fnv1a_random": [2, 6, 1, 5, 1, 1, 4, 2],
}
# a null key: the partitioners without _random hash it as the empty key
NULL_KEY = {
    7: {"consistent": 0, "murmur2": 2, "fnv1a": 2},
    13: {"consistent": 0, "murmur2": 11, "fnv1a": 6},
}


@pytest.mark.parametrize("name", sorted(SEEN_7))
def test_each_partitioner_picks_what_librdkafka_picked(name):
    for key, seen in zip(KEYS, SEEN_7[name], strict=True):
        if seen is None:
            assert not is_keyed(name, key)
        else:
            assert is_keyed(name, key)
            assert partition_for(name, key, 7) == seen, key


@pytest.mark.parametrize("partitions", [7, 13])
def test_a_null_key_is_the_empty_key_unless_the_partitioner_is_random(partitions):
    for name, seen in NULL_KEY[partitions].items():
        assert is_keyed(name, None)
        assert partition_for(name, None, partitions) == seen


def test_random_choices_spread_and_come_from_the_rng_given():
    for name, key in [
        ("consistent_random", None),
        ("consistent_random", b""),
        ("murmur2_random", None),
        ("fnv1a_random", None),
        ("random", b"acct_1"),
    ]:
        assert not is_keyed(name, key)
        picks = [partition_for(name, key, 7, random.Random(seed)) for seed in range(50)]
        assert len(set(picks)) > 3, (name, key)
        assert picks == [partition_for(name, key, 7, random.Random(seed)) for seed in range(50)]


def test_murmur2_is_kafkas_java_murmur2():
    # Kafka's own Utils.murmur2 vectors (signed Java ints)
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, signed in java.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key


def test_the_default_is_librdkafkas_default():
    assert DEFAULT_PARTITIONER == "consistent_random"
    config = parse_config(_doc(), "<t>")
    assert config.writer.partitioner == "consistent_random"


def _doc(**extra):
    return {
        "name": "t",
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic": "t"},
        "redis": {"url": "redis://127.0.0.1:1"},
        **extra,
    }


@pytest.mark.parametrize("name", PARTITIONERS)
def test_the_config_takes_every_librdkafka_name(name):
    assert parse_config(_doc(writer={"partitioner": name}), "<t>").writer.partitioner == name


def test_an_unknown_partitioner_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"writer\.partitioner: 'murmur3' is not one of"):
        parse_config(_doc(writer={"partitioner": "murmur3"}), "<t>")
    with pytest.raises(ConfigError, match=r"writer: unknown field\(s\): partitoner"):
        parse_config(_doc(writer={"partitoner": "murmur2"}), "<t>")


def test_the_dual_writer_refuses_an_unknown_partitioner_before_connecting():
    import ferry

    config = parse_config(_doc(), "<t>")
    with pytest.raises(ConfigError, match=r"DualWriter partitioner: 'crc32' is not one of"):
        ferry.DualWriter(config, partitioner="crc32")
    with pytest.raises(ConfigError, match=r"producer_settings\['partitioner'\]: 'java'"):
        ferry.DualWriter(config, producer_settings={"partitioner": "java"})
    with pytest.raises(ConfigError, match="two partitioners"):
        ferry.DualWriter(config, partitioner="murmur2", producer_settings={"partitioner": "fnv1a"})
