"""KafkaSource on confluent-kafka (librdkafka)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as CKError
from confluent_kafka.admin import AdminClient, ConfigResource

from ferry.config import KafkaSettings
from ferry.entries import KafkaRecord
from ferry.errors import KafkaError, OffsetRangeError, TopicNotFoundError
from ferry.kafka_source import CONNECT_TIMEOUT_S, TopicInfo

# Consumer settings ferry relies on; a user cannot turn these off.
SAFE_SETTINGS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "error",
    "isolation.level": "read_committed",
    "enable.partition.eof": True,
    "check.crcs": True,
}


def client_settings(settings: KafkaSettings, bootstrap: str) -> dict:
    conf: dict = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.security_protocol,
        "socket.connection.setup.timeout.ms": int(CONNECT_TIMEOUT_S * 1000),
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


class ConfluentSource:
    client_name = "confluent"

    def __init__(self, settings: KafkaSettings, bootstrap: str, name: str):
        self.topic = settings.topic
        self.bootstrap = bootstrap
        self.base = client_settings(settings, bootstrap)
        self.consumer = Consumer(
            {
                **self.base,
                "group.id": f"ferry-reader-{name}",
                "client.id": f"ferry-{name}",
                "fetch.wait.max.ms": 5,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "queued.min.messages": 200_000,
                **SAFE_SETTINGS,
            }
        )
        self.assigned: dict[int, TopicPartition] = {}
        self._probe: Consumer | None = None

    # --- metadata -------------------------------------------------------------------------
    def _metadata(self):
        try:
            meta = self.consumer.list_topics(self.topic, timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaError(
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

    def describe_topic(self) -> TopicInfo:
        partitions, low, high = self.read_watermarks()
        policy, retention = self._topic_configs()
        return TopicInfo(self.topic, partitions, low, high, policy, retention)

    def read_watermarks(self) -> tuple[tuple[int, ...], dict[int, int], dict[int, int]]:
        """(partitions, low, high) with the high ends taken from a fetch."""
        topic = self._metadata()
        partitions = tuple(sorted(topic.partitions))
        low, listed = {}, {}
        for p in partitions:
            lo, hi = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=CONNECT_TIMEOUT_S, cached=False
            )
            low[p], listed[p] = lo, hi
        return partitions, low, self._fetch_high_watermarks(low, listed)

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
            deadline = time.monotonic() + CONNECT_TIMEOUT_S * 3
            while len(high) < len(low):
                if time.monotonic() > deadline:
                    missing = sorted(set(low) - set(high))
                    raise KafkaError(
                        f"{self.topic!r}: no end-of-partition from the broker for partitions "
                        f"{missing} within {CONNECT_TIMEOUT_S * 3:.0f}s"
                    )
                for m in probe.consume(1000, 0.05):
                    err = m.error()
                    if err is not None and err.code() == CKError._PARTITION_EOF:
                        high.setdefault(m.partition(), m.offset())
                    elif err is not None and not err.retriable():
                        raise KafkaError(f"probing the end of {self.topic!r}: {err.str()}")
            return high
        finally:
            probe.unassign()

    def _topic_configs(self) -> tuple[str, int | None]:
        admin = AdminClient(self.base)
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
        self.consumer.assign(list(self.assigned.values()))

    def seek(self, partition: int, offset: int) -> None:
        self.consumer.seek(TopicPartition(self.topic, partition, offset))

    def pause(self, partitions: list[int]) -> None:
        self.consumer.pause([self.assigned[p] for p in partitions])

    def last_known_end(self, partition: int) -> int | None:
        _, high = self.consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True
        )
        return high if high >= 0 else None

    def position(self, partition: int) -> int:
        (tp,) = self.consumer.position([TopicPartition(self.topic, partition)])
        return tp.offset

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
