"""The mirror: backfill a topic into its stream from the frontier, optionally tailing after.

One reader thread (Kafka) and one writer thread (Redis, pipelined). Every batch goes through
the ingest script, so a crash anywhere leaves stream and frontier consistent and a rerun
resumes at ``frontier[p] + 1``.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from ferry.config import StreamConfig
from ferry.core.batching import read_server_limits, split_batches
from ferry.core.durability import check_stream_tail, settle_restart
from ferry.core.identity import check_source, fingerprint
from ferry.core.ingest import (
    ArmRequest,
    Ingestor,
    arm_migration,
    migration_keys,
    parse_reply,
    read_state,
    record_max_future_skew,
    script_error,
)
from ferry.core.positions import choose_start, read_record_at, start_timestamp
from ferry.errors import FerryError, IntegrityError, OffsetRangeError, RedisTargetError
from ferry.kafka.source import KafkaSource, TopicInfo, open_source
from ferry.redis.faults import FaultState, describe_permanent, ride_out, transient_cause
from ferry.redis.target import check_target, connect_redis

PIPELINE_BATCHES = 4
QUEUE_BATCHES = 16
# Writer threads, each with its own connection and a fixed share of the partitions (p % N),
# so one packs and sends while Redis executes the other's pipeline; per partition, batches
# still go out in order.
WRITERS = 2
LIVE_SLACK = 10_000  # offsets below (end at start - this) are settled history
GAP_RECHECK_S = 0.2
TOPIC_CHECK_S = 5.0  # how often a following mirror looks for new partitions
FOLLOW_WAIT_S = 0.01  # a caught-up mirror's read wait (the client's own fetch wait still applies)
PROGRESS_LOG_S = 30.0  # a progress line this often (INFO on ferry.core.mirror)

log = logging.getLogger("ferry.core.mirror")


@dataclass(frozen=True)
class BackfillSummary:
    stream: str
    client: str
    records: int
    bytes: int
    seconds: float
    refused: int
    frontier: dict[int, int]
    ends: dict[int, int]  # each partition's end (high watermark) when the run started
    complete: bool  # every partition reached its end (never true with follow)
    gap_rechecks: int = 0  # offset gaps read again before being believed

    @property
    def msg_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict:
        return {
            "stream": self.stream,
            "client": self.client,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "msg_per_s": round(self.msg_per_s, 1),
            "mb_per_s": round(self.bytes / self.seconds / 1e6, 2) if self.seconds else 0.0,
            "refused_batches": self.refused,
            "complete": self.complete,
            "gap_rechecks": self.gap_rechecks,
        }


@dataclass
class _Batch:
    partition: int
    generation: int
    read_from: int
    args: list
    count: int
    nbytes: int
    progress: int


@dataclass
class _Shared:
    refused: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> (generation, frontier)
    error: BaseException | None = None
    records: int = 0
    nbytes: int = 0
    refused_batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def plan_arming(config: StreamConfig, source: KafkaSource, info: TopicInfo) -> ArmRequest:
    """Where every partition starts for the configured start rule, how each start was found,
    and the topic's identity, as arming records them."""
    target_ms = start_timestamp(config.start, int(time.time() * 1000))
    hints = source.offsets_for_time(target_ms) if target_ms is not None else {}
    choices = {
        p: choose_start(source, p, info.low[p], info.high[p], target_ms, hints.get(p))
        for p in info.partitions
    }
    fingerprints = {}
    if info.topic_id is None:  # no topic IDs on this broker: remember each first record
        for p, choice in choices.items():
            record = read_record_at(source, p, choice.offset, info.high[p])
            if record is not None:
                fingerprints[p] = fingerprint(record)
    return ArmRequest(
        topic=config.kafka.topic,
        topic_id=info.topic_id,
        start_rule=config.start.describe(),
        start_ts=target_ms,
        starts={p: c.offset for p, c in choices.items()},
        found={p: c.found for p, c in choices.items()},
        fingerprints=fingerprints,
    )


