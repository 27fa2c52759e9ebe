"""A reference consumer that goes through the hand-over: it reads its Kafka group until step 05
asks it to leave, then reads the translated Redis group through ``StreamConsumer``.

What it processes is appended (one JSON line per record, with the side it came from) to a
log before it commits or acknowledges, so an independent check can count duplicates and gaps.
On Redis it is an idempotent consumer: each entry's ``(partition, offset)`` key is recorded
with its XACK, and an entry already recorded is acknowledged without being logged again.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ferry.config import StreamConfig
from ferry.core.entries import KafkaRecord
from ferry.core.ingest import migration_keys
from ferry.core.reconcile import kafka_identity, record_identity
from ferry.errors import FerryError
from ferry.kafka.confluent_client import client_settings
from ferry.kafka.source import resolve_bootstrap
from ferry.live.consumer import StreamConsumer
from ferry.live.handover import group_translated, handover_requested
from ferry.redis.target import connect_redis

CHECK_EVERY_S = 0.2
PROGRESS_LOG_S = 30.0
logger = logging.getLogger("ferry.live.group_consumer")


def _line(side: str, identity) -> str:
    value = identity.decode() if isinstance(identity, bytes) else list(identity)
    return json.dumps({"side": side, "id": value}) + "\n"


def run_group_consumer(
    config: StreamConfig,
    group: str,
    log_path: Path,
    should_stop: Callable[[], bool] = lambda: False,
    name: str = "consumer-1",
) -> dict:
    """Consume until ``should_stop()``; returns how many records came from each side."""
    counts = {"kafka": 0, "redis": 0, "duplicates": 0}
    client, keys = connect_redis(config), migration_keys(config)
    logger.info("group-consumer %s: group %s as %s", config.name, group, name)
    try:
        return _run(config, group, log_path, should_stop, name, counts, client, keys)
    finally:
        logger.info("group-consumer %s: stopped (%s)", config.name, counts)


def _run(config, group, log_path, should_stop, name, counts, client, keys) -> dict:
    with open(log_path, "a") as log:
        if not group_translated(client, keys, group):
            asked = functools.partial(handover_requested, client, keys, group)
            counts["kafka"] = _consume_kafka(config, group, log, should_stop, asked)
        while not should_stop() and not group_translated(client, keys, group):
            time.sleep(CHECK_EVERY_S)  # step 05 translates the group; bounded by should_stop
        if should_stop():
            return counts
        logger.info(
            "group-consumer %s: handed over after %d from Kafka; reading Redis",
            config.name,
            counts["kafka"],
        )
        # idempotent: an entry redelivered after its XACK-and-key MULTI is skipped, not logged
        reader = StreamConsumer(config, group, name, batch=500, block_ms=200, idempotent=True)
        next_line = time.monotonic() + PROGRESS_LOG_S
        while not should_stop():
            if time.monotonic() >= next_line:
                next_line = time.monotonic() + PROGRESS_LOG_S
                logger.info("group-consumer %s: %s", config.name, counts)
            batch = reader.poll()
            if batch:
                log.writelines(
                    _line("redis", record_identity(d.entry_id.encode(), d.record)) for d in batch
                )
                log.flush()
                reader.ack(*batch)  # the processed keys with the XACK, in one MULTI
                counts["redis"] += len(batch)
            counts["duplicates"] = reader.duplicates
    return counts


def _consume_kafka(config: StreamConfig, group: str, log, should_stop, asked_to_leave) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **client_settings(config.kafka, resolve_bootstrap(config.kafka)),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.subscribe([config.kafka.topic])
    done = 0
    next_check = 0.0
    try:
        while not should_stop():
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_EVERY_S
                if asked_to_leave():
                    break
            messages = [m for m in consumer.consume(500, 0.2) if m.error() is None]
            if not messages:
                continue
            log.writelines(
                _line(
                    "kafka",
                    kafka_identity(
                        KafkaRecord(
                            m.partition(), m.offset(), 0, None, None, tuple(m.headers() or ())
                        )
                    ),
                )
                for m in messages
            )
            log.flush()
            consumer.commit(asynchronous=False)  # after the work is recorded
            done += len(messages)
    except Exception as exc:  # noqa: BLE001 - librdkafka's KafkaException
        raise FerryError(f"group {group!r} consumer failed: {exc}") from exc
    finally:
        consumer.close()  # leaves the group: step 05 waits for it to be empty
    return done
