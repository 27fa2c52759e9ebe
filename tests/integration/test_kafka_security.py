"""SASL_SSL (SCRAM-SHA-512) on a real Apache Kafka broker, with a CA and server certificate
this test makes: backfill, validate and the DualWriter connect through the config's
``kafka.security`` block with both clients, secrets by reference; a wrong password or a
wrong CA is a one-line error."""

from __future__ import annotations

import secrets

import pytest

from ferry.config import parse_config
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.live.dualwriter import DualWriter
from ferry.services.apache_kafka import SaslSsl
from ferry.services.seed import SeedRecord, create_topic, produce_records
from ferry.services.servers import _terminate, free_port, start_apache_kafka

from .certs import make_ca, make_server_keystore
from .helpers import backfill_cli_error, by_partition, read_kafka_raw, read_redis_records

pytestmark = pytest.mark.requires_broker(
    ["apache"], reason="Tansu 0.6 has no SASL_SSL listener in this setup"
)
USER = "ferry-mirror"


@pytest.fixture(scope="module")
def secure_broker(services, tmp_path_factory):
    """A second broker of the same version, with a SASL_SSL listener, for this module."""
    if services.kafka_kind != "apache":
        pytest.skip(f"{services.kafka_kind} broker: Tansu 0.6 has no SASL_SSL listener here")
    folder = tmp_path_factory.mktemp("secure-kafka")
    ca_key, ca_cert = make_ca(folder, "ferry-test-ca")
    make_ca(folder, "other-ca")
    password = secrets.token_urlsafe(16)
    secure = SaslSsl(free_port(), make_server_keystore(folder, ca_key, ca_cert), {USER: password})
    proc, plaintext, _ = start_apache_kafka(folder, services.kafka_version, secure)
    (folder / "password").write_text(password + "\n")
    yield {
        "plaintext": plaintext,
        "sasl_ssl": f"127.0.0.1:{secure.port}",
        "folder": folder,
    }
    _terminate(proc.pid)


def secure_config(broker, services, name, client, password_file=None, cafile=None) -> dict:
    return {
        "name": name,
        "kafka": {
            "bootstrap_servers": broker["sasl_ssl"],
            "topic": name,
            "client": client,
            "security": {
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "username": {"env": "FERRY_TEST_KAFKA_USER"},
                "password": {"file": str(password_file or broker["folder"] / "password")},
                "ssl_cafile": str(cafile or broker["folder"] / "ferry-test-ca.pem"),
            },
        },
        "redis": {"url": services.redis_url},
    }


@pytest.fixture
def secure_topic(secure_broker, request, monkeypatch, redis_client):
    monkeypatch.setenv("FERRY_TEST_KAFKA_USER", USER)
    name = "sec-" + request.node.name.split("[")[0][-30:].replace("_", "-")
    name += "-" + secrets.token_hex(3)
    create_topic(secure_broker["plaintext"], name, 2)
    records = [
        SeedRecord(i % 2, b"k%d" % i, b"v%d" % i, (), 1_700_000_000_000 + i) for i in range(500)
    ]
    produce_records(secure_broker["plaintext"], name, records)
    yield name
    keys = list(redis_client.scan_iter(match=f"*{{{name}}}*"))
    if keys:
        redis_client.delete(*keys)


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_backfill_validate_and_write_over_sasl_ssl(
    secure_broker, secure_topic, services, redis_client, client
):
    doc = secure_config(secure_broker, services, secure_topic, client)
    config = parse_config(doc, "<secure>")
    assert backfill(config, progress=False).records == 500
    report = validate_stream(config)  # the other client, over the same listener
    assert report.ok and report.client != client, report.failures()

    writer = DualWriter(config)  # kafka-only: the writer's producer authenticates too
    try:
        for i in range(20):
            writer.send(b"live-%d" % i, key=b"k", partition=0)
        writer.flush()
    finally:
        writer.close()
    backfill(config, progress=False)
    kafka = read_kafka_raw(secure_broker["plaintext"], secure_topic, 2)
    stream = read_redis_records(redis_client, config.redis.stream)
    assert by_partition(r for _, r in stream) == kafka
    assert sum(map(len, kafka.values())) == 520


@pytest.mark.kafka_side
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
@pytest.mark.parametrize("fault", ["password", "ca"])
def test_wrong_password_or_ca_is_a_one_line_error(
    secure_broker, secure_topic, services, tmp_path, client, fault
):

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    doc = secure_config(
        secure_broker,
        services,
        secure_topic,
        client,
        password_file=wrong if fault == "password" else None,
        cafile=secure_broker["folder"] / "other-ca.pem" if fault == "ca" else None,
    )
    line, _ = backfill_cli_error(doc, tmp_path)
    assert secure_broker["sasl_ssl"] in line
    expect = "authentication" if fault == "password" else "certificate"
    assert expect in line.lower(), line