def check_resumable(info: TopicInfo, frontiers: dict[int, int]) -> None:
    """Kafka must still hold every record from the position on; retention may have deleted some."""
    for p in info.partitions:
        if p in frontiers and frontiers[p] + 1 < info.low[p]:
            raise OffsetRangeError(
                f"partition {p}: ferry's position is {frontiers[p] + 1} but Kafka's log now "
                f"starts at {info.low[p]}; records {frontiers[p] + 1}..{info.low[p] - 1} were "
                "deleted (retention or DeleteRecords) before ferry copied them. They cannot be "
                "copied any more: restore them into the topic, or start a new migration"
            )


def arm_added_partitions(config, target, keys, firsts: dict[int, int]) -> None:
    """Arm partitions created after the migration was armed, at their first offset; their
    start is recorded as ``added`` (validation expects the log start for them)."""
    arm_migration(
        target,
        keys,
        ArmRequest(
            topic=config.kafka.topic,
            topic_id=None,  # already recorded; arming checks nothing new against it
            start_rule=config.start.describe(),
            start_ts=None,
            starts=firsts,
            found=dict.fromkeys(firsts, "added"),
            fingerprints={},
        ),
    )


def backfill(
    config: StreamConfig,
    *,
    follow: bool = False,
    client: str | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_lag: Callable[[dict[int, int]], None] | None = None,
    on_redis_fault: Callable[[FaultState], None] | None = None,
    on_error: Callable[[str, int], None] | None = None,
) -> BackfillSummary:
    """Copy the topic from the configured start (or the frontier) into the stream.

    Without ``follow`` it stops at the high watermarks seen when it started; with ``follow``
    it keeps tailing until ``should_stop()`` returns True. ``on_batch(partition, frontier,
    appended)`` is called from a writer thread after every accepted batch; ``on_lag(lag)``
    about once a second with each partition's records between what was read and the end
    the latest fetch reported.

    Transient Redis faults are waited out (see :mod:`ferry.redis.faults`): for ever with
    ``follow``, else up to ``redis.fault_deadline``; ``on_redis_fault(state)`` is told when
    a wait starts, changes cause or ends.

    ``on_error(kind, count)`` counts what went wrong and was handled: ``"kafka_read"``
    (errors the Kafka client reported, about once a second) and ``"refused_batch"`` (from a
    writer thread). Progress is logged at INFO on ``ferry.core.mirror``.
    """
    keys = migration_keys(config)
    rides = _Rides(config, follow, should_stop, on_redis_fault)

    def prepare():
        target = connect_redis(config)
        check_target(target)
        settle_restart(target, keys)
        starts, frontiers = read_state(target, keys)
        check_stream_tail(target, keys, frontiers)
        return target, (starts, frontiers)

    # Positions before ends: a dual-writer moves positions on while we look, and an end
    # read first could be older than a position read after it.
    target, (starts, frontiers) = rides.call(prepare)
    rides.settle = lambda: settle_restart(target, keys)  # again after every Redis outage
    source = open_source(config, client)
    try:
        info = source.describe_topic()
        rides.call(lambda: check_source(target, keys, source, info, frontiers))
        if not starts:
            plan = plan_arming(config, source, info)
            starts, frontiers = rides.call(lambda: _armed(target, keys, plan))
        elif any(p not in starts for p in info.partitions):  # added since: from their first offset
            new = {p: info.low[p] for p in info.partitions if p not in starts}
            rides.call(lambda: arm_added_partitions(config, target, keys, new))
            starts, frontiers = rides.call(lambda: read_state(target, keys))
        check_resumable(info, frontiers)
        return _run(
            config,
            source,
            target,
            info,
            frontiers,
            follow,
            progress,
            rides,
            on_batch,
            on_lag,
            on_error,
        )
    finally:
        source.close()


def _armed(target, keys, plan: ArmRequest):
    arm_migration(target, keys, plan)  # idempotent: arming an armed partition keeps its start
    settle_restart(target, keys)  # records the server's run_id before the first write
    return read_state(target, keys)


