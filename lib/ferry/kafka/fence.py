"""Fencing Kafka writers off a migrated topic with a Kafka ACL (``ferry finish --fence-kafka``).

Once a stream is redis-only, a producer that still writes to the Kafka topic (a zombie: an old
deployment, a forgotten cron job) loses records silently. On Apache Kafka with an authorizer
(KRaft: ``authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer``) the
fence is one ACL: DENY WRITE on the topic (LITERAL) for ``User:*`` from any host. DENY wins over
every ALLOW, so every principal's next produce is answered TOPIC_AUTHORIZATION_FAILED; super
users (``super.users``) are never checked against ACLs and are not fenced.

A DENY is still an ACL on the topic: once any ACL matches a topic, the broker's
``allow.everyone.if.no.acl.found`` default no longer applies to it, so on a broker that relies
on that default (no ACL matches the topic) a DENY WRITE alone would also cut every reader
(READ and DESCRIBE denied). The broker does not tell its clients that setting (DescribeConfigs
masks it), so a topic no ACL matches is fenced only when the caller says the broker allows
everyone (``allow_everyone=True``); the fence then also adds ALLOW ALL for ``User:*`` on the
topic: with the DENY, exactly "everything but writes", as before. Without it, ferry refuses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)

from ferry.config import StreamConfig
from ferry.errors import KafkaError, KafkaUnreachableError
from ferry.kafka.broker import broker_traits
from ferry.kafka.source import CONNECT_TIMEOUT_S, resolve_bootstrap
from ferry.services.apache_kafka import STANDARD_AUTHORIZER

ANY_HOST = "*"
EVERYONE = "User:*"
FENCE_OPERATION = "WRITE"
VISIBLE_TIMEOUT_S = 30.0  # until the broker's metadata shows an ACL the controller accepted


class KafkaFenceError(KafkaError):
    """The Kafka topic could not be fenced (or unfenced)."""


class KafkaFenceUnavailable(KafkaFenceError):
    """The broker enforces no ACLs (no authorizer configured, or a broker without ACLs)."""


class KafkaFenceNotAllowed(KafkaFenceError):
    """Ferry's Kafka principal may not describe or change ACLs."""


class KafkaFenceWouldCutReaders(KafkaFenceError):
    """No ACL matches the topic: a DENY alone would end the allow-everyone default for it."""


@dataclass(frozen=True)
class KafkaFence:
    topic: str
    principal: str  # "User:*"
    operation: str  # "WRITE"
    created: bool  # False when the ACL was already there (rerun is a no-op)
    allow_all: bool = False  # an ALLOW ALL for User:* on the topic keeps readers reading


def deny_write(topic: str, principal: str = EVERYONE) -> AclBinding:
    """The fence: DENY WRITE on ``topic`` (LITERAL) for ``principal`` from any host."""
    return AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        principal,
        ANY_HOST,
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )


def allow_all(topic: str) -> AclBinding:
    """What a topic under ``allow.everyone.if.no.acl.found=true`` gave everyone, as an ACL."""
    return AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        EVERYONE,
        ANY_HOST,
        AclOperation.ALL,
        AclPermissionType.ALLOW,
    )


