"""Which topic a migration copies, and whether the broker still holds it.

Arming records the topic's ID (Kafka 2.8+), or where the broker has none a fingerprint of each
partition's first copied record. Every verb that reads Kafka for a migration checks, before
anything else, that the topic under the configured name is still that topic and that no
position lies beyond a partition's end: a topic deleted and recreated under the same name, or
a broker whose data was reset, would otherwise look like a topic with nothing new to copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ferry.core.entries import record_digest
from ferry.core.ingest import MigrationKeys, read_state_fields
from ferry.errors import TopicMismatchError
from ferry.kafka.source import TopicInfo

REMEDY = (
    "the stream holds records of the topic that was migrated before; Kafka no longer has "
    "them under this name. If this is intended, start a new migration (another 'name', or "
    "delete the migration's keys), else point kafka.bootstrap_servers at the right cluster"
)


@dataclass(frozen=True)
class ArmedTopic:
    """What the state hash says about the migrated topic."""

    topic_id: str | None
    fingerprints: dict[int, str]
    starts: dict[int, int]
    start_found: dict[int, str]
    start_rule: str | None
    start_ts: int | None


def read_armed_topic(client: redis.Redis, keys: MigrationKeys) -> ArmedTopic:
    raw = {k.decode(): v.decode() for k, v in read_state_fields(client, keys).items()}

    def per_partition(prefix: str, cast=str) -> dict:
        return {int(k[len(prefix) :]): cast(v) for k, v in raw.items() if k.startswith(prefix)}

    start_ts = raw.get("start_ts")
    return ArmedTopic(
        topic_id=raw.get("topic_id") or None,
        fingerprints=per_partition("fingerprint:"),
        starts=per_partition("start:", int),
        start_found=per_partition("start_found:"),
        start_rule=raw.get("start_rule"),
        start_ts=int(start_ts) if start_ts else None,
    )


def fingerprint(record) -> str:
    """A short digest of one record (offset, timestamp, key, value, headers)."""
    return f"{record.offset}:{record_digest(record).hex()}"


def check_topic_identity(
    armed: ArmedTopic, info: TopicInfo, frontiers: dict[int, int], read_first=None
) -> None:
    """Refuse a topic that is not the one armed, and positions beyond a partition's end.

    ``read_first(partition, offset)`` reads the record at an armed start for the fingerprint
    check (only used where the broker has no topic IDs).
    """
    if armed.topic_id and info.topic_id and armed.topic_id != info.topic_id:
        raise TopicMismatchError(
            f"topic {info.topic!r} now has ID {info.topic_id} but the migration was armed on "
            f"ID {armed.topic_id}: it was deleted and recreated (or the broker was reset); "
            + REMEDY
        )
    for p, position in sorted((p, f + 1) for p, f in frontiers.items()):
        if p not in info.high:
            raise TopicMismatchError(
                f"topic {info.topic!r} has no partition {p} any more, but the migration copied "
                f"it up to offset {position}; " + REMEDY
            )
        if position > info.high[p] and info.exact_ends:
            raise TopicMismatchError(
                f"partition {p} of {info.topic!r}: ferry's position is {position} but Kafka's "
                f"end is {info.high[p]}: records ferry copied are not in Kafka any more (the "
                "topic was recreated or the broker's data reset); " + REMEDY
            )
    if armed.topic_id or read_first is None:
        return
    for p, expected in sorted(armed.fingerprints.items()):
        start = armed.starts.get(p)
        if start is None or not info.low[p] <= start < info.high[p]:
            continue  # retention removed it: the positions check above is what remains
        record = read_first(p, start)
        if record is None or fingerprint(record) != expected:
            raise TopicMismatchError(
                f"partition {p} of {info.topic!r}: the record at offset {start} is not the one "
                "the migration started from (fingerprint differs): the topic was recreated; "
                + REMEDY
            )


def check_source(
    client: redis.Redis, keys: MigrationKeys, source, info: TopicInfo, frontiers: dict[int, int]
) -> ArmedTopic:
    """Every verb's first check on an armed migration: the topic is the one armed and no
    position is past its end. Returns what arming recorded."""
    from ferry.core.positions import read_record_at

    armed = read_armed_topic(client, keys)
    if frontiers:
        check_topic_identity(
            armed, info, frontiers, lambda p, o: read_record_at(source, p, o, info.high[p])
        )
    return armed


def read_start_table(config) -> list[dict]:
    """Per partition: where the migration started and how that offset was found, with the
    start rule and its target time as armed (what step 03 shows)."""
    from ferry.core.ingest import migration_keys, read_state
    from ferry.redis.target import connect_redis

    client = connect_redis(config)
    keys = migration_keys(config)
    armed = read_armed_topic(client, keys)
    _, frontiers = read_state(client, keys)
    return [
        {
            "partition": p,
            "start": start,
            "found": armed.start_found.get(p, ""),
            "position": frontiers.get(p, start - 1) + 1,
            "start_rule": armed.start_rule or "",
            "start_ts": armed.start_ts,
            "topic_id": armed.topic_id or "(fingerprints)",
        }
        for p, start in sorted(armed.starts.items())
    ]
