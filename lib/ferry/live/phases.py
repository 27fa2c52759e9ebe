"""Migration phases held in Redis: one function per transition, illegal ones refused, every
change logged (with its epoch) to the migration's events stream; plus the writer registry."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from ferry.core.ingest import MigrationKeys, _script, armed_partitions
from ferry.errors import FerryError, UsageError

KAFKA_ONLY = "kafka-only"
DUAL_WRITE = "dual-write"
DRAINING = "draining"
REDIS_PRIMARY = "redis-primary"
REDIS_ONLY = "redis-only"
PHASES = (KAFKA_ONLY, DUAL_WRITE, DRAINING, REDIS_PRIMARY, REDIS_ONLY)

# (from, to) -> the verb that makes it
TRANSITIONS: dict[tuple[str, str], str] = {
    (KAFKA_ONLY, DUAL_WRITE): "start dual-write",
    (DUAL_WRITE, KAFKA_ONLY): "roll back to kafka-only",
    (DUAL_WRITE, DRAINING): "start draining",
    (DRAINING, DUAL_WRITE): "abort cutover",
    (DRAINING, REDIS_PRIMARY): "complete cutover",
    (REDIS_PRIMARY, DUAL_WRITE): "roll back to dual-write",
    (REDIS_PRIMARY, REDIS_ONLY): "finish (no rollback after this)",
}
WRITER_TTL_S = 5.0  # a writer without a heartbeat for this long is not live
DEFAULT_LEASE_S = 5.0  # how long draining lasts without its coordinator (server clock)


class IllegalTransition(FerryError):
    """The requested phase change is not allowed from the current phase."""


# moves `ferry phase --set` makes without --force: the start, and aborting a drain
UNGATED = {(KAFKA_ONLY, DUAL_WRITE), (DRAINING, DUAL_WRITE)}
GATED_PATHS = (
    "ferry cutover (to redis-primary), ferry run STREAM --only 99 (rollback) "
    "or ferry finish (to redis-only)"
)
# what a forced move skips, per (from, to)
FORCE_RISKS: dict[tuple[str, str], str] = {
    (DUAL_WRITE, KAFKA_ONLY): "skips the rollback plan: writers stop copying live records to "
    "Redis; Redis consumers see only what a mirror copies",
    (DUAL_WRITE, DRAINING): "writers hold every send until the lease ends, with no coordinator "
    "to switch or abort",
    (DRAINING, REDIS_PRIMARY): "skips the cutover's checks: a writer that did not acknowledge "
    "draining, or mirror lag, can misorder records or leave them out of the stream",
    (REDIS_PRIMARY, DUAL_WRITE): "skips the rollback plan: Redis groups are not moved back and "
    "entries without a Kafka shadow stay only in Redis",
    (REDIS_PRIMARY, REDIS_ONLY): "skips the finish gates, with no way back: unshadowed entries, "
    "groups still on Kafka and producers still writing Kafka are left behind",
}


class UngatedPhaseChange(UsageError):
    """``ferry phase --set`` asked for a move only a gated verb (or --force) may make."""


class LeaseExpired(FerryError):
    """The draining lease ran out (by the Redis server's clock) before the switch; the
    phase stays draining until it goes back to dual-write."""


@dataclass(frozen=True)
class PhaseState:
    phase: str
    epoch: int


@dataclass(frozen=True)
class PhaseLease:
    phase: str
    epoch: int
    lease_until_ms: int | None  # set while draining, Redis server clock
    server_ms: int  # Redis TIME when read


@dataclass(frozen=True)
class WriterInfo:
    writer_id: str
    heartbeat_ms: int
    acked_epoch: int
    phase: str
    max_hold_ms: float = 0.0  # the longest any send() of this writer was held
    sent: int = 0
    last_drain_ms: float = 0.0  # how long this writer saw the last draining phase last

    def live(self, now_ms: int, ttl_s: float = WRITER_TTL_S) -> bool:
        return now_ms - self.heartbeat_ms <= ttl_s * 1000


def events_key(keys: MigrationKeys) -> str:
    return f"{keys.tag}:ferry:events"


def writers_key(keys: MigrationKeys) -> str:
    return f"{keys.tag}:ferry:writers"


def check_transition(current: str, target: str) -> str:
    """The verb of a legal transition; IllegalTransition (naming the legal ones) otherwise."""
    verb = TRANSITIONS.get((current, target))
    if verb is None:
        legal = sorted(to for (frm, to) in TRANSITIONS if frm == current) or [
            "none: the migration is finished"
        ]
        raise IllegalTransition(
            f"cannot go from {current} to {target}; from {current} ferry can go to {', '.join(legal)}"
        )
    return verb


def check_manual_move(current: str, target: str, force: bool) -> str:
    """For ``ferry phase --set``: '' for an ungated move, the risk for a forced one;
    IllegalTransition or :class:`UngatedPhaseChange` (naming the gated verbs) otherwise."""
    check_transition(current, target)
    if (current, target) in UNGATED:
        return ""
    if not force:
        raise UngatedPhaseChange(
            f"phase {current} -> {target} is not a move 'ferry phase --set' makes; use "
            f"{GATED_PATHS}, or add --force (logged)"
        )
    return FORCE_RISKS.get((current, target), "skips the gates of this move")


def read_phase(client: redis.Redis, keys: MigrationKeys) -> PhaseState:
    phase, epoch = client.hmget(keys.state, "phase", "epoch")
    return PhaseState(phase.decode() if phase else KAFKA_ONLY, int(epoch or 0))


def set_phase(
    client: redis.Redis,
    keys: MigrationKeys,
    target: str,
    reason: str = "",
    actor: str = "ferry",
    *,
    lease_s: float = DEFAULT_LEASE_S,
    forced: bool = False,
) -> PhaseState:
    """Move to ``target`` if that is legal from the current phase; atomic compare-and-set.
    Draining gets a lease of ``lease_s`` (server clock); draining -> redis-primary past the
    lease raises :class:`LeaseExpired`. ``forced`` also logs a 'forced' event."""
    if target == DRAINING and lease_s <= 0:
        raise ValueError(f"lease_s must be positive, not {lease_s}")
    current = read_phase(client, keys)
    check_transition(current.phase, target)
    # spread layout: a move that lets writers put records in Redis first is copied into
    # every partition's slot before the migration-wide phase changes (writers act on that),
    # every other move after it; either way a Redis-first write passes its slot's check only
    # while the migration allows it, or in the moment before it stops allowing it
    copies_first = keys.spread and target in REDIS_FIRST and current.phase not in REDIS_FIRST
    if copies_first:
        push_phase_copies(client, keys, target, current.epoch + 1)
    try:
        epoch, _, _ = _script(client, "phase.lua")(
            keys=[keys.state, events_key(keys)],
            args=[current.phase, target, reason, actor, int(lease_s * 1000), int(forced)],
        )
    except redis.ResponseError as exc:
        if copies_first:  # the move did not happen: the copies go back to what is
            now = read_phase(client, keys)
            push_phase_copies(client, keys, now.phase, now.epoch)
        text = str(exc)
        if "FERRY_LEASE" in text:
            raise LeaseExpired(
                f"{text.split('FERRY_LEASE', 1)[1].strip()}: refusing {current.phase} -> "
                f"{target}; draining goes back to dual-write (expire_draining)"
            ) from exc
        if "FERRY_PHASE" in text:
            raise IllegalTransition(
                f"{text.split('FERRY_PHASE', 1)[1].strip()} (changed meanwhile)"
            ) from exc
        raise
    from ferry.core.durability import wait_for_replicas

    if keys.spread and not copies_first:
        push_phase_copies(client, keys, target, int(epoch))
    # the phase is what every writer obeys: it must not be lost in a failover
    wait_for_replicas(client, f"the phase change to {target} (epoch {int(epoch)})")
    return PhaseState(target, int(epoch))


# the phases in which writers put records in Redis first
REDIS_FIRST = (REDIS_PRIMARY, REDIS_ONLY)


def push_phase_copies(client: redis.Redis, keys: MigrationKeys, phase: str, epoch: int) -> None:
    """Spread layout: write ``phase`` and ``epoch`` into every armed partition's state hash
    (``phase_copy.lua``), the copy that partition's Redis-first writes are checked against."""
    script = _script(client, "phase_copy.lua")
    for partition in armed_partitions(client, keys):
        script(keys=[keys.partition_state(partition)], args=[partition, phase, epoch])


def read_phase_copies(client: redis.Redis, keys: MigrationKeys) -> dict[int, PhaseState]:
    """Spread layout: each armed partition's copy of the phase (kafka-only where none)."""
    copies = {}
    for partition in armed_partitions(client, keys):
        phase, epoch = client.hmget(keys.partition_state(partition), "phase", "epoch")
        copies[partition] = PhaseState(phase.decode() if phase else KAFKA_ONLY, int(epoch or 0))
    return copies


def start_dual_write(client, keys, reason=""):
    return set_phase(client, keys, DUAL_WRITE, reason)


def start_draining(
    client: redis.Redis, keys: MigrationKeys, reason: str = "", lease_s: float = DEFAULT_LEASE_S
) -> PhaseState:
    return set_phase(client, keys, DRAINING, reason, lease_s=lease_s)


def abort_cutover(client, keys, reason=""):
    return set_phase(client, keys, DUAL_WRITE, reason)


def complete_cutover(client, keys, reason=""):
    """draining -> redis-primary; :class:`LeaseExpired` once the lease ran out."""
    return set_phase(client, keys, REDIS_PRIMARY, reason)


def finish_migration(client, keys, reason=""):
    return set_phase(client, keys, REDIS_ONLY, reason)


def server_ms(client: redis.Redis) -> int:
    """The Redis server's clock (TIME) in ms: every lease and liveness check uses it."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def read_phase_lease(client: redis.Redis, keys: MigrationKeys) -> PhaseLease:
    """Phase, epoch, draining lease and server time in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hmget(keys.state, "phase", "epoch", "lease_until")
    pipe.time()
    (phase, epoch, lease), (seconds, micros) = pipe.execute()
    return PhaseLease(
        phase.decode() if phase else KAFKA_ONLY,
        int(epoch or 0),
        int(lease) if lease is not None else None,
        int(seconds) * 1000 + int(micros) // 1000,
    )


def expire_draining(client: redis.Redis, keys: MigrationKeys, actor: str) -> PhaseState:
    """Atomically: draining whose lease ended (server clock) -> dual-write, logged with
    reason 'lease expired'; otherwise nothing changes. Returns the phase after the call."""
    phase, epoch = _script(client, "expire.lua")(keys=[keys.state, events_key(keys)], args=[actor])
    state = PhaseState(phase.decode() if isinstance(phase, bytes) else str(phase), int(epoch))
    if keys.spread and state.phase == DUAL_WRITE:  # cheap, and repairs a coordinator's crash
        push_phase_copies(client, keys, state.phase, state.epoch)
    return state


def log_event(client: redis.Redis, keys: MigrationKeys, kind: str, **fields: object) -> bytes:
    """Record a gate result or any other event beside the phase changes."""
    return client.xadd(events_key(keys), {"type": kind, **{k: str(v) for k, v in fields.items()}})


def read_events(client: redis.Redis, keys: MigrationKeys) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} | {"id": entry_id.decode()}
        for entry_id, fields in client.xrange(events_key(keys))
    ]


