"""KafkaSource on kafka-python (pure Python; install crc32c with it for speed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kerr
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from ferry.config import KafkaSettings
from ferry.core.entries import KafkaRecord
from ferry.errors import KafkaError, KafkaUnreachableError, OffsetRangeError, TopicNotFoundError
from ferry.kafka.broker import BrokerTraits, broker_traits
from ferry.kafka.source import CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S, TopicInfo, topic_id_text


def client_settings(settings: KafkaSettings, bootstrap: str) -> dict:
    conf: dict = {
        "bootstrap_servers": bootstrap.split(","),
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": int(CONNECT_TIMEOUT_S * 1000) + 5000,
    }
    if settings.sasl_mechanism:
        conf["sasl_mechanism"] = settings.sasl_mechanism
    if settings.username:
        conf["sasl_plain_username"] = settings.username.resolve()
    if settings.password:
        conf["sasl_plain_password"] = settings.password.resolve()
    if settings.ssl_cafile:
        conf["ssl_cafile"] = settings.ssl_cafile
    return conf


class KafkaPythonSource:
    client_name = "kafka-python"
    # a poll that leaves records buffered stalls the partitions not yet paused (seen with the
    # row sample's seeks): polls here always take everything fetched
    small_polls = False

    def __init__(self, settings: KafkaSettings, bootstrap: str, name: str):
        self.topic = settings.topic
        self.bootstrap = bootstrap
        self.base = client_settings(settings, bootstrap)
        self.declared_broker = settings.broker
        self._traits: BrokerTraits | None = None
        self.ends_exact = True  # False when the last partition ends are a best guess
        seen: list[str] = []
        try:
            with _connect_log(seen):
                self.consumer = self._open_consumer(name)
        except kerr.KafkaError as exc:
            message = _connect_failure(bootstrap, exc, seen)
            unreachable = message.startswith("cannot reach")  # else refused: credentials, TLS
            raise (KafkaUnreachableError if unreachable else KafkaError)(message) from exc

    def _open_consumer(self, name: str) -> KafkaConsumer:
        return KafkaConsumer(
            **self.base,
            client_id=f"ferry-{name}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            isolation_level="read_committed",
            check_crcs=True,
            fetch_max_wait_ms=5,  # set from the broker's traits once metadata is in
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
        )

    @property
    def traits(self) -> BrokerTraits:
        if self._traits is None:
            self._partitions()
        return self._detect_traits()

    def _detect_traits(self) -> BrokerTraits:
        """Called once metadata is in (the cluster id comes with it)."""
        if self._traits is None:
            cluster_id = self.consumer._client.cluster.cluster_id
            self._traits = broker_traits(cluster_id, self.declared_broker)
            self.consumer.config["fetch_max_wait_ms"] = self._traits.fetch_wait_ms
            self.consumer._fetcher.config["fetch_max_wait_ms"] = self._traits.fetch_wait_ms
        return self._traits

    def _partitions(self) -> list[int]:
        try:
            topics = self.consumer.topics()
        except kerr.KafkaError as exc:
            raise KafkaError(f"cannot list topics on {self.bootstrap}: {exc}") from exc
        self._detect_traits()
        if self.topic not in topics:
            raise TopicNotFoundError(f"topic {self.topic!r} does not exist on {self.bootstrap}")
        parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            raise TopicNotFoundError(f"topic {self.topic!r} has no partitions on {self.bootstrap}")
        return sorted(parts)

    def list_partitions(self) -> tuple[int, ...]:
        """The topic's partitions from fresh metadata (no offsets: cheap enough to poll)."""
        self.consumer._client.cluster.request_update()
        return tuple(self._partitions())

    def describe_topic(self) -> TopicInfo:
        partitions, low, high = self.read_watermarks()
        policy, retention = self._topic_configs()
        return TopicInfo(
            self.topic,
            partitions,
            low,
            high,
            policy,
            retention,
            self.read_topic_id(),
            self.ends_exact,
        )

    def read_topic_id(self) -> str | None:
        """The topic's ID from the cluster metadata (None where the broker has none)."""
        cluster = self.consumer._client.cluster
        topic_id = getattr(cluster, "topic_id", lambda _t: None)(self.topic)
        return topic_id_text(getattr(topic_id, "bytes", None))

    def read_watermarks(self) -> tuple[tuple[int, ...], dict[int, int], dict[int, int]]:
        """(partitions, low, high) with the high ends taken from a fetch."""
        partitions = self._partitions()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        low = {tp.partition: off for tp, off in self.consumer.beginning_offsets(tps).items()}
        listed = {tp.partition: off for tp, off in self.consumer.end_offsets(tps).items()}
        if self._detect_traits().exact_end_offsets:  # read_committed: the last stable offset
            return tuple(partitions), low, listed
        return tuple(partitions), low, self._fetch_high_watermarks(low, listed)

    def _fetch_high_watermarks(self, low: dict[int, int], listed: dict[int, int]) -> dict[int, int]:
        """The end of each partition as a fetch reports it (ListOffsets(latest) on Tansu 0.6
        answers the last batch's base offset + 1; see kafka_confluent for the same probe)."""
        probe = KafkaConsumer(
            **self.base,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            isolation_level="read_committed",
            fetch_max_wait_ms=5,
        )
        try:
            tps = {p: TopicPartition(self.topic, p) for p in low}
            probe.assign(list(tps.values()))
            for p, tp in tps.items():
                probe.seek(tp, max(low[p], listed[p] - 1))
            high: dict[int, int] = {}
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            self.ends_exact = True
            while len(high) < len(low):
                if time.monotonic() > deadline:  # see kafka_confluent: the best end known
                    for p in set(low) - set(high):
                        high[p] = max(probe.highwater(tps[p]) or 0, listed[p])
                    self.ends_exact = False
                    break
                probe.poll(timeout_ms=200, max_records=100_000)
                for p, tp in tps.items():
                    hw = probe.highwater(tp)
                    if p not in high and hw is not None and probe.position(tp) >= hw:
                        high[p] = hw
            return high
        finally:
            probe.close()

    def _topic_configs(self) -> tuple[str, int | None]:
        try:
            admin = KafkaAdminClient(**self.base)
            try:
                result = admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, self.topic)]
                )
            finally:
                admin.close()
        except Exception:  # brokers without DescribeConfigs: assume Kafka's defaults
            return "delete", None
        entries = _config_values(result, self.topic)
        retention = entries.get("retention.ms")
        return (
            entries.get("cleanup.policy") or "delete",
            int(retention) if retention not in (None, "", "-1") else None,
        )

    def offsets_for_time(self, timestamp_ms: int) -> dict[int, int]:
        partitions = self._partitions()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        found = self.consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
        ends = self.consumer.end_offsets(tps)
        return {
            tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp])
            for tp in tps
        }

    def assign(self, positions: dict[int, int]) -> None:
        self._assign(positions)
        # an unchanged assignment keeps its pause flags: "read these from here" resumes them
        self.consumer.resume(*self.tps.values())

    def _assign(self, positions: dict[int, int]) -> None:
        self.tps = {p: TopicPartition(self.topic, p) for p in positions}
        self.consumer.assign(list(self.tps.values()))
        for p, offset in positions.items():
            self.consumer.seek(self.tps[p], offset)

    def add_partitions(self, positions: dict[int, int]) -> None:
        self._assign({**{p: self.position(p) for p in self.tps}, **positions})

    def seek(self, partition: int, offset: int) -> None:
        self.consumer.seek(self.tps[partition], offset)

    def pause(self, partitions: list[int]) -> None:
        self.consumer.pause(*[self.tps[p] for p in partitions])

    def last_known_end(self, partition: int) -> int | None:
        return self.consumer.highwater(self.tps[partition])

    def position(self, partition: int) -> int:
        return self.consumer.position(self.tps[partition])

    def poll_records(self, max_records: int, timeout_s: float) -> list[KafkaRecord]:
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except (kerr.OffsetOutOfRangeError, kerr.NoOffsetForPartitionError) as exc:
            raise OffsetRangeError(
                f"{self.topic!r}: a requested offset is not held by Kafka any more ({exc}); "
                "records were deleted (retention) before ferry copied them"
            ) from exc
        except kerr.KafkaError as exc:
            raise KafkaError(f"reading {self.topic!r}: {exc}") from exc
        out = []
        append = out.append
        new = tuple.__new__  # builds the NamedTuple without its Python-level __new__
        for tp, messages in batches.items():
            p = tp.partition
            for m in messages:
                append(
                    new(
                        KafkaRecord,
                        (
                            p,
                            m.offset,
                            m.timestamp,
                            m.key,
                            m.value,
                            tuple(m.headers) if m.headers else (),
                        ),
                    )
                )
        return out

    def close(self) -> None:
        self.consumer.close()