class _Rides:
    """One run's way through Redis faults: the deadline, the stop signal and one state."""

    def __init__(self, config: StreamConfig, follow: bool, should_stop, on_state) -> None:
        self.deadline_s = None if follow else config.redis.fault_deadline_ms / 1000
        self.should_stop = should_stop
        self.on_state = on_state
        self.state = FaultState()
        self.user = config.redis.username.resolve() if config.redis.username else None
        self.settle: Callable[[], object] | None = None  # run before writing after an outage
        self.unsettled = False
        self.lock = threading.Lock()

    def _on_state(self, state: FaultState) -> None:
        if state.cause is not None:
            self.unsettled = True  # the server may have restarted meanwhile
        if self.on_state is not None:
            self.on_state(state)

    def call(self, fn):
        def attempt():
            if self.unsettled and self.settle is not None:
                with self.lock:
                    if self.unsettled:
                        self.settle()
                        self.unsettled = False
            return fn()

        return ride_out(
            attempt,
            deadline_s=self.deadline_s,
            state=self.state,
            on_state=self._on_state,
            user=self.user,
            should_stop=self.should_stop,
        )


def _run(
    config, source, target, info, frontiers, follow, progress, rides, on_batch, on_lag, on_error
):
    should_stop = rides.should_stop
    keys = migration_keys(config)
    traits = source.traits
    gaps_allowed = info.compacted or config.kafka.transactional
    pos = {p: frontiers[p] + 1 for p in info.partitions}  # each partition's position
    ends = {p: info.high[p] for p in info.partitions}
    done = set() if follow else {p for p in info.partitions if pos[p] >= ends[p]}
    generation = dict.fromkeys(info.partitions, 0)
    # On a broker with the fetch race (Tansu 0.6), offset gaps near the live end are read
    # again before they are believed: it can answer a fetch with a later batch while the
    # earlier one is not yet readable, and both clients then skip it silently.
    live_from = {p: ends[p] - LIVE_SLACK for p in info.partitions}
    gaps = GapChecks()
    total = sum(max(0, ends[p] - pos[p]) for p in info.partitions)

    def accept_gap(p: int, offset: int) -> bool:
        if not gaps_allowed:
            return False
        return not traits.fetch_race or offset < live_from[p]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        in_notebook = "ipykernel" in sys.modules  # stderr there is drawn as an error box
        bar = tqdm(
            total=total,
            unit="rec",
            unit_scale=True,
            desc=f"backfill {config.name}",
            file=sys.stdout if in_notebook else sys.stderr,
            mininterval=2.0 if in_notebook else 0.1,
        )

    shared = _Shared()
    queues: list[queue.Queue[_Batch | None]] = [
        queue.Queue(maxsize=QUEUE_BATCHES) for _ in range(WRITERS)
    ]
    skew_ms = config.redis.max_future_skew_ms
    rides.call(lambda: record_max_future_skew(target, keys, skew_ms))
    ingestor = rides.call(lambda: Ingestor(target, keys))
    limits = rides.call(lambda: read_server_limits(target))
    writers = [
        threading.Thread(
            target=_write_loop,
            args=(ingestor, q, shared, bar, on_batch, rides, on_error),
            daemon=True,
        )
        for q in queues
    ]

    def enqueue(p: int, chunk: list, read_to: int) -> None:
        batch = _make_batch(ingestor, p, generation[p], pos[p], chunk, read_to)
        _put(queues[p % WRITERS], shared, batch, should_stop)
        pos[p] = read_to

    started = time.monotonic()
    report = _Progress(config, source, shared, started, follow, total, on_error)
    for writer in writers:
        writer.start()
    try:
        active = [p for p in info.partitions if p not in done]
        if active:
            source.assign({p: pos[p] for p in active})
        next_lag = next_topic_check = 0.0
        wait_s = 0.2
        while (follow or len(done) < len(info.partitions)) and not should_stop():
            if shared.error is not None:
                break
            now = time.monotonic()
            if now >= next_lag:
                next_lag = now + 1.0
                lag = _read_lag(source, pos, active)
                report.tick(now, lag)
                if on_lag is not None:
                    on_lag(lag)
            if follow and now >= next_topic_check:
                next_topic_check = now + TOPIC_CHECK_S
                added = _add_new_partitions(config, source, target, keys, info, pos, rides)
                if added:
                    active += added
                    generation.update(dict.fromkeys(added, 0))
                    live_from.update({p: -1 for p in added})
            seeked = _apply_refusals(source, shared, pos, generation)
            records = source.poll_records(config.batch_size * 4, wait_s)
            # caught up (a short read) and following: wait briefly, so a new record is
            # written within a few ms instead of after a full read timeout
            wait_s = FOLLOW_WAIT_S if follow and len(records) < config.batch_size * 4 else 0.2
            if not records and not follow:
                _mark_done_by_position(source, pos, ends, done, info.partitions)
            by_partition: dict[int, list] = {}
            for record in records:
                by_partition.setdefault(record.partition, []).append(record)
            for p, recs in by_partition.items():
                if p in done:
                    continue
                if not follow and recs[-1].offset >= ends[p]:
                    recs = [r for r in recs if r.offset < ends[p]]
                recs = [r for r in recs if r.offset >= pos[p]]  # fetched before a re-seek
                if recs and recs[0].offset == pos[p]:
                    gaps.pop(p, None)  # a pending gap check came back filled: it was the race
                while recs:
                    taken, rest = take_contiguous(recs, pos[p], lambda g, p=p: accept_gap(p, g))
                    for chunk in split_batches(taken, config.batch_size, limits, PIPELINE_BATCHES):
                        enqueue(p, chunk, chunk[-1].offset + 1)
                    if not rest:
                        break
                    if traits.fetch_race and not gaps.confirmed(p, pos[p], rest[0].offset):
                        source.seek(p, pos[p])  # read it again before believing the gap
                        seeked.add(p)
                        break
                    if not gaps_allowed:
                        raise IntegrityError(
                            f"partition {p} of {config.kafka.topic!r}: offsets {pos[p]}..{rest[0].offset - 1} "
                            "are missing"
                            + (
                                f" and stayed missing when read again {GAP_RECHECK_S:.1f}s later"
                                if traits.fetch_race
                                else ""
                            )
                            + "; the topic is neither compacted nor declared transactional, so records "
                            "would be skipped. Nothing after the position was written; set "
                            "kafka.transactional: true if transactional producers write this topic"
                        )
                    for chunk in split_batches(rest[:1], 1, limits, PIPELINE_BATCHES):
                        enqueue(p, chunk, rest[0].offset + 1)
                    gaps.pop(p, None)
                    recs = rest[1:]
            if gaps_allowed:  # step over markers (and aborted records) after the last record
                for p in active:
                    if p in done or p in seeked or p in gaps.pending:
                        continue
                    to = source.position(p) if follow else min(source.position(p), ends[p])
                    if to > pos[p]:
                        enqueue(p, [], to)
            if not follow:
                for p in list(by_partition):
                    if p not in done and pos[p] >= ends[p]:
                        done.add(p)
                        source.pause([p])
    finally:
        for writer, work in zip(writers, queues, strict=True):
            while writer.is_alive():
                try:
                    work.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            writer.join()
        if bar is not None:
            bar.close()
        report.end(should_stop())
    if shared.error is not None:
        raise shared.error
    _, frontiers = rides.call(lambda: read_state(target, keys))
    return BackfillSummary(
        stream=config.name,
        client=source.client_name,
        records=shared.records,
        bytes=shared.nbytes,
        seconds=time.monotonic() - started,
        refused=shared.refused_batches,
        frontier=frontiers,
        ends=ends,
        complete=not follow and len(done) == len(info.partitions),
        gap_rechecks=gaps.rechecks,
    )


