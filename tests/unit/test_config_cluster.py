"""A Redis Cluster target: ``redis.cluster.addresses`` (seed nodes), with or without redis.url."""

import pytest

from ferry.config import parse_config
from ferry.errors import ConfigError


def doc(redis: dict) -> dict:
    return {
        "name": "payments",
        "kafka": {"bootstrap_servers": "k1:9092", "topic": "payments"},
        "redis": redis,
    }


def test_seed_nodes_alone_make_a_cluster_target():
    config = parse_config(doc({"cluster": {"addresses": ["n0:7000", "n1:7001"]}}), "p.yaml")
    assert config.redis.is_cluster
    assert config.redis.url == "redis://n0:7000/0"  # the first seed: every reader has a URL
    assert config.redis.cluster_seeds() == [("n0", 7000), ("n1", 7001)]


def test_url_and_seed_nodes_are_seeds_together_without_repeats():
    redis = {"url": "redis://n2:7002/0", "cluster": {"addresses": ["n0:7000", "n2:7002"]}}
    config = parse_config(doc(redis), "p.yaml")
    assert config.redis.cluster_seeds() == [("n2", 7002), ("n0", 7000)]


def test_a_standalone_target_is_not_a_cluster():
    config = parse_config(doc({"url": "redis://r1:6379/0"}), "p.yaml")
    assert not config.redis.is_cluster
    assert config.redis.cluster_seeds() == [("r1", 6379)]


def test_tls_without_url_makes_a_rediss_seed(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    redis = {"cluster": {"addresses": ["[::1]:7000"]}, "tls": {"ca_file": str(ca)}}
    config = parse_config(doc(redis), "p.yaml")
    assert config.redis.url == "rediss://[::1]:7000/0"
    assert config.redis.tls.ca_file == str(ca)


@pytest.mark.parametrize(
    "redis_doc, words",
    [
        ({"cluster": {"addresses": ["n0"]}}, r"p\.yaml: redis\.cluster\.addresses: 'n0' is not"),
        ({"cluster": {"addresses": []}}, r"redis\.cluster\.addresses: needs at least one"),
        ({"cluster": {}}, r"redis\.cluster\.addresses: is required"),
        ({"cluster": ["n0:1"]}, r"redis\.cluster: expected a mapping"),
        (
            {"url": "embedded", "cluster": {"addresses": ["n0:1"]}},
            r"redis\.cluster: the embedded Redis is one standalone server",
        ),
        (
            {"url": "unix:///tmp/r.sock", "cluster": {"addresses": ["n0:1"]}},
            r"redis\.url: a Redis Cluster is reached over TCP",
        ),
        (
            {"cluster": {"addresses": ["n0:1"]}, "tls": {"insecure_skip_verify": True}, "x": 1},
            r"redis: unknown field\(s\): x",
        ),
    ],
)
def test_bad_cluster_targets_name_the_field(redis_doc, words):
    with pytest.raises(ConfigError, match=words):
        parse_config(doc(redis_doc), "p.yaml")
