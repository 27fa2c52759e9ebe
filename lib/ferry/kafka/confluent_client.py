"""KafkaSource on confluent-kafka (librdkafka)."""

from __future__ import annotations

import logging
import time
from collections import deque

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka import KafkaError as CKError
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec

from ferry.config import KafkaSettings
from ferry.core.entries import KafkaRecord
from ferry.errors import KafkaError, KafkaUnreachableError, OffsetRangeError, TopicNotFoundError
from ferry.kafka.broker import BrokerTraits, broker_traits
from ferry.kafka.source import CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S, TopicInfo, topic_id_text

# Consumer settings ferry relies on; a user cannot turn these off.
SAFE_SETTINGS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "error",
    "isolation.level": "read_committed",
    "enable.partition.eof": True,
    "check.crcs": True,
}


# librdkafka's own log goes to this logger (not straight to stderr), so a broker that is
# down is one error line from ferry, not a flood of %3|FAIL lines
LIBRDKAFKA_LOG = logging.getLogger("ferry.librdkafka")


def client_settings(settings: KafkaSettings, bootstrap: str) -> dict:
    conf: dict = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.security_protocol,
        "socket.connection.setup.timeout.ms": int(CONNECT_TIMEOUT_S * 1000),
        "logger": LIBRDKAFKA_LOG,
    }
    if settings.sasl_mechanism:
        conf["sasl.mechanism"] = settings.sasl_mechanism
    if settings.username:
        conf["sasl.username"] = settings.username.resolve()
    if settings.password:
        conf["sasl.password"] = settings.password.resolve()
    if settings.ssl_cafile:
        conf["ssl.ca.location"] = settings.ssl_cafile
    return conf


def connect_failure(bootstrap: str, exc: Exception, reported: list) -> str:
    """One line naming why Kafka could not be used: the authentication or TLS failure
    librdkafka reported, rather than its generic 'transport failure'."""
    causes = {
        CKError._AUTHENTICATION: "authentication failed (check kafka.security's username, "
        "password and sasl_mechanism)",
        CKError._SSL: "the TLS handshake failed (check kafka.security.ssl_cafile and that the "
        "broker's certificate names this host)",
    }
    for err in reversed(reported):
        code = err.code() if hasattr(err, "code") else None
        if code in causes:
            return f"cannot use Kafka at {bootstrap}: {causes[code]}: {err.str()}"
    return f"cannot reach Kafka at {bootstrap} within {CONNECT_TIMEOUT_S:.0f}s: {exc}"