class _Progress:
    """The mirror's log lines: start, caught up, every PROGRESS_LOG_S, end; and the Kafka
    client's error count, handed to ``on_error``."""

    def __init__(self, config, source, shared, started, follow, total, on_error) -> None:
        self.name, self.source, self.shared = config.name, source, shared
        self.started, self.follow, self.on_error = started, follow, on_error
        self.next_line = started + PROGRESS_LOG_S
        self.caught_up = False
        self.errors_seen = getattr(source, "read_errors", 0)
        self.lag: dict[int, int] = {}
        log.info(
            "backfill %s: %s -> %s, %d records to copy%s (client %s)",
            config.name,
            config.kafka.topic,
            config.redis.stream,
            total,
            ", then following" if follow else "",
            source.client_name,
        )

    def tick(self, now: float, lag: dict[int, int]) -> None:
        self.lag = lag
        errors = getattr(self.source, "read_errors", 0)
        if errors > self.errors_seen:
            if self.on_error is not None:
                self.on_error("kafka_read", errors - self.errors_seen)
            self.errors_seen = errors
        if self.follow and not self.caught_up and lag and not any(lag.values()):
            self.caught_up = True
            log.info(
                "backfill %s: caught up after %.1fs, %d records written; following",
                self.name,
                now - self.started,
                self.shared.records,
            )
        if now >= self.next_line:
            self.next_line = now + PROGRESS_LOG_S
            seconds = now - self.started
            log.info(
                "backfill %s: %d records written in %.0fs (%.0f/s), lag %d, %d refused batches",
                self.name,
                self.shared.records,
                seconds,
                self.shared.records / seconds if seconds else 0.0,
                sum(lag.values()),
                self.shared.refused_batches,
            )

    def end(self, stopped: bool) -> None:
        error = self.shared.error or sys.exc_info()[1]  # called from a finally
        if error is not None:
            how = f"failed ({type(error).__name__})"
        else:
            how = "stopped" if stopped else "finished"
        log.info(
            "backfill %s: %s after %.1fs, %d records written",
            self.name,
            how,
            time.monotonic() - self.started,
            self.shared.records,
        )


