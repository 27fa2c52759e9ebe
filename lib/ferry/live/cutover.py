"""Cutover: from dual-write to redis-primary with a bounded pause, or back to dual-write."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from ferry.config import StreamConfig
from ferry.core.ingest import migration_keys, read_state
from ferry.errors import FerryError
from ferry.kafka.source import open_source
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    LeaseExpired,
    PhaseState,
    abort_cutover,
    complete_cutover,
    live_writers,
    log_event,
    read_phase,
    read_writers,
    start_draining,
)
from ferry.redis.target import connect_redis

log = logging.getLogger("ferry.live.cutover")


class CutoverAborted(FerryError):
    """The cutover went back to dual-write; nothing was lost. The message says why."""


class PauseBoundExceeded(CutoverAborted):
    """Writers or the mirror were not ready within the pause bound: back to dual-write; a
    later attempt may succeed (a busy machine, a burst of traffic)."""


@dataclass(frozen=True)
class CutoverReport:
    epoch: int
    pause_ms: float  # from draining to redis-primary, as the coordinator saw it
    writers: dict[str, float] = field(default_factory=dict)  # draining as each writer saw it (ms)
    lag_at_switch: dict[int, int] = field(default_factory=dict)
    attempts: int = 1  # the drains tried; each one before the last went back to dual-write
    # where the pause went, ms from its start: draining set, writers acknowledged, mirror caught
    # up, switched (the last drain)
    stages_ms: dict[str, float] = field(default_factory=dict)


def mirror_lag(config: StreamConfig, source=None, client=None) -> dict[int, int]:
    """Records Kafka holds beyond the frontier, per partition (partition ends from a fetch).
    Pass an open ``source`` and Redis ``client`` when polling, to reuse their connections."""
    own = source is None
    source = source or open_source(config)
    try:
        partitions, _, high = source.read_watermarks()
    finally:
        if own:
            source.close()
    _, frontiers = read_state(client or connect_redis(config), migration_keys(config))
    return {p: max(0, high[p] - (frontiers.get(p, -1) + 1)) for p in partitions}


def lease_for(pause_bound_s: float) -> float:
    """The draining lease of a cutover: longer than its pause bound, with a margin, so a live
    coordinator always switches or aborts first and only a dead one lets it run out."""
    return max(pause_bound_s * 2, pause_bound_s + 2.0)


def cutover_gates(config: StreamConfig, lag_threshold: int) -> list[tuple[str, bool, str]]:
    """What must hold before draining starts: dual-write, every live writer (by the Redis
    server's clock) acknowledged the current epoch, lag under the threshold."""
    client = connect_redis(config)
    keys = migration_keys(config)
    state = read_phase(client, keys)
    live = live_writers(client, keys)
    behind = [w.writer_id for w in live if w.acked_epoch != state.epoch]
    lag = mirror_lag(config)
    return [
        ("phase is dual-write", state.phase == DUAL_WRITE, state.phase),
        ("at least one live writer", bool(live), f"{len(live)} live"),
        (
            "every live writer acknowledged the current epoch",
            not behind,
            f"behind: {behind}" if behind else "",
        ),
        (f"mirror lag under {lag_threshold}", sum(lag.values()) <= lag_threshold, f"lag {lag}"),
    ]


def _writer_pauses(
    client, keys, epoch: int, writer_ids: list[str], wait_s: float = 2.0
) -> dict[str, float]:
    """Each writer reports the draining it saw when it acknowledges the new epoch (after the
    switch, so waiting here does not lengthen the pause); writers that do not are left out."""
    deadline = time.monotonic() + wait_s
    while True:
        acked = {w.writer_id: w for w in read_writers(client, keys) if w.acked_epoch == epoch}
        if set(writer_ids) <= set(acked) or time.monotonic() > deadline:
            return {i: acked[i].last_drain_ms for i in writer_ids if i in acked}
        time.sleep(0.02)  # the writers' next phase poll, bounded by wait_s


def run_cutover(
    config: StreamConfig,
    *,
    pause_bound_s: float = 1.0,
    lag_threshold: int = 10_000,
    attempts: int = 1,
    retry_after_s: float = 2.0,
) -> CutoverReport:
    """Gates, draining, wait for every live writer's acknowledgement and zero lag, then
    redis-primary; abort back to dual-write when the pause bound would be exceeded, and try
    again (up to ``attempts`` drains, ``retry_after_s`` apart, each bounded the same way)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            report = _cutover_once(config, pause_bound_s, lag_threshold)
        except PauseBoundExceeded as exc:
            if attempt == attempts:
                raise
            log.warning(
                "cutover %s: attempt %d of %d aborted (%s); trying again in %.1fs",
                config.name,
                attempt,
                attempts,
                exc,
                retry_after_s,
            )
            time.sleep(retry_after_s)  # writers resume and the mirror catches up meanwhile
            continue
        return replace(report, attempts=attempt)
    raise AssertionError("unreachable")


def _cutover_once(config: StreamConfig, pause_bound_s: float, lag_threshold: int) -> CutoverReport:
    client = connect_redis(config)
    keys = migration_keys(config)
    failed = [
        f"{name} ({detail})" for name, ok, detail in cutover_gates(config, lag_threshold) if not ok
    ]
    if failed:
        log.warning("cutover %s: gates failed, nothing changed: %s", config.name, "; ".join(failed))
        log_event(client, keys, "gate", step="cutover", ok=False, failed="; ".join(failed))
        raise CutoverAborted("cutover gates failed, nothing changed: " + "; ".join(failed))
    source = open_source(config)
    try:
        began = time.monotonic()
        lease_s = lease_for(pause_bound_s)
        state = start_draining(client, keys, reason="cutover", lease_s=lease_s)
        log.info(
            "cutover %s: draining (epoch %d), pause bound %.1fs, lease %.1fs",
            config.name,
            state.epoch,
            pause_bound_s,
            lease_s,
        )
        set_ms = (time.monotonic() - began) * 1000
        try:
            report = _drain(config, client, keys, source, state.epoch, began, pause_bound_s)
            return replace(report, stages_ms={"draining_set": round(set_ms, 1), **report.stages_ms})
        except BaseException as exc:  # any failure, Ctrl-C included: back to dual-write
            why = str(exc) if isinstance(exc, CutoverAborted) else f"{type(exc).__name__}: {exc}"
            _abort_draining(client, keys, state.epoch, why)
            log.warning("cutover %s: aborted back to dual-write (%s)", config.name, why)
            if isinstance(exc, LeaseExpired):
                raise PauseBoundExceeded(
                    f"cutover aborted back to dual-write: {exc}; writers resume, nothing lost"
                ) from exc
            raise
    finally:
        source.close()


def _abort_draining(client, keys, epoch: int, why: str) -> None:
    """Best effort: back to dual-write if the phase is still this drain's; a failure here is
    logged, not raised (the lease then ends the drain)."""
    try:
        if read_phase(client, keys) == PhaseState(DRAINING, epoch):  # not switched, not expired
            abort_cutover(client, keys, reason=f"cutover: {why}")
            log_event(client, keys, "cutover", ok=False, reason=why)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the caller sees
        log.error("cutover: could not abort the drain (%s); the lease will end it", exc)


def _drain(
    config: StreamConfig, client, keys, source, epoch: int, began: float, pause_bound_s: float
) -> CutoverReport:
    """Wait for every live writer's acknowledgement and zero lag, then switch; raises
    PauseBoundExceeded when the bound passes first (the caller aborts)."""
    deadline = began + pause_bound_s
    stages: dict[str, float] = {}
    while True:  # checked once at least, so an abort always says who or what it waited for
        live = live_writers(client, keys)
        behind = [w.writer_id for w in live if w.acked_epoch != epoch]
        if not behind:
            stages.setdefault("writers_acked", round((time.monotonic() - began) * 1000, 1))
        lag = mirror_lag(config, source, client) if not behind else None
        if time.monotonic() >= deadline:  # the checks themselves took us past the bound
            waiting = "the bound passed while checking writers and lag" + (
                f"; writers not acknowledged: {behind}" if behind else ""
            )
            break
        if not behind and lag is not None and not any(lag.values()):
            stages["mirror_caught_up"] = round((time.monotonic() - began) * 1000, 1)
            # phase.lua records where Kafka's shadows begin (primary_from) in the switch
            done = complete_cutover(client, keys, reason="drained")
            pause = (time.monotonic() - began) * 1000
            stages["switched"] = round(pause, 1)
            writers = _writer_pauses(client, keys, done.epoch, [w.writer_id for w in live])
            log_event(client, keys, "cutover", ok=True, pause_ms=round(pause, 1), epoch=done.epoch)
            log.info(
                "cutover %s: redis-primary (epoch %d), writers paused %.1f ms",
                config.name,
                done.epoch,
                pause,
            )
            return CutoverReport(done.epoch, pause, writers, lag, stages_ms=stages)
        waiting = f"writers not acknowledged: {behind}" if behind else f"mirror lag {lag}"
        time.sleep(0.01)  # polling the registry and the lag within the bound
    raise PauseBoundExceeded(
        f"cutover aborted back to dual-write after {pause_bound_s}s ({waiting}); writers resume, nothing lost"
    )