class ConfluentSource:
    client_name = "confluent"
    # a poll may take a few records and leave the rest buffered: a reader that wants one record
    # per partition (the row sample's seeks) asks for few instead of converting 20,000
    small_polls = True

    def __init__(self, settings: KafkaSettings, bootstrap: str, name: str):
        self.topic = settings.topic
        self.bootstrap = bootstrap
        self.base = client_settings(settings, bootstrap)
        # what librdkafka reported lately (while connecting: the real cause), and how many
        self.errors: deque = deque(maxlen=100)
        self.read_errors = 0
        self.base["error_cb"] = self._on_error
        self.admin = AdminClient(self.base)
        self.traits: BrokerTraits = broker_traits(self._cluster_id(), settings.broker)
        self.consumer = Consumer(
            {
                **self.base,
                "group.id": f"ferry-reader-{name}",
                "client.id": f"ferry-{name}",
                "fetch.wait.max.ms": self.traits.fetch_wait_ms,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "queued.min.messages": 200_000,
                **SAFE_SETTINGS,
            }
        )
        self.assigned: dict[int, TopicPartition] = {}
        self.eof: dict[int, int] = {}  # end-of-partition offsets seen since the last seek
        self.ends_exact = True  # False when the last partition ends are a best guess
        self._probe: Consumer | None = None

    def _on_error(self, err) -> None:
        self.errors.append(err)
        self.read_errors += 1

    # --- metadata -------------------------------------------------------------------------
    def _cluster_id(self) -> str | None:
        try:
            return self.admin.list_topics(timeout=CONNECT_TIMEOUT_S).cluster_id
        except KafkaException as exc:
            self.admin.poll(0)  # error callbacks are served on poll
            message = connect_failure(self.bootstrap, exc, self.errors)
            unreachable = message.startswith("cannot reach")  # else refused: credentials, TLS
            raise (KafkaUnreachableError if unreachable else KafkaError)(message) from exc

    def _metadata(self):
        try:
            # the consumer's metadata request never creates the topic (the admin's may, on
            # brokers that auto-create topics)
            meta = self.consumer.list_topics(self.topic, timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaUnreachableError(
                f"cannot reach Kafka at {self.bootstrap} within {CONNECT_TIMEOUT_S:.0f}s: {exc}"
            ) from exc
        topic = meta.topics.get(self.topic)
        if (
            topic is None
            or topic.error is not None
            and topic.error.code()
            in (
                CKError.UNKNOWN_TOPIC_OR_PART,
                CKError._UNKNOWN_TOPIC,
            )
        ):
            raise TopicNotFoundError(f"topic {self.topic!r} does not exist on {self.bootstrap}")
        if topic.error is not None:
            raise KafkaError(f"topic {self.topic!r}: {topic.error.str()}")
        if not topic.partitions:
            raise TopicNotFoundError(f"topic {self.topic!r} has no partitions on {self.bootstrap}")
        return topic

    def list_partitions(self) -> tuple[int, ...]:
        """The topic's partitions from fresh metadata (no offsets: cheap enough to poll)."""
        return tuple(sorted(self._metadata().partitions))

    def describe_topic(self) -> TopicInfo:
        partitions, low, high = self.read_watermarks()
        policy, retention = self._topic_configs()
        return TopicInfo(self.topic, partitions, low, high, policy, retention, self.read_topic_id())

    def read_topic_id(self) -> str | None:
        """The topic's ID (Kafka 2.8+), or None where the broker has none."""
        try:
            futures = self.admin.describe_topics(TopicCollection([self.topic]))
            description = futures[self.topic].result(timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "code", lambda: None)() == CKError.UNKNOWN_TOPIC_OR_PART:
                raise TopicNotFoundError(
                    f"topic {self.topic!r} does not exist on {self.bootstrap}"
                ) from exc
            return None
        uuid = description.topic_id
        if uuid is None:
            return None
        raw = uuid.get_most_significant_bits().to_bytes(8, "big", signed=True)
        raw += uuid.get_least_significant_bits().to_bytes(8, "big", signed=True)
        return topic_id_text(raw)

    def read_watermarks(self) -> tuple[tuple[int, ...], dict[int, int], dict[int, int]]:
        """(partitions, low, high): high is the end a ``read_committed`` reader reaches (the
        last stable offset)."""
        topic = self._metadata()
        partitions = tuple(sorted(topic.partitions))
        if self.traits.exact_end_offsets:
            return partitions, *self._list_offsets(partitions)
        # one ListOffsets request per end for all partitions (not two per partition); the
        # listed end is only where the probe starts
        low, listed = self._list_offsets(partitions)
        return partitions, low, self._fetch_high_watermarks(low, listed)

    def _list_offsets(self, partitions) -> tuple[dict[int, int], dict[int, int]]:
        """Log start and last stable offset of each partition, by ListOffsets."""
        for attempt in range(3):
            try:
                return self._list_offsets_once(partitions)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if hasattr(err, "code") else None
                if code != CKError._UNKNOWN_PARTITION or attempt == 2:
                    raise KafkaError(f"listing the offsets of {self.topic!r}: {exc}") from exc
                # partitions added since the admin client cached the topic: refresh it (the
                # topic exists: the consumer's metadata named these partitions)
                self.admin.list_topics(self.topic, timeout=CONNECT_TIMEOUT_S)
        raise AssertionError("unreachable")

    def _list_offsets_once(self, partitions) -> tuple[dict[int, int], dict[int, int]]:
        out = []
        for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
            query = {TopicPartition(self.topic, p): spec for p in partitions}
            futures = self.admin.list_offsets(
                query,
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=CONNECT_TIMEOUT_S,
            )
            out.append({tp.partition: f.result().offset for tp, f in futures.items()})
        return out[0], out[1]

    def _fetch_high_watermarks(self, low: dict[int, int], listed: dict[int, int]) -> dict[int, int]:
        """The end of each partition as a fetch reports it.

        ListOffsets(latest) cannot be trusted: Tansu 0.6 answers the last batch's base offset
        + 1, so a tool that believed it would miss up to a whole batch per partition. A fetch
        from just before that point reaches the end and reports the true high watermark.
        """
        if self._probe is None:
            self._probe = Consumer(
                {**self.base, "group.id": "ferry-probe", "fetch.wait.max.ms": 5, **SAFE_SETTINGS}
            )
        probe = self._probe
        try:
            probe.assign([TopicPartition(self.topic, p, max(low[p], listed[p] - 1)) for p in low])
            high: dict[int, int] = {}
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while len(high) < len(low):
                if time.monotonic() > deadline:
                    # Tansu sometimes answers the probe with nothing at all under live
                    # traffic: take the best end known (the fetch's high watermark, else
                    # ListOffsets) and say the ends are not exact
                    for p in set(low) - set(high):
                        _, hw = probe.get_watermark_offsets(TopicPartition(self.topic, p))
                        high[p] = max(hw, listed[p])
                    self.ends_exact = False
                    return high
                for m in probe.consume(1000, 0.05):
                    err = m.error()
                    if err is not None and err.code() == CKError._PARTITION_EOF:
                        high.setdefault(m.partition(), m.offset())
                    elif err is not None and not err.retriable():
                        raise KafkaError(f"probing the end of {self.topic!r}: {err.str()}")
            self.ends_exact = True
            return high
        finally:
            probe.unassign()

    def _topic_configs(self) -> tuple[str, int | None]:
        admin = self.admin
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout=CONNECT_TIMEOUT_S)
        except Exception:  # brokers without DescribeConfigs: assume Kafka's defaults
            return "delete", None
        policy = configs.get("cleanup.policy")
        retention = configs.get("retention.ms")
        value = retention.value if retention is not None else None
        return (
            policy.value if policy is not None and policy.value else "delete",
            int(value) if value not in (None, "", "-1") else None,
        )

    def offsets_for_time(self, timestamp_ms: int) -> dict[int, int]:
        topic = self._metadata()
        query = [TopicPartition(self.topic, p, timestamp_ms) for p in sorted(topic.partitions)]
        found = self.consumer.offsets_for_times(query, timeout=CONNECT_TIMEOUT_S)
        out = {}
        for tp in found:
            if tp.error:
                raise KafkaError(
                    f"offsets_for_times failed on partition {tp.partition}: {tp.error}"
                )
            if tp.offset < 0:  # no record at or after the timestamp: start at the end
                _, tp.offset = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=CONNECT_TIMEOUT_S
                )
            out[tp.partition] = tp.offset
        return out

    # --- reading --------------------------------------------------------------------------
    def assign(self, positions: dict[int, int]) -> None:
        self.assigned = {p: TopicPartition(self.topic, p, off) for p, off in positions.items()}
        self.eof.clear()
        self.consumer.assign(list(self.assigned.values()))
        # a partition paused under an earlier assignment stays paused in librdkafka: an
        # assignment means "read these from here", so resume them
        self.consumer.resume(list(self.assigned.values()))

    def add_partitions(self, positions: dict[int, int]) -> None:
        new = {p: TopicPartition(self.topic, p, off) for p, off in positions.items()}
        self.assigned.update(new)
        self.consumer.incremental_assign(list(new.values()))

    def seek(self, partition: int, offset: int) -> None:
        self.eof.pop(partition, None)
        self.consumer.seek(TopicPartition(self.topic, partition, offset))

    def pause(self, partitions: list[int]) -> None:
        self.consumer.pause([self.assigned[p] for p in partitions])

    def last_known_end(self, partition: int) -> int | None:
        _, high = self.consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True
        )
        return high if high >= 0 else None

    def position(self, partition: int) -> int:
        """The consumer position: past the last record delivered, and past the transaction
        markers and aborted records after it once the broker said end-of-partition there."""
        (tp,) = self.consumer.position([TopicPartition(self.topic, partition)])
        return max(tp.offset, self.eof.get(partition, -1))

    def poll_records(self, max_records: int, timeout_s: float) -> list[KafkaRecord]:
        messages = self.consumer.consume(max_records, timeout_s)
        out = []
        append = out.append
        new = tuple.__new__  # builds the NamedTuple without its Python-level __new__
        for m in messages:
            err = m.error()
            if err is not None:
                code = err.code()
                if code == CKError._PARTITION_EOF:
                    self.eof[m.partition()] = m.offset()
                    continue
                if code == CKError._AUTO_OFFSET_RESET or code == CKError.OFFSET_OUT_OF_RANGE:
                    raise OffsetRangeError(
                        f"partition {m.partition()} of {self.topic!r}: the requested offset is not "
                        f"held by Kafka any more ({err.str()}); records were deleted (retention) "
                        "before ferry copied them"
                    )
                if code == CKError.UNKNOWN_TOPIC_OR_PART:
                    raise TopicNotFoundError(f"topic {self.topic!r} disappeared: {err.str()}")
                if err.fatal() or not err.retriable():
                    raise KafkaError(f"reading {self.topic!r}: {err.str()}")
                self.read_errors += 1
                continue
            headers = m.headers()
            append(
                new(
                    KafkaRecord,
                    (
                        m.partition(),
                        m.offset(),
                        m.timestamp()[1],
                        m.key(),
                        m.value(),
                        tuple(headers) if headers else (),
                    ),
                )
            )
        return out

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        self.consumer.close()