def _add_new_partitions(config, source, target, keys, info, pos, rides) -> list[int]:
    """Partitions created while the mirror follows: armed at their first offset, then read."""
    try:
        if all(p in pos for p in source.list_partitions()):
            return []
        partitions, low, _ = source.read_watermarks()
    except FerryError:
        return []  # a metadata hiccup; the next check sees them
    new = [p for p in partitions if p not in pos]
    if not new:
        return []

    def arm():
        arm_added_partitions(config, target, keys, {p: low[p] for p in new})
        return read_state(target, keys)

    _, frontiers = rides.call(arm)
    for p in new:
        pos[p] = frontiers[p] + 1
    source.add_partitions({p: pos[p] for p in new})
    return new


def take_contiguous(
    recs: list, expected: int, accept_gap: Callable[[int], bool]
) -> tuple[list, list]:
    """Split ``recs`` (one partition, as delivered) at the first gap ``accept_gap(offset)``
    refuses: (records up to it, the rest starting at the gap). Offsets must increase."""
    for i, r in enumerate(recs):
        if r.offset < expected:
            raise IntegrityError(
                f"partition {r.partition}: offset {r.offset} delivered after {expected - 1}"
            )
        if r.offset != expected and not accept_gap(r.offset):
            return recs[:i], recs[i:]
        expected = r.offset + 1
    return recs, []


