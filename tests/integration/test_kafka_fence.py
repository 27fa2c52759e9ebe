"""--fence-kafka on a real Apache Kafka broker that enforces ACLs (StandardAuthorizer,
allow.everyone.if.no.acl.found=true, ferry's admin a super user on the plaintext listener): a
zombie producer (SCRAM user ``app`` over SASL_SSL) is refused by the broker once the topic is
fenced, while readers keep reading; on a broker without ACLs the fence is a one-line error."""

from __future__ import annotations

import secrets
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka import KafkaError as CKError
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from ferry.config import parse_config
from ferry.kafka.fence import (
    KafkaFence,
    KafkaFenceUnavailable,
    KafkaFenceWouldCutReaders,
    fence_topic_writes,
    lift_topic_fence,
    matching_filter,
    read_topic_fence,
)
from ferry.services.apache_kafka import Authorizer, SaslSsl
from ferry.services.seed import create_topic
from ferry.services.servers import _terminate, free_port

from .certs import make_ca, make_server_keystore
from .helpers import start_authorizing_kafka

APP = "app"


@pytest.fixture(scope="module")
def acl_broker(services, tmp_path_factory):
    """A second broker of the stack's Apache version that enforces ACLs, for this module."""
    if services.kafka_kind != "apache":
        pytest.skip(f"{services.kafka_kind} broker: only Apache Kafka has an authorizer here")
    folder = tmp_path_factory.mktemp("acl-kafka")
    ca_key, ca_cert = make_ca(folder, "ferry-test-ca")
    password = secrets.token_urlsafe(16)
    secure = SaslSsl(free_port(), make_server_keystore(folder, ca_key, ca_cert), {APP: password})
    proc, plaintext = start_authorizing_kafka(
        folder, services.kafka_version, secure, Authorizer(super_users=("User:ANONYMOUS",))
    )
    yield {
        "plaintext": plaintext,
        "app": {
            "bootstrap.servers": f"127.0.0.1:{secure.port}",
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": APP,
            "sasl.password": password,
            "ssl.ca.location": str(folder / "ferry-test-ca.pem"),
        },
    }
    _terminate(proc.pid)


def fence_config(bootstrap: str, topic: str):
    """ferry's config: its admin on the plaintext listener (User:ANONYMOUS, a super user)."""
    doc = {
        "name": topic,
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic},
        "redis": {"url": "redis://127.0.0.1:1/0"},  # the fence never talks to Redis
    }
    return parse_config(doc, "<fence>")


class Zombie:
    """A still-running idempotent producer as User:app; each send waits for its report."""

    def __init__(self, settings: dict, topic: str):
        self.topic = topic
        self.producer = Producer(
            {**settings, "enable.idempotence": True, "message.timeout.ms": 15_000}
        )

    def send(self, value: bytes):
        """The delivery report's error (None: written)."""
        reports: list = []
        self.producer.produce(
            self.topic, value, partition=0, on_delivery=lambda e, m: reports.append(e)
        )
        self.producer.flush(30)
        assert len(reports) == 1, "no delivery report within 30 s"
        return reports[0]


def end_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fence-ends"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
    finally:
        consumer.close()


