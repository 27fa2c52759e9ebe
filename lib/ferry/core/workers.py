"""Mirror workers in a Kafka consumer group: ``ferry backfill STREAM --workers``.

N processes, on one machine or many, subscribe to the topic in one Kafka consumer group
(``ferry-mirror.<name>`` unless told otherwise); Kafka's group protocol decides which worker
reads which partition. There is no scheduler of ferry's own.

A worker starts every partition it is given at the position Redis holds (``frontier + 1``)
and writes through the mirror's ingest script, so the position fences a worker that lost a
partition without knowing it yet (it was stopped, or cut off from Kafka): its replays are
skipped, a batch beyond the position is refused, and the reply's frontier, ahead of where
the worker read, tells it to re-read from the frontier. Kafka offsets are never committed:
the Redis frontier is the only authority, and the worker group never appears among the
groups with committed offsets that preflight and the hand-over list.

The assignor is cooperative-sticky: a worker that joins or leaves moves only the partitions
that change hands, while every other partition keeps copying through the rebalance (an eager
assignor stops every worker at every change). Correctness does not rest on it; the frontier
does that.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import redis

from ferry.config import StreamConfig
from ferry.core.batching import read_server_limits, split_batches
from ferry.core.durability import check_stream_tail, settle_restart
from ferry.core.identity import check_source
from ferry.core.ingest import (
    BatchResult,
    Ingestor,
    migration_keys,
    parse_reply,
    read_state,
    record_max_future_skew,
)
from ferry.core.mirror import (
    PIPELINE_BATCHES,
    GapChecks,
    _armed,
    _batch_error,
    _read_lag,
    _Rides,
    arm_added_partitions,
    check_resumable,
    plan_arming,
    take_contiguous,
)
from ferry.errors import IntegrityError, KafkaError, UsageError
from ferry.kafka.source import TopicInfo, open_source, resolve_bootstrap
from ferry.redis.faults import transient_cause
from ferry.redis.target import check_target, connect_redis

GROUP_PREFIX = "ferry-mirror."
SESSION_TIMEOUT_MS = 10_000  # Kafka's group.min.session.timeout.ms is 6000 by default
JOIN_TIMEOUT_S = 30.0  # no member id by then: the broker cannot run the group
STATE_CHECK_S = 1.0  # without --follow: how often the migration's frontiers are read
METADATA_REFRESH_MS = 5_000  # partitions added to the topic are assigned within about this

log = logging.getLogger("ferry.core.workers")


def group_id_for(config: StreamConfig, override: str | None = None) -> str:
    """The workers' consumer group: ``ferry-mirror.<name>``, or the one given."""
    if override is not None:
        if not override.strip():
            raise UsageError("--group needs a non-empty consumer group id")
        return override
    return GROUP_PREFIX + config.name