def report_writer(client: redis.Redis, keys: MigrationKeys, info: WriterInfo) -> int:
    """Register or heartbeat a writer (its acknowledged epoch and phase included). The
    stored heartbeat is the Redis server's time, not ``info.heartbeat_ms`` (a host clock);
    returns it."""
    body = {k: v for k, v in info.__dict__.items() if k != "heartbeat_ms"}
    return int(
        _script(client, "writer.lua")(
            keys=[writers_key(keys)], args=[info.writer_id, json.dumps(body)]
        )
    )


def remove_writer(client: redis.Redis, keys: MigrationKeys, writer_id: str) -> None:
    client.hdel(writers_key(keys), writer_id)


def read_writers(client: redis.Redis, keys: MigrationKeys) -> list[WriterInfo]:
    return [WriterInfo(**json.loads(v)) for v in client.hgetall(writers_key(keys)).values()]


def now_ms() -> int:
    """This host's clock in ms: for record timestamps, never for liveness or leases."""
    return int(time.time() * 1000)


def live_writers(client: redis.Redis, keys: MigrationKeys) -> list[WriterInfo]:
    """Writers whose heartbeat (server time) is within the TTL of the server's time now."""
    now = server_ms(client)
    return [w for w in read_writers(client, keys) if w.live(now)]