def read_as(settings: dict, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """Every record of partition 0, read as ``settings``' principal; an error (an
    authorization failure) fails the read."""
    consumer = Consumer(
        {
            **settings,
            "group.id": "fence-reader-" + secrets.token_hex(3),
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error() and m.error().code() == CKError._PARTITION_EOF:
                return out
            assert not m.error(), m.error()
            out.append(m.value())
        raise AssertionError(f"the reader did not reach the end of {topic} in {timeout_s:.0f}s")
    finally:
        consumer.close()


def topic_acls(bootstrap: str, topic: str) -> list:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return list(admin.describe_acls(matching_filter(topic)).result(timeout=30))


@pytest.mark.requires_broker(["apache"], reason="only Apache Kafka has an authorizer here")
def test_zombie_producer_is_refused_and_readers_keep_reading(acl_broker):
    topic = "fence-" + secrets.token_hex(4)
    create_topic(acl_broker["plaintext"], topic, 1)
    config = fence_config(acl_broker["plaintext"], topic)
    zombie = Zombie(acl_broker["app"], topic)
    for i in range(5):
        assert zombie.send(b"before-%d" % i) is None

    # no ACL matches the topic: a DENY alone would cut User:app's reads too, so ferry refuses
    with pytest.raises(KafkaFenceWouldCutReaders) as refused:
        fence_topic_writes(config)
    assert "\n" not in str(refused.value) and topic in str(refused.value)
    assert topic_acls(acl_broker["plaintext"], topic) == [] and read_topic_fence(config) is None

    fence = fence_topic_writes(config, allow_everyone=True)
    assert fence == KafkaFence(topic, "User:*", "WRITE", created=True, allow_all=True)
    err = zombie.send(b"after-fence")
    assert err is not None and err.code() == CKError.TOPIC_AUTHORIZATION_FAILED, err
    assert end_offset(acl_broker["plaintext"], topic) == 5
    assert read_as(acl_broker["app"], topic) == [b"before-%d" % i for i in range(5)]

    again = fence_topic_writes(config, allow_everyone=True)
    assert again.created is False and read_topic_fence(config) == again
    assert len(topic_acls(acl_broker["plaintext"], topic)) == 2  # the DENY and the ALLOW ALL

    assert lift_topic_fence(config, allow_everyone=True) is True
    assert read_topic_fence(config) is None and topic_acls(acl_broker["plaintext"], topic) == []
    assert zombie.send(b"after-lift") is None
    assert end_offset(acl_broker["plaintext"], topic) == 6
    assert lift_topic_fence(config) is False


@pytest.mark.requires_broker(["apache"], reason="only Apache Kafka has an authorizer here")
def test_topic_under_acls_is_fenced_with_one_deny(acl_broker):
    """Where ACLs already govern the topic, the fence adds only the DENY: User:app's ALLOW
    READ (and the DESCRIBE its ALLOW WRITE implies) still hold."""
    topic = "fence-acl-" + secrets.token_hex(4)
    create_topic(acl_broker["plaintext"], topic, 1)
    admin = AdminClient({"bootstrap.servers": acl_broker["plaintext"]})
    grants = [
        AclBinding(
            ResourceType.TOPIC,
            topic,
            ResourcePatternType.LITERAL,
            f"User:{APP}",
            "*",
            op,
            AclPermissionType.ALLOW,
        )
        for op in (AclOperation.READ, AclOperation.WRITE)
    ]
    for future in admin.create_acls(grants).values():
        future.result(timeout=30)
    config = fence_config(acl_broker["plaintext"], topic)
    zombie = Zombie(acl_broker["app"], topic)
    deadline = time.monotonic() + 30
    while zombie.send(b"granted") is not None:  # the grant reaches the broker's authorizer
        assert time.monotonic() < deadline, "User:app's ALLOW WRITE never took effect"

    fence = fence_topic_writes(config)
    assert fence == KafkaFence(topic, "User:*", "WRITE", created=True, allow_all=False)
    written = end_offset(acl_broker["plaintext"], topic)
    err = zombie.send(b"after-fence")
    assert err is not None and err.code() == CKError.TOPIC_AUTHORIZATION_FAILED, err
    assert end_offset(acl_broker["plaintext"], topic) == written
    assert len(read_as(acl_broker["app"], topic)) == written
    assert lift_topic_fence(config) is True
    assert len(topic_acls(acl_broker["plaintext"], topic)) == 2  # the grants stay


def test_broker_without_acls_is_a_one_line_error(make_stream, services):
    stream = make_stream(partitions=1)
    with pytest.raises(KafkaFenceUnavailable) as unavailable:
        fence_topic_writes(stream.config)
    line = str(unavailable.value)
    assert "\n" not in line and services.kafka_bootstrap in line
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in line
    with pytest.raises(KafkaFenceUnavailable):
        read_topic_fence(stream.config)