def matching_filter(topic: str) -> AclBindingFilter:
    """Every ACL that applies to ``topic``: its literal ones, prefixed ones and the wildcard."""
    return AclBindingFilter(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.MATCH,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def exact_filter(binding: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


def same_acl(a: AclBinding, b: AclBinding) -> bool:
    fields = ("restype", "name", "resource_pattern_type", "principal", "host", "operation")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (
        a.permission_type == b.permission_type
    )


def plan_fence(
    topic: str, principal: str, existing: list[AclBinding], allow_everyone: bool
) -> list[AclBinding]:
    """The ACLs to create so that ``principal`` cannot write ``topic`` and nobody loses what
    they could do besides; [] when the fence is already there. Raises
    :class:`KafkaFenceWouldCutReaders` for a topic no ACL matches unless ``allow_everyone``."""
    fence = deny_write(topic, principal)
    if any(same_acl(fence, acl) for acl in existing):
        return []
    if existing:
        return [fence]  # ACLs govern the topic already: a DENY WRITE takes writes only
    if not allow_everyone:
        raise KafkaFenceWouldCutReaders(
            f"topic {topic!r} has no ACLs, so a DENY WRITE would also cut its readers on a "
            "broker with allow.everyone.if.no.acl.found=true: add ALLOW READ,DESCRIBE ACLs for "
            "its readers first, or fence with allow_everyone=True to keep all else open"
        )
    return [allow_all(topic), fence]


def principal_of(config: StreamConfig) -> str:
    """The principal ferry most likely is on the broker, for messages."""
    if config.kafka.username is not None:
        return f"User:{config.kafka.username.resolve()}"
    return f"the principal ferry connects as ({config.kafka.security_protocol})"


def explain(exc: BaseException, config: StreamConfig, bootstrap: str, doing: str) -> KafkaError:
    """One actionable line for what the broker answered while ``doing`` (ACL requests)."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], CKError) else None
    code = err.code() if err is not None else None
    where = f"Kafka at {bootstrap}"
    if code == CKError.SECURITY_DISABLED:
        return KafkaFenceUnavailable(
            f"{where} enforces no ACLs (SECURITY_DISABLED) so --fence-kafka cannot fence "
            f"{config.kafka.topic!r}: configure authorizer.class.name={STANDARD_AUTHORIZER}"
        )
    if code in (CKError.CLUSTER_AUTHORIZATION_FAILED, CKError.TOPIC_AUTHORIZATION_FAILED):
        return KafkaFenceNotAllowed(
            f"{where} refused {doing} for {principal_of(config)}: grant it ALTER and DESCRIBE "
            "on the cluster (kafka-acls --add --allow-principal ... --operation Alter "
            "--operation Describe --cluster), or make it a super user"
        )
    if code in (CKError._TRANSPORT, CKError._TIMED_OUT, CKError._ALL_BROKERS_DOWN):
        return KafkaUnreachableError(
            f"cannot reach {where} within {CONNECT_TIMEOUT_S:.0f}s while {doing}: {exc}"
        )
    text = err.str() if err is not None else str(exc)
    return KafkaFenceError(f"{where} answered {doing} with an error: {text}")


def authorizer_of(admin: AdminClient, meta) -> str | None:
    """A broker's ``authorizer.class.name`` ("" when none), or None when ferry may not read
    broker configs (then CreateAcls answers SECURITY_DISABLED on a broker without one)."""
    broker = str(meta.controller_id if meta.controller_id in meta.brokers else min(meta.brokers))
    resource = ConfigResource(ConfigResource.Type.BROKER, broker)
    try:
        configs = admin.describe_configs([resource], request_timeout=CONNECT_TIMEOUT_S)
        entry = configs[resource].result(timeout=CONNECT_TIMEOUT_S * 2).get("authorizer.class.name")
    except KafkaException:
        return None
    return None if entry is None else (entry.value or "")


class _Acls:
    """An admin client on the config's cluster, for ACL requests only."""

    def __init__(self, config: StreamConfig):
        from ferry.kafka.confluent_client import client_settings

        self.config = config
        self.bootstrap = resolve_bootstrap(config.kafka)
        self.admin = AdminClient(client_settings(config.kafka, self.bootstrap))
        self.topic = config.kafka.topic

    def require_acl_broker(self) -> None:
        """Refuse a broker that keeps no ACLs, before any ACL request: Tansu answers
        DescribeAcls with nothing and CreateAcls with a reply librdkafka aborts the process on;
        Apache Kafka without an authorizer answers DescribeAcls with nothing too."""
        try:
            meta = self.admin.list_topics(timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            raise explain(exc, self.config, self.bootstrap, "a metadata request") from exc
        if broker_traits(meta.cluster_id, self.config.kafka.broker).name == "tansu":
            raise KafkaFenceUnavailable(
                f"Kafka at {self.bootstrap} is Tansu, which has no ACLs, so --fence-kafka cannot "
                f"fence {self.topic!r}: it needs Apache Kafka with "
                f"authorizer.class.name={STANDARD_AUTHORIZER}"
            )
        if authorizer_of(self.admin, meta) == "":
            raise KafkaFenceUnavailable(
                f"Kafka at {self.bootstrap} enforces no ACLs (no authorizer.class.name) so "
                f"--fence-kafka cannot fence {self.topic!r}: configure "
                f"authorizer.class.name={STANDARD_AUTHORIZER}"
            )

    def describe(self, filt: AclBindingFilter) -> list[AclBinding]:
        try:
            return list(
                self.admin.describe_acls(filt, request_timeout=CONNECT_TIMEOUT_S).result(
                    timeout=CONNECT_TIMEOUT_S * 2
                )
            )
        except KafkaException as exc:
            raise explain(exc, self.config, self.bootstrap, "DescribeAcls") from exc

    def create(self, bindings: list[AclBinding]) -> None:
        if not bindings:
            return
        futures = self.admin.create_acls(bindings, request_timeout=CONNECT_TIMEOUT_S)
        for future in futures.values():
            try:
                future.result(timeout=CONNECT_TIMEOUT_S * 2)
            except KafkaException as exc:
                raise explain(exc, self.config, self.bootstrap, "CreateAcls") from exc

    def delete(self, binding: AclBinding) -> bool:
        filt = exact_filter(binding)
        futures = self.admin.delete_acls([filt], request_timeout=CONNECT_TIMEOUT_S)
        try:
            return bool(futures[filt].result(timeout=CONNECT_TIMEOUT_S * 2))
        except KafkaException as exc:
            raise explain(exc, self.config, self.bootstrap, "DeleteAcls") from exc

    def wait_visible(self, binding: AclBinding, present: bool) -> None:
        """Until the broker answering describes the ACL as ``present`` (the controller has
        accepted it; the broker applies it from its metadata log shortly after)."""
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        while True:
            found = any(same_acl(binding, acl) for acl in self.describe(exact_filter(binding)))
            if found == present:
                return
            if time.monotonic() > deadline:
                state = "show" if present else "drop"
                raise KafkaFenceError(
                    f"Kafka at {self.bootstrap} did not {state} the ACL on {self.topic!r} within "
                    f"{VISIBLE_TIMEOUT_S:.0f}s; check the controller quorum, then rerun"
                )
            time.sleep(0.05)  # polling the broker's metadata, bounded by the deadline


def fence_topic_writes(
    config: StreamConfig, principal: str = EVERYONE, *, allow_everyone: bool = False
) -> KafkaFence:
    """DENY WRITE on the config's topic for ``principal`` from any host; a rerun is a no-op
    (``created=False``). ``allow_everyone``: the broker runs
    ``allow.everyone.if.no.acl.found=true``; needed to fence a topic no ACL matches (module
    docstring)."""
    acls = _Acls(config)
    acls.require_acl_broker()
    existing = acls.describe(matching_filter(acls.topic))
    bindings = plan_fence(acls.topic, principal, existing, allow_everyone)
    acls.create(bindings)
    fence = deny_write(acls.topic, principal)
    acls.wait_visible(fence, present=True)
    opened = any(same_acl(allow_all(acls.topic), acl) for acl in [*existing, *bindings])
    return KafkaFence(acls.topic, principal, FENCE_OPERATION, bool(bindings), opened)


def read_topic_fence(config: StreamConfig) -> KafkaFence | None:
    """The topic's write fence (``User:*``'s first), or None when no DENY WRITE is on it."""
    acls = _Acls(config)
    acls.require_acl_broker()
    found = acls.describe(matching_filter(acls.topic))
    fences = [
        acl
        for acl in found
        if acl.resource_pattern_type == ResourcePatternType.LITERAL
        and acl.operation == AclOperation.WRITE
        and acl.permission_type == AclPermissionType.DENY
        and acl.host == ANY_HOST
        and acl.name == acls.topic
    ]
    if not fences:
        return None
    fences.sort(key=lambda acl: acl.principal != EVERYONE)
    opened = any(same_acl(allow_all(acls.topic), acl) for acl in found)
    return KafkaFence(acls.topic, fences[0].principal, FENCE_OPERATION, False, opened)


def lift_topic_fence(
    config: StreamConfig, principal: str = EVERYONE, *, allow_everyone: bool = False
) -> bool:
    """Remove the write fence; True when there was one. With ``allow_everyone`` (the broker
    runs allow.everyone.if.no.acl.found=true) the ALLOW ALL for ``User:*`` goes too when it is
    then the only ACL matching the topic: the topic is back on the default it was fenced from.
    Without, it stays (it grants what that default would)."""
    acls = _Acls(config)
    acls.require_acl_broker()
    fence = deny_write(acls.topic, principal)
    removed = acls.delete(fence)
    acls.wait_visible(fence, present=False)
    if allow_everyone:
        left = acls.describe(matching_filter(acls.topic))
        if len(left) == 1 and same_acl(left[0], allow_all(acls.topic)):
            acls.delete(left[0])
            acls.wait_visible(left[0], present=False)
    return removed
