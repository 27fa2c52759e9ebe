"""Consumer hand-over: a Kafka group's committed offsets become a Redis consumer group
(``translate_group``), and the group is moved over from Kafka (``hand_over_group``).
``ferry.live.consumer.StreamConsumer`` then reads it so that nothing the Kafka group consumed
is delivered again."""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field

import redis
import tenacity

from ferry.config import StreamConfig
from ferry.core.entries import REDIS_ORIGIN, entry_to_record, shadow_of
from ferry.core.ingest import MigrationKeys, _script, migration_keys, read_state, read_state_fields
from ferry.core.validate import read_kafka_range, scan_stream
from ferry.errors import (
    GroupGapError,
    HandoverError,
    KafkaError,
    NoCommittedOffsetsError,
    UsageError,
)
from ferry.kafka.source import open_source
from ferry.live.consumer import (  # noqa: F401 - the consumer side, importable from here too
    Delivery,
    Handler,
    Processed,
    StreamConsumer,
    _consumed,
    group_offsets_key,
)
from ferry.live.group_keys import group_targets, groups_on, handover_record_key
from ferry.redis.target import connect_redis

logger = logging.getLogger("ferry.live.handover")


RESET_POLICIES = ("latest", "earliest")  # Kafka's auto.offset.reset; latest is its default


@dataclass(frozen=True)
class Translation:
    group: str
    stream: str
    committed: dict[int, int]  # next offset the Kafka group would read, per partition
    start_id: str  # the Redis group starts after this ID
    entries_read: int  # entries before the first unconsumed one (so XINFO lag is right)
    skipped_later: int  # entries after start_id the Kafka group had already consumed
    reset: str = "latest"  # the policy of partitions the group never committed
    # partitions never committed: the offset the group starts from there (latest: the
    # partition's position at hand-over, so nothing already in the stream; earliest: its start)
    reset_offsets: dict[int, int] = field(default_factory=dict)
    # partitions committed below the migration's start, accepted: (committed, start)
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    # how the start was found: "seek" (a few probes, see seek_plan) or "scan" (every entry
    # read); scan_reason says why the seek could not be used
    method: str = "scan"
    scan_reason: str = ""
    # per-partition and spread layouts: each partition stream's start ID (start_id is "")
    starts: dict[int, str] = field(default_factory=dict)


def _coordinator_busy(exc: BaseException) -> bool:
    from confluent_kafka import KafkaError as CKError
    from confluent_kafka import KafkaException

    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    code = exc.args[0].code()
    return code in (
        CKError.COORDINATOR_LOAD_IN_PROGRESS,
        CKError.COORDINATOR_NOT_AVAILABLE,
        CKError.NOT_COORDINATOR,
    )


def read_committed_offsets(config: StreamConfig, group: str) -> dict[int, int]:
    """The Kafka group's committed offsets on the topic (partitions without one left out)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from ferry.kafka.confluent_client import client_settings
    from ferry.kafka.source import open_source, resolve_bootstrap

    source = open_source(config)
    try:
        partitions = source.describe_topic().partitions
    finally:
        source.close()
    admin = AdminClient(client_settings(config.kafka, resolve_bootstrap(config.kafka)))
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(config.kafka.topic, p) for p in partitions]
    )
    ask = tenacity.Retrying(  # a coordinator still loading (a broker just started) answers soon
        retry=tenacity.retry_if_exception(_coordinator_busy),
        wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
        stop=tenacity.stop_after_delay(30),
        reraise=True,
    )
    try:
        result = ask(lambda: admin.list_consumer_group_offsets([request])[group].result(timeout=30))
    except Exception as exc:  # noqa: BLE001
        raise KafkaError(f"cannot read the committed offsets of group {group!r}: {exc}") from exc
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def plan_translation(
    entries, committed: dict[int, int], consumed_ids: frozenset[str] = frozenset()
) -> tuple[str, int, int]:
    """Pure: from stream entries (id, record) in order, the start ID, ENTRIESREAD and how many
    later entries the group had consumed. The start is just before the earliest entry the
    Kafka group has not consumed, across partitions. ``consumed_ids``: entries written to
    Redis first whose Kafka shadows the group consumed."""
    previous_id = "0-0"
    start_id, entries_read, index = None, 0, 0
    skipped = 0
    for index, (entry_id, record) in enumerate(entries):
        consumed = _consumed(entry_id, record, committed, consumed_ids)
        if start_id is None:
            if consumed:
                previous_id = entry_id
                continue
            start_id, entries_read = previous_id, index
        elif consumed:
            skipped += 1
    if start_id is None:  # every entry consumed: start after the last one
        start_id = previous_id
        entries_read = index + 1 if previous_id != "0-0" else 0
    return start_id, entries_read, skipped


def read_consumed_shadows(config: StreamConfig, committed: dict[int, int]) -> set[str]:
    """The entries (written to Redis first) whose Kafka shadows the group has consumed: the
    shadows between the cutover and the group's committed offsets, read from Kafka."""
    by_partition = read_consumed_shadows_by_partition(config, committed)
    return set().union(*by_partition.values())


