"""Finish: redis-primary -> redis-only, the one change with no way back, only when every gate
holds: the phase, a mirror with no lag and no unshadowed entry, every Kafka group on the topic
handed over, and no record written to Kafka directly (not a shadow) for a quiet window."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import redis

from ferry.config import StreamConfig
from ferry.core.ingest import (
    MigrationKeys,
    migration_keys,
    migration_partitions,
    read_state_counters,
)
from ferry.errors import GateFailed
from ferry.live.phases import REDIS_PRIMARY, finish_migration, log_event, read_phase, server_ms
from ferry.redis.target import connect_redis

log = logging.getLogger("ferry.live.finish")

Gate = tuple[str, bool, str]


class FinishRefused(GateFailed):
    """A gate of redis-only failed; the phase stays redis-primary. The message lists them."""


@dataclass(frozen=True)
class FinishReport:
    epoch: int
    gates: tuple[Gate, ...]
    direct_after_switch: int  # records that reached Kafka directly since the switch
    fence: dict | None = None  # the Kafka fence made (fence_kafka), else None


def read_kafka_groups(config: StreamConfig) -> dict[str, dict[int, int]]:
    """Every Kafka consumer group with committed offsets on the topic: group -> offsets."""
    from ferry.kafka.groups import read_committed_groups
    from ferry.kafka.source import open_source

    source = open_source(config)
    try:
        partitions = source.describe_topic().partitions
    finally:
        source.close()
    return read_committed_groups(config, partitions)


def check_handed_over(
    client: redis.Redis, keys: MigrationKeys, group: str, committed: dict[int, int]
) -> str:
    """Why ``group`` is not handed over ('' when it is): no hand-over record, its Redis group
    gone (from the stream, or in the per-partition and spread layouts from any armed
    partition's stream, or never made there: a partition armed after the hand-over), or Kafka
    offsets committed since the hand-over (consumers still read Kafka)."""
    from ferry.live.group_keys import group_targets, groups_on, handover_record_key

    raw = client.hgetall(handover_record_key(keys, group))
    record = {k.decode(): v.decode() for k, v in raw.items()}
    if "done" not in record:
        return "never handed over"
    targets = group_targets(keys, group, handed_over_partitions(client, keys))
    gone = [t for t in targets if group not in groups_on(client, t.stream)]
    if not targets or (gone and gone[0].partition is None):
        return "its Redis group was removed"
    if gone:
        handed = record.get("starts")  # the partitions the hand-over made a group for
        later = [t.partition for t in gone if handed and str(t.partition) not in json.loads(handed)]
        if later:
            return (
                f"partition(s) {', '.join(map(str, later))} armed after its hand-over: no Redis "
                "group on their streams"
            )
        return f"its Redis group was removed from {', '.join(t.stream for t in gone)}"
    then = {int(p): int(o) for p, o in json.loads(record.get("committed", "{}")).items()}
    if then != committed:
        return "committed on Kafka since its hand-over"
    return ""


def handed_over_partitions(client: redis.Redis, keys: MigrationKeys) -> list[int]:
    """The partitions whose streams a handed-over group reads: the armed ones (spread: their
    ``armed:<p>`` marks; per-partition: those with a ``start:<p>``); none for merged."""
    return [] if keys.layout == "merged" else migration_partitions(client, keys)


def finish_gates(config: StreamConfig, quiet_window_s: float) -> list[Gate]:
    """(name, holds, detail) for each condition of redis-only, as cutover_gates."""
    from ferry.live.cutover import mirror_lag

    client = connect_redis(config)
    keys = migration_keys(config)
    phase = read_phase(client, keys).phase
    lag = mirror_lag(config, client=client)
    fields = ("primary_written", "shadowed", "direct_after_switch", "direct_last_ms")
    written, shadowed, direct, last_ms = read_state_counters(client, keys, *fields)
    pending = {
        g: why
        for g, offsets in read_kafka_groups(config).items()
        if (why := check_handed_over(client, keys, g, offsets))
    }
    quiet_ms = server_ms(client) - last_ms
    quiet = direct == 0 or quiet_ms >= quiet_window_s * 1000
    return [
        ("phase is redis-primary", phase == REDIS_PRIMARY, phase),
        ("mirror lag is 0", not any(lag.values()), f"lag {lag}"),
        (
            "no unshadowed entries",
            written == shadowed,
            f"{written} written Redis-first, {shadowed} shadows passed by the mirror",
        ),
        (
            "every Kafka group on the topic handed over",
            not pending,
            "; ".join(f"{g}: {why}" for g, why in sorted(pending.items())),
        ),
        (
            f"no direct Kafka record for {quiet_window_s:g}s",
            quiet,
            f"{direct} direct records since the switch"
            + (f", the last {quiet_ms / 1000:.1f}s ago" if direct else ""),
        ),
    ]


def run_finish(
    config: StreamConfig,
    *,
    quiet_window_s: float = 60.0,
    fence_kafka: bool = False,
    kafka_allows_everyone: bool = False,
) -> FinishReport:
    """redis-primary -> redis-only when every gate holds, else :class:`FinishRefused`
    (logged as a gate event). ``fence_kafka`` denies writes on the topic (Kafka ACLs) after
    the gates and before the phase change, and records it; ``kafka_allows_everyone`` says the
    broker runs with ``allow.everyone.if.no.acl.found=true``, so a topic without ACLs keeps
    its readers (``ferry.kafka.fence``)."""
    client = connect_redis(config)
    keys = migration_keys(config)
    gates = finish_gates(config, quiet_window_s)
    failed = [f"{name} ({detail})" for name, ok, detail in gates if not ok]
    log_event(client, keys, "gate", step="finish", ok=not failed, failed="; ".join(failed))
    if failed:
        log.warning("finish %s: refused, still redis-primary: %s", config.name, "; ".join(failed))
        raise FinishRefused("finish refused, still redis-primary: " + "; ".join(failed))
    fence = None
    if fence_kafka:
        from ferry.kafka.fence import fence_topic_writes

        try:
            fence = asdict(fence_topic_writes(config, allow_everyone=kafka_allows_everyone))
        except Exception as exc:
            log_event(client, keys, "fence", ok=False, error=exc)
            raise
        log_event(client, keys, "fence", ok=True, **fence)
    state = finish_migration(client, keys, reason=f"finish: gates held, quiet {quiet_window_s:g}s")
    (direct,) = read_state_counters(client, keys, "direct_after_switch")
    log.info("finish %s: redis-only (epoch %d)", config.name, state.epoch)
    return FinishReport(state.epoch, tuple(gates), direct, fence)