def _config_values(result, topic: str) -> dict[str, str]:
    """``{name: value}`` from describe_configs: kafka-python 3 answers
    ``{type: {resource: {name: {"value": ...}}}}``, 2.x a list of responses."""
    if isinstance(result, dict):
        for resources in result.values():
            configs = resources.get(topic) if isinstance(resources, dict) else None
            if configs is not None:
                return {
                    k: (v.get("value") if isinstance(v, dict) else v) for k, v in configs.items()
                }
        return {}
    entries = {}
    for response in result if isinstance(result, list) else [result]:
        for res in response.resources:
            for entry in res[4]:
                entries[entry[0]] = entry[1]
    return entries


SASL_SENT = "sasl: credentials sent"
SASL_ANSWERED = "sasl: broker answered"


class _Collect(logging.Handler):
    """Warnings and worse, plus the SASL exchange's requests and responses (debug records of
    the connection logger, which show whether the broker hung up mid-authentication)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.messages.append(message[:500])
        elif "Request" in message[:200] and "SaslAuthenticateRequest" in message[:300]:
            self.messages.append(SASL_SENT)  # not the message: it carries the client's proof
        elif "SaslAuthenticateResponse" in message[:300]:
            self.messages.append(SASL_ANSWERED)


@contextmanager
def _connect_log(seen: list[str]) -> Iterator[None]:
    """Collect what kafka-python logs while connecting into ``seen`` (it reports
    authentication and TLS failures only there), kept off stderr."""
    logger = logging.getLogger("kafka")
    connection = logging.getLogger("kafka.net.connection")
    handler = _Collect(seen)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    level = connection.level
    connection.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        connection.setLevel(level)
        logger.removeHandler(handler)
        logger.propagate = propagate


def _hung_up_during_sasl(seen: list[str]) -> bool:
    """The broker closed the connection right after the client sent its credentials: how
    Apache Kafka (sometimes) answers a wrong password, without an error response."""
    for before, after in pairwise(seen):
        if before == SASL_SENT and "disconnected" in after:
            return True
    return False


def _connect_failure(bootstrap: str, exc: Exception, seen: list[str]) -> str:
    causes = (
        (
            ("authentication failed", "sasl authentication", "saslauthentication"),
            "authentication failed (check kafka.security's username, password and sasl_mechanism)",
        ),
        (
            ("certificate", "handshake"),
            "the TLS handshake failed (check kafka.security.ssl_cafile and that the broker's "
            "certificate names this host)",
        ),
    )
    for needles, cause in causes:
        for message in reversed(seen):
            if any(n in message.lower() for n in needles):
                return f"cannot use Kafka at {bootstrap}: {cause}: {message.splitlines()[0][:300]}"
    if _hung_up_during_sasl(seen):
        return (
            f"cannot use Kafka at {bootstrap}: {causes[0][1]}: the broker closed the "
            "connection each time after the credentials were sent"
        )
    last = next((m for m in reversed(seen) if "connection failed" in m.lower()), None)
    detail = f" (last connection failure: {last.splitlines()[0][:300]})" if last else ""
    return f"cannot reach Kafka at {bootstrap} within {CONNECT_TIMEOUT_S:.0f}s: {exc}{detail}"