def read_consumed_shadows_by_partition(
    config: StreamConfig, committed: dict[int, int]
) -> dict[int, set[str]]:
    """:func:`read_consumed_shadows` per partition (a shadow in Kafka partition p names an
    entry of partition p's stream: IDs are unique per stream only)."""
    client = connect_redis(config)
    keys = migration_keys(config)
    raw = read_state_fields(client, keys)  # spread: primary_from:<p> is in partition p's hash
    since = {int(k[13:]): int(v) for k, v in raw.items() if k.startswith(b"primary_from:")}
    ranges = {p: (since[p], committed[p] - 1) for p in committed if p in since}
    if not any(last >= first for first, last in ranges.values()):
        return {}
    source = open_source(config)
    out: dict[int, set[str]] = {}
    try:
        for record in read_kafka_range(source, ranges):
            if (entry_id := shadow_of(record)) is not None:
                out.setdefault(record.partition, set()).add(entry_id.decode())
    finally:
        source.close()
    return out


def deleted_entries(client: redis.Redis, stream: str) -> int:
    """Entries added to ``stream`` and gone since (retention trims from the head): Redis
    counts a group's lag from every entry ever added, so ENTRIESREAD must count them too."""
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such stream yet
        return 0
    return max(0, int(info.get("entries-added") or 0) - int(info["length"]))


def check_mirror_caught_up(group: str, committed: dict[int, int], positions: dict[int, int]):
    for p, offset in committed.items():
        if offset > positions.get(p, 0):
            raise HandoverError(
                f"group {group!r} has consumed partition {p} up to offset {offset - 1} but the "
                f"stream only holds up to {positions.get(p, 0) - 1}: let the mirror catch up first"
            )


def check_reset(reset: str) -> str:
    if reset not in RESET_POLICIES:
        raise UsageError(
            f"reset policy {reset!r}: expected 'latest' (Kafka's default: a partition the group "
            "never committed delivers nothing already in the stream) or 'earliest' (from the "
            "partition's start)"
        )
    return reset


def resolve_offsets(
    group: str,
    committed: dict[int, int],
    starts: dict[int, int],
    positions: dict[int, int],
    reset: str = "latest",
    accept_gap: bool = False,
) -> tuple[dict[int, int], dict[int, int], dict[int, tuple[int, int]]]:
    """Pure: Kafka's rules for each partition's hand-over offset. ``starts`` and
    ``positions`` (the next offset the mirror copies) are the migration's, per armed partition.

    Returns (offsets the group resumes from, the reset partitions' offsets, accepted gaps). A
    committed offset below the start is refused with :class:`GroupGapError` unless
    ``accept_gap``; a partition never committed starts at its position now (``latest``) or at
    its start (``earliest``)."""
    check_reset(reset)
    gaps = {
        p: (c, starts[p]) for p, c in sorted(committed.items()) if p in starts and c < starts[p]
    }
    if gaps and not accept_gap:
        lines = "; ".join(
            f"partition {p}: committed offset {c}, start {s} ({s - c} records)"
            for p, (c, s) in gaps.items()
        )
        raise GroupGapError(
            f"Kafka group {group!r} committed below the migration's start, so the records in "
            f"between are not in the stream and would never reach it: {lines}. Choices: let the "
            "group catch up on Kafka past the start, then hand it over; or accept the loss: "
            "rerun with --accept-gap (translate_group(..., accept_gap=True), step 05's "
            "accept_gap = True), which records the gap in the events stream",
            gaps,
        )
    reset_offsets = {
        p: (positions.get(p, start) if reset == "latest" else start)
        for p, start in sorted(starts.items())
        if p not in committed
    }
    return {**committed, **reset_offsets}, reset_offsets, gaps