class GapChecks:
    """Per partition, the gap being re-read: confirmed once it is still there after
    ``GAP_RECHECK_S``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.pending: dict[int, tuple[int, int, float]] = {}
        self.rechecks = 0

    def confirmed(self, partition: int, expected: int, got: int) -> bool:
        seen = self.pending.get(partition)
        now = self.clock()
        if seen is None or seen[:2] != (expected, got):
            self.pending[partition] = (expected, got, now)
            self.rechecks += 1
            return False
        return now - seen[2] >= GAP_RECHECK_S

    def pop(self, partition: int, default=None):
        return self.pending.pop(partition, default)


def _read_lag(source, pos: dict[int, int], partitions: list[int]) -> dict[int, int]:
    lag = {}
    for p in partitions:
        end = source.last_known_end(p)
        if end is not None:
            lag[p] = max(0, end - pos[p])
    return lag


def _mark_done_by_position(source, pos, ends, done, partitions) -> None:
    """A partition is done once everything below its end is settled (the advance batch that
    steps over trailing markers has been queued)."""
    for p in partitions:
        if p not in done and pos[p] >= ends[p]:
            done.add(p)
            source.pause([p])


def _make_batch(ingestor, p, gen, read_from, chunk, read_to) -> _Batch:
    nbytes = 0
    for r in chunk:
        nbytes += len(r.value or b"") + len(r.key or b"")
    args = ingestor.batch_args(p, read_from, chunk, read_to)
    return _Batch(p, gen, read_from, args, len(chunk), nbytes, read_to - read_from)


def _put(work, shared, batch, should_stop) -> None:
    """Queue ``batch`` for its writer; give up when the run ends (a writer failed, or the
    run is told to stop while the writer waits for Redis)."""
    while shared.error is None and not should_stop():
        try:
            work.put(batch, timeout=0.5)
            return
        except queue.Full:
            continue


def _apply_refusals(source, shared, pos, generation) -> set[int]:
    """Re-read refused partitions from the position Redis holds; returns those re-seeked."""
    if not shared.refused:
        return set()
    with shared.lock:
        refused, shared.refused = shared.refused, {}
    seeked = set()
    for p, (gen, frontier) in refused.items():
        if gen == generation[p]:
            generation[p] += 1
            pos[p] = frontier + 1
            source.seek(p, frontier + 1)
            seeked.add(p)
    return seeked


def _send(ingestor: Ingestor, batches: list[_Batch]) -> list:
    """One round trip; a transient fault in any reply is raised, so the whole round is
    made again (the ingest script skips what an earlier attempt already wrote)."""
    replies = ingestor.call_many([(b.partition, b.args) for b in batches])
    for reply in replies:
        if isinstance(reply, redis.RedisError) and transient_cause(reply) is not None:
            raise reply
    return replies


def _write_loop(
    ingestor: Ingestor, work: queue.Queue, shared: _Shared, bar, on_batch, rides: _Rides, on_error
) -> None:
    try:
        finished = False
        while not finished:
            batches = [work.get()]
            while len(batches) < PIPELINE_BATCHES:
                try:
                    batches.append(work.get_nowait())
                except queue.Empty:
                    break
            if batches[-1] is None:
                batches.pop()
                finished = True
            if not batches:
                continue
            replies = rides.call(lambda batches=batches: _send(ingestor, batches))
            for b, reply in zip(batches, replies, strict=True):
                if isinstance(reply, Exception):
                    raise _batch_error(b, reply, rides.user)
                result = parse_reply(b.partition, reply)
                if result.refused:
                    with shared.lock:
                        shared.refused_batches += 1
                        shared.refused[b.partition] = (b.generation, result.frontier)
                    if on_error is not None:
                        on_error("refused_batch", 1)
                    continue
                with shared.lock:
                    shared.records += result.appended
                    if result.appended:
                        shared.nbytes += b.nbytes * result.appended // b.count
                if bar is not None:
                    bar.update(b.progress)
                if on_batch is not None:
                    on_batch(b.partition, result.frontier, result.appended)
    except BaseException as exc:  # surfaced by the reader thread
        shared.error = exc


def _batch_error(batch: _Batch, reply: Exception, user: str | None) -> Exception:
    error = script_error(reply) if isinstance(reply, redis.ResponseError) else reply
    if isinstance(error, FerryError):
        return error
    first = batch.read_from
    return RedisTargetError(
        f"partition {batch.partition}, batch from offset {first}: "
        + describe_permanent(error, user)
    )
