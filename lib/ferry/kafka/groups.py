"""The Kafka consumer groups that have committed offsets on a topic (one admin listing, used by
preflight's inventory, the hand-over of every group and ``ferry finish``'s gate)."""

from __future__ import annotations

from collections.abc import Iterable

from ferry.config import StreamConfig
from ferry.errors import KafkaError


def read_committed_groups(
    config: StreamConfig, partitions: Iterable[int]
) -> dict[str, dict[int, int]]:
    """group -> {partition: committed offset}, for every group with a commit on the topic;
    KafkaError (naming the topic) when the broker cannot say."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from ferry.kafka.confluent_client import client_settings
    from ferry.kafka.source import resolve_bootstrap

    topic = config.kafka.topic
    wanted = [TopicPartition(topic, p) for p in partitions]
    admin = AdminClient(client_settings(config.kafka, resolve_bootstrap(config.kafka)))
    groups: dict[str, dict[int, int]] = {}
    try:
        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        for group in sorted(g.group_id for g in listed.valid):
            request = ConsumerGroupTopicPartitions(group, wanted)
            answer = admin.list_consumer_group_offsets([request])[group].result(timeout=15)
            committed = {
                tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0
            }
            if committed:
                groups[group] = committed
    except Exception as exc:  # noqa: BLE001 - librdkafka's KafkaException, a timeout
        raise KafkaError(f"cannot list the consumer groups of topic {topic!r}: {exc}") from exc
    return groups
