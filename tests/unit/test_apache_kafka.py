"""The Apache Kafka launcher's pure parts: versions and the KRaft node's properties."""

from pathlib import Path

import pytest

from ferry.errors import ServiceError
from ferry.services.apache_kafka import KafkaListeners, SaslSsl, broker_properties, resolve_version
from ferry.services.servers import kafka_choice


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_versions_by_name_or_number(monkeypatch):
    monkeypatch.delenv("FERRY_KAFKA_VERSION", raising=False)
    assert resolve_version(None) == "3.7.2"
    assert resolve_version("3.7") == "3.7.2"
    assert resolve_version("4.x").startswith("4.")
    assert resolve_version("3.9.1") == "3.9.1"
    with pytest.raises(ServiceError, match="MAJOR.MINOR.PATCH"):
        resolve_version("latest")


def test_broker_choice_from_env(monkeypatch):
    monkeypatch.setenv("FERRY_KAFKA", "apache:4.x")
    kind, version = kafka_choice()
    assert kind == "apache" and version.startswith("4.")
    monkeypatch.setenv("FERRY_KAFKA", "tansu")
    assert kafka_choice()[0] == "tansu"
    with pytest.raises(ServiceError, match="neither 'tansu' nor 'apache'"):
        kafka_choice("redpanda")


def test_one_combined_kraft_node_on_loopback(tmp_path):
    p = props(broker_properties(tmp_path, KafkaListeners(9092, 9093), {}))
    assert p["process.roles"] == "broker,controller"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert p["auto.create.topics.enable"] == "false"  # a typo'd topic is an error
    assert p["log.dirs"] == str(tmp_path / "log")


def test_sasl_ssl_listener_beside_plaintext(tmp_path):
    secure = SaslSsl(9094, Path("/k.pem"), {"alice": "s3cret"})
    p = props(broker_properties(tmp_path, KafkaListeners(9092, 9093, 9094), secure.properties()))
    assert "SASL_SSL://127.0.0.1:9094" in p["listeners"]
    assert "SASL_SSL:SASL_SSL" in p["listener.security.protocol.map"]
    assert p["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert p["listener.name.sasl_ssl.ssl.keystore.location"] == "/k.pem"
    assert secure.format_args() == ["--add-scram", "SCRAM-SHA-512=[name=alice,password=s3cret]"]


def test_cluster_ids_never_look_like_an_option():
    from ferry.services.apache_kafka import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]  # ~31 of 2000 would start with '-' unchecked
    assert all(i[0].isalnum() and len(i) == 22 for i in ids)