def group_settings(base: dict, group_id: str, name: str, session_timeout_ms: int) -> dict:
    """The consumer's settings: ferry's safe settings (no commits, no offset reset,
    read_committed) on a cooperative-sticky group member."""
    from ferry.kafka.confluent_client import SAFE_SETTINGS

    if session_timeout_ms < 1000:
        raise UsageError(f"--session-timeout {session_timeout_ms} ms is below 1000 ms")
    return {
        **base,
        "group.id": group_id,
        "client.id": f"ferry-worker-{name}-{socket.gethostname()}-{os.getpid()}",  # who holds what
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(300, session_timeout_ms // 5),
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.min.messages": 100_000,
        **SAFE_SETTINGS,  # enable.auto.commit false: the frontier, not Kafka, is the authority
    }


def fresh(records: list, position: int) -> list:
    """``records`` of one partition from ``position`` on, strictly increasing: what a fetch
    made before a seek or a rebalance delivered again is dropped."""
    out = []
    for r in records:
        if r.offset >= position:
            out.append(r)
            position = r.offset + 1
    return out


@dataclass
class Ownership:
    """The partitions this worker reads now, each with its position and a generation that
    moves on every (re)start, so a reply to a batch read before it is not acted on."""

    pos: dict[int, int] = field(default_factory=dict)
    generation: dict[int, int] = field(default_factory=dict)
    overtaken: int = 0

    def take(self, frontiers: dict[int, int]) -> dict[int, int]:
        """Own these partitions from their frontiers; returns where to read each from."""
        for p, frontier in frontiers.items():
            self.pos[p] = frontier + 1
            self.generation[p] = self.generation.get(p, 0) + 1
        return {p: self.pos[p] for p in frontiers}

    def drop(self, partitions: list[int]) -> None:
        for p in partitions:
            self.pos.pop(p, None)

    def settle(self, partition: int, generation: int, result: BatchResult) -> int | None:
        """Where to re-read ``partition`` from after this reply, or None to read on.

        A refused batch (it began beyond the position) and a frontier beyond everything this
        worker has read (another worker, or a dual-writer, copied further) both mean: read
        from the frontier. A reply to a batch of an earlier generation, or for a partition
        no longer owned, changes nothing."""
        if self.pos.get(partition) is None or self.generation[partition] != generation:
            return None
        if not result.refused and result.frontier < self.pos[partition]:
            return None
        self.overtaken += 1
        self.generation[partition] += 1
        self.pos[partition] = result.frontier + 1
        return self.pos[partition]


def caught_up(frontiers: dict[int, int], ends: dict[int, int]) -> bool:
    """Every partition's position has reached the end it had when the run started."""
    return all(frontiers.get(p, -1) + 1 >= end for p, end in ends.items())


@dataclass(frozen=True)
class WorkerSummary:
    stream: str
    group: str
    member: str
    records: int
    bytes: int
    seconds: float
    refused: int
    overtaken: int  # times a partition's frontier was found beyond this worker's read
    rebalances: int
    partitions: tuple[int, ...]  # owned at the end
    complete: bool  # without follow: every partition reached the end seen at the start

    def as_json(self) -> dict:
        rate = self.records / self.seconds if self.seconds else 0.0
        return {
            "stream": self.stream,
            "group": self.group,
            "member": self.member,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "msg_per_s": round(rate, 1),
            "refused_batches": self.refused,
            "overtaken": self.overtaken,
            "rebalances": self.rebalances,
            "partitions": list(self.partitions),
            "complete": self.complete,
        }


def run_worker(
    config: StreamConfig,
    *,
    follow: bool = True,
    group: str | None = None,
    session_timeout_ms: int = SESSION_TIMEOUT_MS,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_lag: Callable[[dict[int, int]], None] | None = None,
    on_redis_fault=None,
    on_error: Callable[[str, int], None] | None = None,
) -> WorkerSummary:
    """Join the migration's worker group and copy the partitions Kafka assigns, until
    ``should_stop()`` (with ``follow``) or until every partition of the topic reached the end
    it had when this worker started (without). Callbacks as for
    :func:`ferry.core.mirror.backfill`, for the partitions this worker holds."""
    keys = migration_keys(config)
    rides = _Rides(config, follow, should_stop, on_redis_fault)
    target, info = _prepare(config, keys, rides)
    worker = _Worker(config, target, info, rides, group_id_for(config, group), session_timeout_ms)
    return worker.run(follow, on_batch, on_lag, on_error)


def _prepare(config, keys, rides) -> tuple[object, TopicInfo]:
    """The mirror's start, once per worker: target checks, topic identity, arming (idempotent:
    whichever worker arms first sets the starts), partitions added since."""

    def connect():
        target = connect_redis(config)
        check_target(target)
        settle_restart(target, keys)
        starts, frontiers = read_state(target, keys)
        check_stream_tail(target, keys, frontiers)
        return target, starts, frontiers

    target, starts, frontiers = rides.call(connect)
    rides.settle = lambda: settle_restart(target, keys)
    source = open_source(config, "confluent")  # an assign() reader for the checks only
    try:
        info = source.describe_topic()
        rides.call(lambda: check_source(target, keys, source, info, frontiers))
        if not starts:
            plan = plan_arming(config, source, info)
            rides.call(lambda: _armed(target, keys, plan))
        elif any(p not in starts for p in info.partitions):
            new = {p: info.low[p] for p in info.partitions if p not in starts}
            rides.call(lambda: arm_added_partitions(config, target, keys, new))
        _, frontiers = rides.call(lambda: read_state(target, keys))
        check_resumable(info, frontiers)
    finally:
        source.close()
    return target, info


class _Worker:
    def __init__(self, config, target, info: TopicInfo, rides, group_id: str, session_ms: int):
        from confluent_kafka import Consumer

        from ferry.kafka.confluent_client import ConfluentSource

        self.config, self.target, self.info, self.rides = config, target, info, rides
        self.keys = migration_keys(config)
        self.group = group_id
        # ConfluentSource's reading (records, positions, ends, errors) on a group member
        self.source = ConfluentSource(config.kafka, resolve_bootstrap(config.kafka), config.name)
        self.source.consumer.close()
        settings = group_settings(self.source.base, group_id, config.name, session_ms)
        settings["fetch.wait.max.ms"] = self.source.traits.fetch_wait_ms
        self.source.consumer = Consumer(settings)
        self.name = settings["client.id"]  # host and pid: stays while member ids change
        self.own = Ownership()
        self.gaps = GapChecks()
        self.gaps_allowed = info.compacted or config.kafka.transactional
        self.records = self.nbytes = self.refused = self.rebalances = 0

    # --- the group's callbacks (served inside poll) ---------------------------------------
    def on_assign(self, consumer, partitions) -> None:
        from confluent_kafka import TopicPartition

        wanted = [tp.partition for tp in partitions]
        self.rebalances += 1
        frontiers = self.rides.call(lambda: self._frontiers(wanted))
        starts = self.own.take(frontiers)
        for p in wanted:
            self.source.eof.pop(p, None)
        topic = self.config.kafka.topic
        consumer.incremental_assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        log.info("worker %s: assigned %s, now %s", self.name, wanted, sorted(self.own.pos))

    def on_revoke(self, consumer, partitions, how: str = "revoked") -> None:
        gone = [tp.partition for tp in partitions]
        self.rebalances += 1
        self.own.drop(gone)  # nothing in flight: writes are made between polls
        log.info("worker %s: %s %s, now %s", self.name, how, gone, sorted(self.own.pos))

    def on_lost(self, consumer, partitions) -> None:
        self.on_revoke(consumer, partitions, "lost")

    def _frontiers(self, partitions: list[int]) -> dict[int, int]:
        """The frontier of each partition, arming those added to the topic since."""
        _, frontiers = read_state(self.target, self.keys)
        new = [p for p in partitions if p not in frontiers]
        if new:
            _, low, _ = self.source.read_watermarks()
            arm_added_partitions(self.config, self.target, self.keys, {p: low[p] for p in new})
            _, frontiers = read_state(self.target, self.keys)
        return {p: frontiers[p] for p in partitions}

    @property
    def member(self) -> str:
        return self.source.consumer.memberid() or "(joining)"

    # --- the loop -------------------------------------------------------------------------
    def run(self, follow: bool, on_batch, on_lag, on_error) -> WorkerSummary:
        rides, source, config = self.rides, self.source, self.config
        rides.call(
            lambda: record_max_future_skew(self.target, self.keys, config.redis.max_future_skew_ms)
        )
        self.ingestor = rides.call(lambda: Ingestor(self.target, self.keys))
        self.limits = rides.call(lambda: read_server_limits(self.target))
        ends = dict(self.info.high)
        started = time.monotonic()
        join_by = started + JOIN_TIMEOUT_S
        next_tick = 0.0
        done = False
        source.consumer.subscribe(
            [config.kafka.topic],
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_lost,
        )
        try:
            while not rides.should_stop() and not done:
                try:
                    records = source.poll_records(config.batch_size * 4, 0.1)
                except KafkaError as exc:
                    if join_by:  # not a member yet: the broker refused the group
                        raise self._no_group(str(exc)) from exc
                    raise
                if join_by and not source.consumer.memberid():
                    if time.monotonic() > join_by:
                        raise self._no_group()
                else:
                    join_by = 0.0
                batches = self._plan(records)
                for i in range(0, len(batches), PIPELINE_BATCHES):
                    self._write(batches[i : i + PIPELINE_BATCHES], on_batch, on_error)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + STATE_CHECK_S
                    if on_lag is not None:
                        on_lag(_read_lag(source, self.own.pos, list(self.own.pos)))
                    if not follow:
                        _, frontiers = rides.call(lambda: read_state(self.target, self.keys))
                        done = caught_up(frontiers, ends)
        finally:
            partitions = tuple(sorted(self.own.pos))
            member = self.member
            source.close()  # leaves the group at once: its partitions move now, not at timeout
        return WorkerSummary(
            stream=config.name,
            group=self.group,
            member=member,
            records=self.records,
            bytes=self.nbytes,
            seconds=time.monotonic() - started,
            refused=self.refused,
            overtaken=self.own.overtaken,
            rebalances=self.rebalances,
            partitions=partitions,
            complete=done,
        )

    def _no_group(self, cause: str | None = None) -> KafkaError:
        reported = [e.str() for e in list(self.source.errors)[-3:] if hasattr(e, "str")]
        reported += [cause] if cause else []
        within = "" if cause else f" within {JOIN_TIMEOUT_S:.0f}s"
        return KafkaError(
            f"the broker at {self.source.bootstrap} did not let this worker join consumer group "
            f"{self.group!r}{within}"
            + (f" ({'; '.join(reported)})" if reported else "")
            + ": --workers needs a broker that runs Kafka consumer groups and accepts the "
            "--session-timeout (its group.min/max.session.timeout.ms); without --workers one "
            "mirror reads every partition"
        )

    def _plan(self, records: list) -> list[tuple]:
        """The batches to write for the records of partitions this worker owns:
        (partition, generation, read_from, read_to, records)."""
        by_partition: dict[int, list] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append(r)
        batches: list[tuple] = []
        pos, gen = self.own.pos, self.own.generation
        traits = self.source.traits

        def add(p, chunk, read_to):
            batches.append((p, gen[p], pos[p], read_to, chunk))
            pos[p] = read_to

        def accept_gap(_offset):
            return self.gaps_allowed and not traits.fetch_race

        for p, recs in by_partition.items():
            if p not in pos:
                continue  # revoked while these were on their way
            recs = fresh(recs, pos[p])
            if recs and recs[0].offset == pos[p]:
                self.gaps.pop(p, None)
            while recs:
                taken, rest = take_contiguous(recs, pos[p], accept_gap)
                for chunk in split_batches(
                    taken, self.config.batch_size, self.limits, PIPELINE_BATCHES
                ):
                    add(p, chunk, chunk[-1].offset + 1)
                if not rest:
                    break
                if traits.fetch_race and not self.gaps.confirmed(p, pos[p], rest[0].offset):
                    self._seek(p, pos[p])  # read it again before believing the gap
                    break
                if not self.gaps_allowed:
                    raise IntegrityError(
                        f"partition {p} of {self.config.kafka.topic!r}: offsets "
                        f"{pos[p]}..{rest[0].offset - 1} are missing; the topic is neither "
                        "compacted nor declared transactional (kafka.transactional), so records "
                        "would be skipped. Nothing after the position was written"
                    )
                add(p, rest[:1], rest[0].offset + 1)
                self.gaps.pop(p, None)
                recs = rest[1:]
        if self.gaps_allowed:  # step over markers after the last record
            for p in list(pos):
                if p not in self.gaps.pending:
                    to = self.source.position(p)
                    if to > pos[p]:
                        add(p, [], to)
        return batches

    def _write(self, batches: list[tuple], on_batch, on_error) -> None:
        calls = [
            (p, self.ingestor.batch_args(p, read_from, chunk, read_to))
            for p, _, read_from, read_to, chunk in batches
        ]
        replies = self.rides.call(lambda: _send(self.ingestor, calls))
        for (p, gen, read_from, _, chunk), reply in zip(batches, replies, strict=True):
            if isinstance(reply, Exception):
                raise _batch_error(
                    SimpleNamespace(partition=p, read_from=read_from), reply, self.rides.user
                )
            result = parse_reply(p, reply)
            self.refused += result.refused
            self.records += result.appended
            if result.appended:
                self.nbytes += sum(len(r.value or b"") + len(r.key or b"") for r in chunk)
            if result.refused and on_error is not None:
                on_error("refused_batch", 1)
            if on_batch is not None and not result.refused:
                on_batch(p, result.frontier, result.appended)
            again = self.own.settle(p, gen, result)
            if again is not None:
                log.warning(
                    "worker %s: partition %d: frontier %d is beyond what this worker read "
                    "(from %d%s); reading again from %d",
                    self.name,
                    p,
                    result.frontier,
                    read_from,
                    ", refused" if result.refused else "",
                    again,
                )
                self._seek(p, again)

    def _seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset``; a partition whose fetch has not started yet
        cannot be seeked in librdkafka, so it is assigned again at the offset instead."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self.source.seek(partition, offset)
        except KafkaException:
            tp = TopicPartition(self.config.kafka.topic, partition, offset)
            self.source.consumer.incremental_unassign([tp])
            self.source.consumer.incremental_assign([tp])


def _send(ingestor: Ingestor, calls: list[tuple[int, list]]) -> list:
    """One round trip; a transient fault in any reply is raised, so the whole round is made
    again (the ingest script skips what an earlier attempt wrote)."""
    replies = ingestor.call_many(calls)
    for reply in replies:
        if isinstance(reply, redis.RedisError) and transient_cause(reply) is not None:
            raise reply
    return replies