def _state_now(client: redis.Redis, keys: MigrationKeys):
    """Starts, positions and the stream's last ID, read in one MULTI (the hand-over instant)."""
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.state)
    pipe.xrevrange(keys.stream, count=1)
    raw, last = pipe.execute()
    starts, positions = {}, {}
    for name, value in raw.items():
        if name.startswith(b"start:"):
            starts[int(name[6:])] = int(value)
        elif name.startswith(b"frontier:"):
            positions[int(name[9:])] = int(value) + 1
    return starts, positions, _id_tuple(last[0][0].decode() if last else "0-0")


def _id_text(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _stored_translation(client: redis.Redis, keys: MigrationKeys, group: str):
    """The Translation a finished hand-over recorded, or None (no record, or its group gone)."""
    record = {
        k.decode(): v.decode() for k, v in client.hgetall(handover_record_key(keys, group)).items()
    }
    if "done" not in record:
        return None
    starts = {int(p): i for p, i in json.loads(record.get("starts", "{}")).items()}
    for target in group_targets(keys, group, list(starts)):
        if group not in groups_on(client, target.stream):
            return None  # the group was removed since: hand it over again

    def ints(text: str) -> dict[int, int]:
        return {int(p): o for p, o in json.loads(text).items()}

    return Translation(
        group,
        keys.stream,
        ints(record["committed"]),
        record["start_id"],
        int(record["entries_read"]),
        int(record["skipped_later"]),
        record["reset"],
        ints(record["reset_offsets"]),
        {int(p): tuple(g) for p, g in json.loads(record["gaps"]).items()},
        record.get("method", "scan"),
        record.get("scan_reason", ""),
        starts,
    )


def _unchanged_since(done: Translation, committed: dict[int, int], reset: str) -> Translation:
    if done.reset_offsets and done.reset != reset:
        raise HandoverError(
            f"group {done.group!r} was handed over with reset {done.reset!r}, not {reset!r}; to "
            f"hand it over again, remove it (XGROUP DESTROY {done.stream} {done.group}) first"
        )
    moved = {
        p: (done.committed.get(p), o) for p, o in committed.items() if done.committed.get(p) != o
    }
    if moved:
        lines = "; ".join(
            f"partition {p}: {was} -> {now}" for p, (was, now) in sorted(moved.items())
        )
        raise HandoverError(
            f"group {done.group!r} was handed over to Redis, but Kafka's group committed since "
            f"({lines}): its consumers still read Kafka. Stop them; Redis consumers resume "
            "where the hand-over put them"
        )
    return done


class SeekRefused(Exception):
    """The seek cannot prove its answer equals the scan's (the reason is the message)."""


def scan_plan(
    client: redis.Redis,
    keys: MigrationKeys,
    offsets: dict[int, int],
    consumed: set[str],
    latest: set[int],
    last_id: tuple[int, int],
    stream: str | None = None,
) -> tuple[str, int, int]:
    """:func:`plan_translation` over every entry of the stream (``stream``, else the merged
    one), read in order. Entries written Redis-first into a ``latest`` partition up to
    ``last_id`` are added to ``consumed`` (the caller stores them with the group)."""

    def entries():
        for raw_id, fields in scan_stream(client, stream or keys.stream):
            entry_id, record = raw_id.decode(), entry_to_record(fields)
            if (
                record.offset == REDIS_ORIGIN
                and record.partition in latest
                and _id_tuple(entry_id) <= last_id
            ):
                consumed.add(entry_id)  # before plan_translation looks it up
            yield entry_id, record

    return plan_translation(entries(), offsets, consumed)


# One probe of the seek, server-side: from ID x, read forward (entries after x, up to the
# snapshot's last ID) and backward (entries at or before x) in chunks, alternately, until every
# partition asked for has been seen once in either direction. Per partition p it returns
# M = the offset of p's first entry after x (forward: that entry's offset; backward: the offset
# of p's last entry at or before x, plus one). Entries written Redis-first (no offset) are not
# looked at: the seek is refused when there may be any. One call reads at most ``budget``
# entries (so it holds the server briefly) and returns where it stopped; the caller calls again
# from there for the partitions not seen yet.
# KEYS[1] stream. ARGV: upper, budget, chunk, early ('1': return as soon as a partition's M
# passes its threshold), forward cursor, backward cursor ('' once that direction ended), then
# pairs (partition, threshold).
# Returns {status, forward cursor, backward cursor, p1, M1, p2, M2, ...}; status: 'done' (every
# partition seen or both directions ended), 'early', 'budget' (call again with the cursors).
SEEK_PROBE_LUA = """
local stream, upper = KEYS[1], ARGV[1]
local budget, chunk, early = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local fwd, bwd = ARGV[5], ARGV[6]
local thr, seen, left, out, read = {}, {}, 0, {}, 0
for i = 7, #ARGV, 2 do
  thr[ARGV[i]] = tonumber(ARGV[i + 1])
  left = left + 1
end
local function take(entry, forward)
  local f, p, o = entry[2], nil, nil
  if f[1] == 'p' and f[3] == 'o' then  -- the ingest script's field order
    p, o = f[2], f[4]
  else
    for i = 1, #f, 2 do
      if f[i] == 'p' then p = f[i + 1] elseif f[i] == 'o' then o = f[i + 1] end
      if p ~= nil and o ~= nil then break end
    end
  end
  if p == nil or o == nil or o == '' or thr[p] == nil or seen[p] then
    return false
  end
  local m = tonumber(o)
  if not forward then m = m + 1 end
  seen[p] = true
  left = left - 1
  out[#out + 1] = p
  out[#out + 1] = tostring(m)
  return early and m > thr[p]
end
local status = 'done'
while left > 0 and (fwd ~= '' or bwd ~= '') and status == 'done' do
  if read >= budget then
    status = 'budget'
    break
  end
  if fwd ~= '' then
    local got = redis.call('XRANGE', stream, fwd, upper, 'COUNT', chunk)
    read = read + #got
    for _, e in ipairs(got) do
      if take(e, true) then status = 'early' break end
    end
    if #got < chunk then fwd = '' else fwd = '(' .. got[#got][1] end
  end
  if bwd ~= '' and left > 0 and status == 'done' then
    local got = redis.call('XREVRANGE', stream, bwd, '-', 'COUNT', chunk)
    read = read + #got
    for _, e in ipairs(got) do
      if take(e, false) then status = 'early' break end
    end
    if #got < chunk then bwd = '' else bwd = '(' .. got[#got][1] end
  end
end
return {status, fwd, bwd, unpack(out)}
"""
SEEK_BUDGET = 20_000  # entries one probe call reads at most (it holds the server meanwhile)
SEEK_CHUNK = 500
# the share of the stream all the probes of one seek may read before it gives up for the scan
# (a probe reads until it has met every partition: in a merged stream a backfill leaves long
# runs of one partition, so probes there read a lot); a probe's entry costs about half of a
# scanned one, so giving up wastes at most about an eighth of the scan's time
SEEK_MAX_SHARE = 0.25
SEEK_MAX_READ = 200_000  # at least this many entries, whatever the stream's length
SEEK_IN_MS = 2000  # entries of one millisecond read in order; more: a binary search
MAX_SEQ = 2**64 - 1


@dataclass
class _Dense:
    """A stream proven dense: partition p's entries are exactly the offsets ``lo[p]..hi[p]``,
    each once, in order (so an entry's rank follows from offsets)."""

    lo: dict[int, int]
    hi: dict[int, int]
    length: int
    first: tuple[int, int]
    last: tuple[int, int]


def _dense_snapshot(client, keys: MigrationKeys, config: StreamConfig) -> _Dense:
    """The stream's length and ends, and each partition's range ``[max(start, trimmed + 1),
    frontier]``, read between two identical reads of the state; refused (SeekRefused) unless
    the ranges' sizes add up to the length. Entries of one partition are in offset order and
    never repeat (the ingest script's invariants, which ``ferry validate`` proves), so the sum
    of the ranges bounds the number of Kafka-origin entries, and equality means no offset of
    any range is missing: no gap from transaction markers, aborted records, compaction or a
    deleted entry, and no entry written Redis-first."""
    from ferry.redis.retention import read_trimmed

    for _ in range(3):
        before = read_state(client, keys), read_trimmed(client, config)
        length = client.xlen(keys.stream)
        head = client.xrange(keys.stream, count=1)
        tail = client.xrevrange(keys.stream, count=1)
        after = read_state(client, keys), read_trimmed(client, config)
        if before == after:
            break
    else:
        raise SeekRefused("the state kept moving while the stream's length was read")
    (starts, frontiers), trimmed = before
    lo = {p: max(s, trimmed.get(p, -1) + 1) for p, s in starts.items()}
    hi = {p: frontiers.get(p, s - 1) for p, s in starts.items()}
    spans = sum(max(0, hi[p] - lo[p] + 1) for p in starts)
    if spans != length:
        raise SeekRefused(
            f"offsets not dense: the partitions' ranges hold {spans} offsets, the stream "
            f"{length} entries (transaction markers, compaction, deleted or Redis-first entries)"
        )
    if not length:
        return _Dense(lo, hi, 0, (0, 0), (0, 0))
    return _Dense(lo, hi, length, _id_tuple(head[0][0].decode()), _id_tuple(tail[0][0].decode()))


def seek_plan(
    client: redis.Redis,
    keys: MigrationKeys,
    config: StreamConfig,
    offsets: dict[int, int],
    consumed: set[str] | frozenset[str] = frozenset(),
) -> tuple[str, int, int]:
    """What :func:`scan_plan` answers, found with O(log) probes instead of reading the stream.

    An entry is consumed when its offset is below ``offsets[p]``. Within a partition entries
    follow offsets and IDs never go back, so "some entry at or before ID x is unconsumed" is
    false up to the first unconsumed entry F and true from it on: a binary search over IDs
    (milliseconds, then the sequence within one) finds F, each step one probe
    (:data:`SEEK_PROBE_LUA`). On a dense stream (:func:`_dense_snapshot`) the probe's
    per-partition offsets at F give the ranks: ENTRIESREAD = sum of (M[p] - lo[p]), the
    consumed entries after F = sum of (min(offsets[p], hi[p] + 1) - M[p]) where positive.
    Raises :class:`SeekRefused` when it cannot prove the answer equal to the scan's."""
    if consumed:
        raise SeekRefused("the group consumed shadows of entries written Redis-first")
    raw = client.hgetall(keys.state)
    if any(k.startswith(b"primary_from:") for k in raw):
        raise SeekRefused("the stream may hold entries written Redis-first")
    dense = _dense_snapshot(client, keys, config)
    if not dense.length:
        return "0-0", 0, 0
    present = [p for p in dense.lo if dense.hi[p] >= dense.lo[p]]
    threshold = {p: max(dense.lo[p], offsets.get(p, 0)) for p in present}
    # partitions whose entries are all consumed never make an entry unconsumed
    open_ = [p for p in present if threshold[p] <= dense.hi[p]]
    probe = client.register_script(SEEK_PROBE_LUA)
    upper = _id_text(dense.last)

    read = 0

    def marks(x: tuple[int, int], parts: list[int], early: bool) -> tuple[str, dict[int, int]]:
        nonlocal read
        x = min(x, dense.last)  # never past the snapshot: later entries are not counted
        fwd, bwd = "(" + _id_text(x), _id_text(x)
        m: dict[int, int] = {}
        while True:
            args = [upper, SEEK_BUDGET, SEEK_CHUNK, "1" if early else "0", fwd, bwd]
            for p in parts:
                if p not in m:
                    args += [p, threshold[p]]
            status, fwd, bwd, *pairs = probe(keys=[keys.stream], args=args)
            status, fwd, bwd = (
                v.decode() if isinstance(v, bytes) else v for v in (status, fwd, bwd)
            )
            m.update({int(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)})
            if status != "budget":
                break
            read += SEEK_BUDGET
            if read > max(SEEK_MAX_READ, int(dense.length * SEEK_MAX_SHARE)):
                raise SeekRefused(
                    f"the probes read {read} entries (partitions far apart in the stream): "
                    "the scan is cheaper"
                )
        if status == "done":
            for p in parts:
                if p not in m:  # no entry of p on one side of x
                    m[p] = dense.hi[p] + 1 if fwd == "" else dense.lo[p]
        return status, m

    def unconsumed_at_or_before(x: tuple[int, int]) -> bool:
        status, m = marks(x, open_, early=True)
        return status == "early" or any(m[p] > threshold[p] for p in open_)

    if not open_ or not unconsumed_at_or_before(dense.last):
        return _id_text(dense.last), dense.length, 0  # every entry consumed
    # the first ms whose end has an unconsumed entry: galloping back from the stream's end (a
    # hand-over usually finds the group near the head, where the probes stay), then bisecting
    low, high, step = dense.first[0], dense.last[0], 1
    while high - step > low:
        if unconsumed_at_or_before((high - step, MAX_SEQ)):
            high, step = high - step, step * 2
        else:
            low = high - step + 1
            break
    while low < high:
        mid = (low + high) // 2
        if unconsumed_at_or_before((mid, MAX_SEQ)):
            high = mid
        else:
            low = mid + 1
    ms = low
    # every entry before millisecond ms is consumed: F is the first entry of ms that is not,
    # which each entry's own offset tells; read in order, unless ms holds too many entries
    # (then a binary search over the sequence, as over milliseconds)
    in_ms = client.xrange(
        keys.stream, min=_id_text((ms, 0)), max=_id_text((ms, MAX_SEQ)), count=SEEK_IN_MS + 1
    )
    if len(in_ms) <= SEEK_IN_MS:
        for raw_id, fields in in_ms:
            record = entry_to_record(fields)
            if record.offset != REDIS_ORIGIN and record.offset >= offsets.get(record.partition, 0):
                low = _id_tuple(raw_id.decode())[1]
                break
        else:
            raise SeekRefused(f"no unconsumed entry in millisecond {ms}, where the search ended")
    else:
        top = client.xrevrange(
            keys.stream, max=_id_text((ms, MAX_SEQ)), min=_id_text((ms, 0)), count=1
        )
        low, high = 0, _id_tuple(top[0][0].decode())[1]
        while low < high:
            mid = (low + high) // 2
            if unconsumed_at_or_before((ms, mid)):
                high = mid
            else:
                low = mid + 1
    first_unconsumed = _id_text((ms, low))
    found = client.xrange(keys.stream, min=first_unconsumed, max=first_unconsumed)
    record = entry_to_record(found[0][1]) if found else None
    if record is None or record.offset < offsets.get(record.partition, 0):
        raise SeekRefused(f"the seek landed on {first_unconsumed}, not an unconsumed entry")
    before = (ms, low - 1) if low else (ms - 1, MAX_SEQ)
    status, m = marks(before, present, early=False)
    entries_read = sum(m[p] - dense.lo[p] for p in present)
    skipped = sum(max(0, min(offsets.get(p, 0), dense.hi[p] + 1) - m[p]) for p in present)
    previous = client.xrevrange(keys.stream, max="(" + first_unconsumed, count=1)
    return (previous[0][0].decode() if previous else "0-0"), entries_read, skipped


def translate_group(
    config: StreamConfig,
    group: str,
    committed: dict[int, int] | None = None,
    *,
    reset: str = "latest",
    accept_gap: bool = False,
) -> Translation:
    """Create the Redis consumer group for a Kafka group and store the translated offsets
    beside it, in one script: atomic, and safe to rerun after a crash at any point (a
    finished hand-over is returned as it was). Per-partition and spread layouts get a group
    on each partition's stream (``ferry.live.handover_partitions``).

    Kafka's rules: a partition the group never committed follows ``reset`` (``latest``, Kafka's
    default: nothing of it already in the stream is delivered; ``earliest``: from its start);
    a committed offset below the migration's start is refused (:class:`GroupGapError`) unless
    ``accept_gap``, which records the gap in the events stream. Also refused: a mirror behind
    the group, and (offsets read from Kafka) a group with no committed offset on the topic."""
    check_reset(reset)
    if committed is None:
        committed = read_committed_offsets(config, group)
        if not committed:  # before anything exists in Redis: a misspelt group leaves no trace
            raise NoCommittedOffsetsError(
                f"Kafka group {group!r} has no committed offset on topic {config.kafka.topic!r} "
                "(check the group's name; a group that consumed nothing has nothing to hand over)"
            )
    client = connect_redis(config)
    keys = migration_keys(config)
    done = _stored_translation(client, keys, group)
    if done is not None:
        return _unchanged_since(done, committed, reset)
    if keys.layout != "merged":
        from ferry.live.handover_partitions import translate_partitions

        return translate_partitions(config, client, keys, group, committed, reset, accept_gap)
    starts, positions, last_id = _state_now(client, keys)
    check_mirror_caught_up(group, committed, positions)
    offsets, reset_offsets, gaps = resolve_offsets(
        group, committed, starts, positions, reset, accept_gap
    )
    consumed = set(read_consumed_shadows(config, committed))
    # latest: entries written Redis-first into a never-committed partition before the
    # hand-over instant are passed over like the Kafka-origin ones below its position
    latest = set(reset_offsets) if reset == "latest" else set()
    method, why = "seek", ""
    try:
        start_id, entries_read, skipped = seek_plan(client, keys, config, offsets, consumed)
    except SeekRefused as exc:
        method, why = "scan", str(exc)
        start_id, entries_read, skipped = scan_plan(
            client, keys, offsets, consumed, latest, last_id
        )
    entries_read += deleted_entries(client, keys.stream)  # so Redis's lag is right
    logger.info(
        "group %s: start %s, entries read %d, skipped later %d (%s%s)",
        group, start_id, entries_read, skipped, method, f": {why}" if why else "",
    )  # fmt: skip
    translation = Translation(
        group, keys.stream, dict(committed), start_id, entries_read, skipped, reset,
        reset_offsets, gaps, method, why,
    )  # fmt: skip
    spec = {
        "offsets": {str(p): str(o) for p, o in offsets.items()},
        "shadows": sorted(consumed),
        "gaps": [[str(p), str(c), str(s), str(s - c)] for p, (c, s) in gaps.items()],
        "actor": f"{socket.gethostname()}:translate-group",
        "record": {
            "start_id": start_id,
            "entries_read": str(entries_read),
            "skipped_later": str(skipped),
            "reset": reset,
            "committed": json.dumps({str(p): o for p, o in committed.items()}),
            "reset_offsets": json.dumps({str(p): o for p, o in reset_offsets.items()}),
            "gaps": json.dumps({str(p): list(g) for p, g in gaps.items()}),
            "at_ms": str(int(time.time() * 1000)),
            "method": method,
            "scan_reason": why,
        },
    }
    base = group_offsets_key(keys, group)
    script = _script(client, "translate.lua")
    from ferry.live.phases import events_key

    try:
        (outcome,) = script(
            keys=[
                keys.stream,
                base,
                f"{base}:shadows",
                handover_record_key(keys, group),
                events_key(keys),
            ],
            args=[group, start_id, entries_read, json.dumps(spec)],
        )
    except redis.ResponseError as exc:
        raise touched_error(exc, group, keys.stream) from exc
    if outcome in (b"done", "done"):  # another run finished it first
        return _unchanged_since(_stored_translation(client, keys, group), committed, reset)
    return translation


def touched_error(exc: redis.ResponseError, group: str, stream: str) -> Exception:
    """translate.lua's refusal of a half-made group that was read, as a HandoverError (any
    other error is given back unchanged)."""
    if "FERRY_TOUCHED" not in str(exc):
        return exc
    found = str(exc).split("FERRY_TOUCHED", 1)[1].strip()
    return HandoverError(
        f"Redis group {group!r} on {stream} was left by an interrupted hand-over and has been "
        f"read since ({found}): ferry will not move it. Check what its consumers processed, "
        f"remove it (XGROUP DESTROY {stream} {group}) and run translate-group again"
    )


def handover_key(keys: MigrationKeys, group: str) -> str:
    return f"{keys.tag}:ferry:handover:{group}"


def handover_requested(client: redis.Redis, keys: MigrationKeys, group: str) -> bool:
    """What a consumer built on ferry polls: step 05 asks the group to leave Kafka."""
    return bool(client.exists(handover_key(keys, group)))


def group_translated(client: redis.Redis, keys: MigrationKeys, group: str) -> bool:
    """True once ``translate_group`` stored the group's offsets (StreamConsumer can start)."""
    if keys.layout != "merged":  # the record is written once every partition's group exists
        return b"done" in client.hgetall(handover_record_key(keys, group))  # every role has HGETALL
    return bool(client.exists(group_offsets_key(keys, group)))


def group_is_empty(config: StreamConfig, group: str) -> bool:
    """True when no consumer is in the Kafka group (its committed offsets are final)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    from ferry.kafka.confluent_client import client_settings
    from ferry.kafka.source import resolve_bootstrap

    admin = AdminClient(client_settings(config.kafka, resolve_bootstrap(config.kafka)))
    try:
        found = admin.describe_consumer_groups([group])[group].result(timeout=15)
    except Exception as exc:  # noqa: BLE001 - librdkafka's KafkaException
        raise KafkaError(f"cannot describe consumer group {group!r}: {exc}") from exc
    return found.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)


def topic_groups(config: StreamConfig) -> list[str]:
    """The Kafka consumer groups with committed offsets on the topic."""
    from ferry.kafka.groups import read_committed_groups
    from ferry.kafka.source import open_source

    source = open_source(config)
    try:
        info = source.describe_topic()
    finally:
        source.close()
    return list(read_committed_groups(config, info.partitions))


def hand_over_group(
    config: StreamConfig,
    group: str,
    wait_s: float = 30.0,
    *,
    reset: str = "latest",
    accept_gap: bool = False,
) -> Translation:
    """Ask the group's consumers to leave Kafka (a flag they poll), wait until the Kafka group
    is empty so its committed offsets are final, then translate it (``reset`` and
    ``accept_gap`` as in :func:`translate_group`)."""
    check_reset(reset)
    client = connect_redis(config)
    key = handover_key(migration_keys(config), group)
    client.hset(key, mapping={"state": "requested", "at_ms": int(time.time() * 1000)})
    deadline = time.monotonic() + wait_s
    while not group_is_empty(config, group):
        if time.monotonic() > deadline:
            raise HandoverError(
                f"Kafka group {group!r} still has consumers after {wait_s:.0f}s; stop them (or let "
                "them see the hand-over request) and run step 05 again"
            )
        time.sleep(0.1)  # the consumers' commit and leave, bounded by wait_s
    committed = read_committed_offsets(config, group)
    keys = migration_keys(config)
    while True:  # the mirror passes what the group read (shadows included) before translating
        _, frontiers = read_state(client, keys)
        behind = {p: o for p, o in committed.items() if o - 1 > frontiers.get(p, -1)}
        if not behind or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # the follow mirror's progress, bounded by wait_s
    translation = translate_group(config, group, committed, reset=reset, accept_gap=accept_gap)
    client.hset(key, "state", "translated")
    return translation
