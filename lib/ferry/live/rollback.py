"""Rollback: what going back restores and what it cannot, then the phase change itself."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ferry.config import StreamConfig
from ferry.core.ingest import migration_keys, read_state_counters
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    KAFKA_ONLY,
    REDIS_ONLY,
    REDIS_PRIMARY,
    live_writers,
    read_phase,
    set_phase,
)
from ferry.redis.target import connect_redis

ROLLBACK_TO = {DUAL_WRITE: KAFKA_ONLY, DRAINING: DUAL_WRITE, REDIS_PRIMARY: DUAL_WRITE}

RESTORES = {
    DUAL_WRITE: (
        "producers write Kafka only; Kafka stays the source of truth",
        "nothing is lost: Redis keeps its copy and the frontier, so the mirror can resume later",
    ),
    DRAINING: (
        "the cutover is aborted: held sends resume in dual-write",
        "nothing is lost: the held sends were never sent and go to Kafka now",
    ),
    REDIS_PRIMARY: (
        "producers make Kafka primary again (dual-write)",
        "consumers already moved to Redis groups must be pointed back at their Kafka group by hand; "
        "Redis-group progress is not translated back to Kafka offsets",
    ),
}


@dataclass(frozen=True)
class RollbackPlan:
    phase: str
    target: str | None  # None: nothing to roll back, or no longer possible
    restores: str
    cannot: str
    live_writers: int
    unshadowed: int = 0  # entries written to Redis first whose Kafka shadow the mirror has not seen


def plan_rollback(config: StreamConfig) -> RollbackPlan:
    client = connect_redis(config)
    keys = migration_keys(config)
    phase = read_phase(client, keys).phase
    live = len(live_writers(client, keys))  # by the Redis server's clock
    if phase == KAFKA_ONLY:
        return RollbackPlan(phase, None, "nothing to roll back: Kafka is the only target", "", live)
    if phase == REDIS_ONLY:
        return RollbackPlan(
            phase, None, "", "rollback is no longer possible after redis-only", live
        )
    restores, cannot = RESTORES[phase]
    written, shadowed = read_state_counters(client, keys, "primary_written", "shadowed")
    unshadowed = max(0, written - shadowed)
    if phase == REDIS_PRIMARY:
        cannot += (
            f"; {written} entries were written to Redis first and the mirror has passed "
            f"{shadowed} of their Kafka shadows"
            + (
                f": {unshadowed} are not in Kafka yet (in flight, or lost if their writer died "
                "between the two writes; those only Redis has)"
                if unshadowed
                else ""
            )
        )
    return RollbackPlan(phase, ROLLBACK_TO[phase], restores, cannot, live, unshadowed)


def roll_back(
    config: StreamConfig, plan: RollbackPlan, wait_s: float = 5.0
) -> tuple[str, list[str]]:
    """Apply the plan; returns (phase now, writers that did not acknowledge within wait_s)."""
    client = connect_redis(config)
    keys = migration_keys(config)
    if plan.target is None:
        return plan.phase, []
    state = set_phase(client, keys, plan.target, reason="rollback", actor="rollback")
    deadline = time.monotonic() + wait_s
    while True:
        behind = [w.writer_id for w in live_writers(client, keys) if w.acked_epoch != state.epoch]
        if not behind or time.monotonic() > deadline:
            return state.phase, behind
        time.sleep(0.05)  # polling the writer registry, bounded by wait_s
