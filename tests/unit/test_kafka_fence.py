"""The Kafka write fence's pure parts: which ACLs it creates, and the one line each broker
answer becomes; no sockets."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from ferry.config import parse_config
from ferry.errors import KafkaError, KafkaUnreachableError
from ferry.kafka.fence import (
    KafkaFenceError,
    KafkaFenceNotAllowed,
    KafkaFenceUnavailable,
    KafkaFenceWouldCutReaders,
    allow_all,
    deny_write,
    explain,
    plan_fence,
    same_acl,
)
from ferry.services.apache_kafka import Authorizer

TOPIC = "orders"


def config(**security):
    kafka = {"bootstrap_servers": "k:9092", "topic": TOPIC}
    if security:
        kafka["security"] = security
    return parse_config({"name": "s", "kafka": kafka, "redis": {"url": "redis://r/0"}}, "<t>")


def acl(name=TOPIC, principal="User:reader", op=AclOperation.READ, pattern=None, perm=None):
    return AclBinding(
        ResourceType.TOPIC,
        name,
        pattern or ResourcePatternType.LITERAL,
        principal,
        "*",
        op,
        perm or AclPermissionType.ALLOW,
    )


def test_the_fence_is_a_literal_deny_write_from_any_host():
    fence = deny_write(TOPIC)
    assert (fence.restype, fence.name, fence.resource_pattern_type) == (
        ResourceType.TOPIC,
        TOPIC,
        ResourcePatternType.LITERAL,
    )
    assert (fence.principal, fence.host) == ("User:*", "*")
    assert (fence.operation, fence.permission_type) == (AclOperation.WRITE, AclPermissionType.DENY)


def test_a_topic_under_acls_gets_only_the_deny():
    existing = [acl(), acl("ord", pattern=ResourcePatternType.PREFIXED)]
    assert [
        same_acl(a, deny_write(TOPIC)) for a in plan_fence(TOPIC, "User:*", existing, False)
    ] == [True]
    # even when the caller says the broker allows everyone: ACLs already govern the topic
    assert len(plan_fence(TOPIC, "User:*", existing, True)) == 1


def test_a_rerun_creates_nothing():
    assert plan_fence(TOPIC, "User:*", [acl(), deny_write(TOPIC)], False) == []
    assert plan_fence(TOPIC, "User:app", [deny_write(TOPIC, "User:app")], True) == []
    # another principal's fence is not this one
    assert len(plan_fence(TOPIC, "User:*", [deny_write(TOPIC, "User:app")], False)) == 1


def test_a_topic_without_acls_is_refused_unless_the_broker_allows_everyone():
    with pytest.raises(KafkaFenceWouldCutReaders) as refused:
        plan_fence(TOPIC, "User:*", [], False)
    line = str(refused.value)
    assert "\n" not in line and "'orders'" in line and "allow.everyone.if.no.acl.found" in line
    planned = plan_fence(TOPIC, "User:*", [], True)
    assert len(planned) == 2
    assert same_acl(planned[0], allow_all(TOPIC)) and same_acl(planned[1], deny_write(TOPIC))
    assert planned[0].operation == AclOperation.ALL and planned[0].principal == "User:*"


def test_same_acl_compares_every_field():
    assert same_acl(acl(), acl())
    assert not same_acl(acl(), acl(perm=AclPermissionType.DENY))
    assert not same_acl(acl(), acl(op=AclOperation.WRITE))
    assert not same_acl(acl(), acl(principal="User:other"))
    assert not same_acl(acl(), acl(pattern=ResourcePatternType.PREFIXED))


def failure(code: int) -> KafkaException:
    return KafkaException(CKError(code))


def test_security_disabled_names_the_broker_and_the_authorizer():
    error = explain(failure(CKError.SECURITY_DISABLED), config(), "k:9092", "CreateAcls")
    line = str(error)
    assert isinstance(error, KafkaFenceUnavailable) and "\n" not in line
    assert "k:9092" in line
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in line


@pytest.mark.parametrize(
    "code", [CKError.CLUSTER_AUTHORIZATION_FAILED, CKError.TOPIC_AUTHORIZATION_FAILED]
)
def test_not_authorized_names_the_principal_and_the_permission(code, monkeypatch):
    monkeypatch.setenv("FERRY_USER", "ferry-admin")
    cfg = config(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username={"env": "FERRY_USER"},
        password={"env": "FERRY_USER"},
    )
    error = explain(failure(code), cfg, "k:9092", "CreateAcls")
    line = str(error)
    assert isinstance(error, KafkaFenceNotAllowed) and "\n" not in line
    assert "User:ferry-admin" in line and "ALTER" in line and "cluster" in line


def test_unreachable_and_other_errors_stay_kafka_errors():
    gone = explain(failure(CKError._TRANSPORT), config(), "k:9092", "DescribeAcls")
    assert isinstance(gone, KafkaUnreachableError) and "k:9092" in str(gone)
    other = explain(failure(CKError.INVALID_REQUEST), config(), "k:9092", "DeleteAcls")
    assert type(other) is KafkaFenceError and isinstance(other, KafkaError)
    assert "DeleteAcls" in str(other)


def test_authorizer_properties():
    props = Authorizer(super_users=("User:ANONYMOUS", "User:admin")).properties()
    assert props == {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS;User:admin",
        "allow.everyone.if.no.acl.found": "true",
    }
    assert (
        Authorizer(allow_everyone_if_no_acl=False).properties()["allow.everyone.if.no.acl.found"]
        == "false"
    )
