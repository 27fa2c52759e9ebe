"""The Kafka side: one small interface, two clients behind it (confluent-kafka, kafka-python).

Every reader is ``read_committed`` and never resets an offset on its own: asking for an
offset Kafka no longer holds is an :class:`OffsetRangeError`, not a silent jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ferry.config import KafkaSettings, StreamConfig
from ferry.core.entries import KafkaRecord
from ferry.errors import ConfigError

CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 15.0  # how long a fetch probe waits for a partition's end (Tansu only)


@dataclass(frozen=True)
class TopicInfo:
    """A topic's partitions, watermarks and the configs that decide what 'complete' means."""

    topic: str
    partitions: tuple[int, ...]
    low: dict[int, int]
    high: dict[int, int]
    cleanup_policy: str
    retention_ms: int | None
    topic_id: str | None = None  # Kafka's topic ID (2.8+), None where the broker has none
    exact_ends: bool = True  # False: ``high`` is a best guess (a probe got no answer)

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def records_upper_bound(self) -> int:
        return sum(self.high[p] - self.low[p] for p in self.partitions)


class KafkaSource(Protocol):
    """What ferry needs from a Kafka client."""

    client_name: str
    small_polls: bool  # a poll may take a few records and leave the rest for the next one

    def describe_topic(self) -> TopicInfo: ...

    def read_watermarks(self) -> tuple[tuple[int, ...], dict[int, int], dict[int, int]]: ...

    def list_partitions(self) -> tuple[int, ...]: ...

    def offsets_for_time(self, timestamp_ms: int) -> dict[int, int]: ...

    def assign(self, positions: dict[int, int]) -> None: ...

    def add_partitions(self, positions: dict[int, int]) -> None:
        """Read these partitions too, from these offsets (the others keep their positions)."""
        ...

    def read_topic_id(self) -> str | None: ...

    def seek(self, partition: int, offset: int) -> None: ...

    def pause(self, partitions: list[int]) -> None: ...

    def position(self, partition: int) -> int:
        """The consumer position: the next offset to read, past transaction markers, aborted
        and compacted-away offsets the client stepped over."""
        ...

    def last_known_end(self, partition: int) -> int | None:
        """The partition's high watermark from the latest fetch response (no request)."""
        ...

    def poll_records(self, max_records: int, timeout_s: float) -> list[KafkaRecord]: ...

    def close(self) -> None: ...


def topic_id_text(raw: bytes | None) -> str | None:
    """A topic ID as Kafka prints it (URL-safe base64, no padding); None for none or zero."""
    import base64

    if not raw or raw == bytes(16):
        return None
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def resolve_bootstrap(settings: KafkaSettings) -> str:
    if settings.bootstrap_servers == "embedded":
        from ferry.services.servers import running_services

        return running_services().kafka_bootstrap
    return settings.bootstrap_servers


def open_source(config: StreamConfig, client: str | None = None) -> KafkaSource:
    """Open a reader on the config's topic with the configured (or the given) client."""
    name = client or config.kafka.client
    if name == "confluent":
        from ferry.kafka.confluent_client import ConfluentSource

        return ConfluentSource(config.kafka, resolve_bootstrap(config.kafka), config.name)
    if name == "kafka-python":
        from ferry.kafka.python_client import KafkaPythonSource

        return KafkaPythonSource(config.kafka, resolve_bootstrap(config.kafka), config.name)
    raise ConfigError(f"unknown Kafka client {name!r}; use 'confluent' or 'kafka-python'")
