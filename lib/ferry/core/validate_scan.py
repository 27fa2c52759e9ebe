"""The two reads of validation, each streamed once in chunks: the stream (XRANGE with COUNT,
up to the last entry at the start) and Kafka (per-partition ranges); each folded into
per-block tallies (:mod:`ferry.core.tallies`), then the blocks that differ read again and compared
record by record. Memory: the tallies, the Redis-first entries' digests (after the switch
only) and, on a compacted topic, the latest offset of each key; not the number of entries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from ferry.core import tallies
from ferry.core.entries import (
    KEY_NULL,
    VALUE_NULL,
    KafkaRecord,
    encode_headers,
    entry_id_key,
    entry_to_record,
    record_digest,
    shadow_of,
    without_shadow_header,
)
from ferry.core.ingest import MigrationKeys, read_state
from ferry.errors import FerryError, KafkaError
from ferry.kafka.source import KafkaSource

logger = logging.getLogger("ferry.core.validate")

SCAN_COUNT = 10_000
STALL_KICK_S = 5.0  # no record for this long: the partitions left are assigned again
STALL_TIMEOUT_S = 30.0


def scan_stream(
    client: redis.Redis, key: str, upto: bytes | str = "+", start: bytes | str = "-"
) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of a stream (from ``start`` up to ``upto``, both included), in ID order,
    read in chunks."""
    lower = start
    while True:
        chunk = client.xrange(key, min=lower, max=upto, count=SCAN_COUNT)
        yield from chunk
        if len(chunk) < SCAN_COUNT:
            return
        lower = "(" + chunk[-1][0].decode()


def read_kafka_range(
    source: KafkaSource, ranges: dict[int, tuple[int, int]], batch: int = 20_000
) -> Iterator[KafkaRecord]:
    """Every record Kafka holds in ``[first, last]`` per partition, in order per partition
    (``batch``: records taken from the client per poll)."""
    todo = {p: r for p, r in ranges.items() if r[1] >= r[0]}
    if not todo:
        return
    source.assign({p: first for p, (first, _) in todo.items()})
    last_progress = last_kick = time.monotonic()
    while todo:
        records = source.poll_records(batch, 0.2)
        if records:
            last_progress = time.monotonic()
        elif time.monotonic() - max(last_progress, last_kick) > STALL_KICK_S:
            # a fetcher that went quiet after pauses (seen with kafka-python on Kafka 4.x under
            # live traffic): assign the partitions still to read at their positions again
            positions = {p: source.position(p) for p in todo}
            logger.warning(
                "Kafka delivered nothing for %.0fs (%s) while reading partitions at %s: "
                "assigning them again",
                time.monotonic() - last_progress,
                source.client_name,
                positions,
            )
            source.assign(positions)
            last_kick = time.monotonic()
        for record in records:
            rng = todo.get(record.partition)
            if rng is None:
                continue
            if record.offset <= rng[1]:
                yield record
            if record.offset >= rng[1]:
                del todo[record.partition]
                source.pause([record.partition])
        if not records:
            for p in list(todo):
                if source.position(p) > todo[p][1]:
                    del todo[p]
                    source.pause([p])
            if todo and time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise KafkaError(
                    f"Kafka delivered nothing for {STALL_TIMEOUT_S:.0f}s while reading partitions "
                    f"{sorted(todo)}; expected offsets up to "
                    + ", ".join(f"{p}:{todo[p][1]}" for p in sorted(todo))
                )


def retired_by_retention(entry_id: bytes, trimmed_id: bytes | None) -> bool:
    """True when retention removed entries up to ``trimmed_id`` and ``entry_id`` is one of them."""
    return trimmed_id is not None and entry_id_key(entry_id) <= entry_id_key(trimmed_id)


def read_state_and_bounds(client: redis.Redis, keys: MigrationKeys):
    """Starts and frontiers (:func:`ferry.core.ingest.read_state`), then each stream's last
    entry ID. In that order: an entry at or below a frontier was written with it (one script),
    so it lies at or below the last ID read after; entries past those IDs came later, and an
    entry between them and the frontier read first is past that frontier (``beyond``)."""
    starts, frontiers = read_state(client, keys)
    bounds = {}
    for stream in keys.streams(sorted(set(starts) | set(frontiers))):
        last = client.xrevrange(stream, count=1)
        bounds[stream] = last[0][0] if last else None
    return starts, frontiers, bounds


@dataclass
class Window:
    """Which Kafka-origin entries validation compares: offsets from ``since[p]`` on, not
    below Kafka's log start where Kafka deleted records after the copy (``retire_below``),
    and up to the frontier read at the start."""

    since: dict[int, int]
    retire_below: dict[int, int]
    frontiers: dict[int, int]

    def drop_live_appends(self, side: RedisSide, after: dict[int, int]) -> None:
        """Entries past the frontier read at the start but at or below the one read after the
        scan were appended meanwhile (outside the range); the rest past it are extra."""
        for p, offsets in side.beyond.items():
            late = sum(1 for o in offsets if o <= after.get(p, -1))
            side.extra[p] = side.extra.get(p, 0) + len(offsets) - late
            side.count[p] = side.count.get(p, 0) + len(offsets) - late
        side.beyond = {}


@dataclass
class RedisSide:
    blocks: tallies.Blocks = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)
    out_of_order: dict[int, int] = field(default_factory=dict)
    retired: dict[int, int] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)
    beyond: dict[int, list[int]] = field(default_factory=dict)
    primary: dict[int, dict[bytes, bytes]] = field(default_factory=dict)  # ID -> digest
    primary_count: dict[int, int] = field(default_factory=dict)


def _bump(counter: dict[int, int], p: int) -> None:
    counter[p] = counter.get(p, 0) + 1


def classify(window: Window, p: int, offset: int) -> str:
    """Where a Kafka-origin entry of the window stands: ``out`` (before ``since``),
    ``retired``, ``beyond`` (past the frontier read at the start) or ``in``."""
    if offset < window.since.get(p, 0):
        return "out"
    if offset < window.retire_below.get(p, -1):
        return "retired"
    if offset > window.frontiers.get(p, -1):
        return "beyond"
    return "in"


class RedisScanProcess:
    """:func:`scan_redis` in a child interpreter with a client of its own, beside the Kafka
    read in this one: both reads are CPU-bound in Python, so beside each other they take the
    longer one's time, not their sum. A plain child (``python -c``), not multiprocessing:
    the Kafka clients' threads rule out fork, and spawn would run the caller's ``__main__``
    again. The arguments go in and the :class:`RedisSide` comes back pickled."""

    def __init__(self, config, streams: list[str], bounds: dict, window: Window) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from ferry.core.validate_scan import _scan_child; _scan_child()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.proc.stdin.write(pickle.dumps((config, streams, bounds, window)))
        self.proc.stdin.close()

    def result(self) -> RedisSide:
        out = self.proc.stdout.read()
        err = self.proc.stderr.read()
        if self.proc.wait() != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise FerryError(f"reading the stream (child process) failed: {tail[0]}")
        side = pickle.loads(out)
        if isinstance(side, BaseException):
            raise side
        return side

    def __enter__(self) -> RedisScanProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _scan_child() -> None:
    from ferry.redis.target import connect_redis

    config, streams, bounds, window = pickle.loads(sys.stdin.buffer.read())
    try:
        client = connect_redis(config)
        try:
            side = scan_redis(client, streams, bounds, window)
        finally:
            client.close()
    except FerryError as exc:  # typed errors reach the caller as they are
        side = exc
    sys.stdout.buffer.write(pickle.dumps(side))


_ENTRY_LAYOUT = [b"p", b"o", b"ts", b"f", b"k", b"v", b"h"]  # the ingest script's field order


def _raw_chunks(client: redis.Redis, key: str, upto) -> Iterator[list]:
    """The stream's entries up to ``upto`` in chunks, as the server sent them: ``[id, [name,
    value, ...]]`` (redis-py's parsing into a dict per entry cost more than the rest of the
    stream's side). On a cluster client, parsed entries turned back into that shape."""
    if not isinstance(client, redis.Redis):
        lower = "-"
        while True:
            chunk = client.xrange(key, min=lower, max=upto, count=SCAN_COUNT)
            yield [[i, [x for kv in f.items() for x in kv]] for i, f in chunk]
            if len(chunk) < SCAN_COUNT:
                return
            lower = "(" + chunk[-1][0].decode()
    lower = "-"
    while True:
        chunk = client.execute_command("XRANGE", key, lower, upto, "COUNT", SCAN_COUNT, raw=True)
        yield chunk
        if len(chunk) < SCAN_COUNT:
            return
        lower = b"(" + chunk[-1][0]


def _raw_xrange_reply(response, **options):
    """XRANGE's reply unparsed when the call says ``raw=True`` (the default parse otherwise)."""
    if options.get("raw"):
        return response
    from redis._parsers.helpers import parse_stream_list

    return parse_stream_list(response)


def scan_redis(client: redis.Redis, streams: list[str], bounds: dict, window: Window) -> RedisSide:
    side = RedisSide()
    last: dict[int, int] = {}
    blocks, block_size, mask = side.blocks, tallies.BLOCK, tallies.MASK
    blake2b = hashlib.blake2b
    since, retire_below, frontiers = window.since, window.retire_below, window.frontiers
    if isinstance(client, redis.Redis):
        client.response_callbacks["XRANGE"] = _raw_xrange_reply
    for stream in streams:
        if bounds.get(stream) is None:
            continue
        for chunk in _raw_chunks(client, stream, bounds[stream]):
            for entry_id, flat in chunk:
                try:
                    if flat[0::2] == _ENTRY_LAYOUT:
                        _, p, _, raw_offset, _, ts, _, flags, _, key, _, value, _, h = flat
                        p = int(p)
                    else:
                        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
                        p, raw_offset = int(fields[b"p"]), fields[b"o"]
                        if raw_offset:
                            ts, flags, key, value, h = (fields[f] for f in _ENTRY_LAYOUT[2:])
                    if not raw_offset:
                        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
                        record = entry_to_record(fields)
                        side.primary.setdefault(p, {})[entry_id] = record_digest(record)
                        _bump(side.primary_count, p)
                        continue
                    offset = int(raw_offset)
                    if offset < since.get(p, 0):
                        continue  # out of the window
                    if offset <= last.get(p, -1):
                        _bump(side.out_of_order, p)
                    else:
                        last[p] = offset
                    if offset < retire_below.get(p, -1):
                        _bump(side.retired, p)
                    elif offset > frontiers.get(p, -1):
                        side.beyond.setdefault(p, []).append(offset)
                    else:
                        _bump(side.count, p)
                        digest = blake2b(
                            b"%b:%b:%b:%d:%b%d:%b%b"
                            % (raw_offset, ts, flags, len(key), key, len(value), value, h),
                            digest_size=16,
                        ).digest()
                        name = (p, offset // block_size)
                        tally = blocks.get(name)
                        if tally is None:
                            tally = blocks[name] = tallies.Tally(first_id=entry_id)
                        tally.count += 1
                        tally.total = (tally.total + int.from_bytes(digest, "little")) & mask
                        tally.last_id = entry_id
                except (KeyError, ValueError) as exc:
                    raise FerryError(f"stream {stream} entry {entry_id.decode()}: {exc}") from exc
    return side


@dataclass
class KafkaSide:
    blocks: tallies.Blocks = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    gaps: dict[int, int] = field(default_factory=dict)
    latest_of_key: dict[int, dict[bytes | None, int]] = field(default_factory=dict)
    shadows: dict[int, int] = field(default_factory=dict)  # shadows matched with their entry
    missing: dict[int, int] = field(default_factory=dict)  # shadows whose entry is missing
    mismatched: dict[int, int] = field(default_factory=dict)
    first_missing: dict[int, int] = field(default_factory=dict)
    # shadows read, per partition: (entry ID they name, offset, digest without the header);
    # compared with the Redis-first entries once the stream is read (resolve_shadows)
    pending: dict[int, list[tuple[bytes, int, bytes]]] = field(default_factory=dict)

    def resolve_shadows(
        self, primary: dict[int, dict[bytes, bytes]], trimmed_id: dict[int, bytes]
    ) -> None:
        """Each shadow compared with the entry written to Redis first that it names."""
        for p, shadows in self.pending.items():
            for entry_id, offset, digest in shadows:
                ours = primary.get(p, {}).get(entry_id)
                if ours is None and retired_by_retention(entry_id, trimmed_id.get(p)):
                    continue  # its entry was retired by retention, like a trimmed offset
                _bump(self.seen, p)
                if ours is None:
                    _bump(self.missing, p)
                    if offset < self.first_missing.get(p, offset + 1):
                        self.first_missing[p] = offset
                else:
                    _bump(self.shadows, p)
                    if ours != digest:
                        _bump(self.mismatched, p)
        self.pending = {}


def scan_kafka(
    source: KafkaSource,
    ranges: dict[int, tuple[int, int]],
    gaps_allowed: bool,
    compacted: bool,
    on_progress: Callable[[int], None] | None = None,
) -> KafkaSide:
    """One read of every Kafka range, folded into tallies; shadows are kept for
    :meth:`KafkaSide.resolve_shadows` (the stream may still be being read)."""
    side = KafkaSide()
    expected = {p: first for p, (first, _) in ranges.items()}
    blocks, block_size, mask, blake2b = side.blocks, tallies.BLOCK, tallies.MASK, hashlib.blake2b
    for record in read_kafka_range(source, ranges):
        p, offset, ts, key, value, headers = record
        if offset != expected[p] and not gaps_allowed:
            _bump(side.gaps, p)
        expected[p] = offset + 1
        if compacted:
            side.latest_of_key.setdefault(p, {})[key] = offset
        entry_id = shadow_of(record) if headers else None
        if entry_id is None:
            _bump(side.seen, p)
            # tallies.record_hash, inlined (the loop runs once per record)
            flags = (KEY_NULL if key is None else 0) | (VALUE_NULL if value is None else 0)
            key = b"" if key is None else key
            value = b"" if value is None else value
            digest = blake2b(
                b"%d:%d:%d:%d:%b%d:%b%b"
                % (
                    offset, ts, flags, len(key), key, len(value), value,
                    encode_headers(headers) if headers else b"",
                ),
                digest_size=16,
            ).digest()  # fmt: skip
            name = (p, offset // block_size)
            tally = blocks.get(name)
            if tally is None:
                tally = blocks[name] = tallies.Tally()
            tally.count += 1
            tally.total = (tally.total + int.from_bytes(digest, "little")) & mask
        else:
            digest = record_digest(without_shadow_header(record))
            side.pending.setdefault(p, []).append((entry_id, record.offset, digest))
        if on_progress is not None:
            on_progress(1)
    return side


def compare_differing(
    client: redis.Redis,
    source: KafkaSource,
    streams: dict[int, str],
    redis_side: RedisSide,
    kafka_side: KafkaSide,
    window: Window,
    ranges: dict[int, tuple[int, int]],
) -> dict[int, tallies.BlockResult]:
    """Every block whose tallies differ, read again from both sides and compared record by
    record; results summed per partition."""
    out: dict[int, tallies.BlockResult] = {}
    for p, block in tallies.differing(redis_side.blocks, kafka_side.blocks):
        lo, hi = tallies.block_range(block)
        ours = redis_side.blocks.get((p, block))
        entries = []
        if ours is not None:
            for _, fields in scan_stream(
                client, streams[p], upto=ours.last_id, start=ours.first_id
            ):
                record = entry_to_record(fields)
                if record.partition == p and lo <= record.offset <= hi:
                    if classify(window, p, record.offset) == "in":
                        entries.append(record)
        first, last = ranges.get(p, (0, -1))
        kafka_range = {p: (max(lo, first), min(hi, last))}
        records = [
            r for r in read_kafka_range(source, kafka_range, batch=BLOCK_BATCH) if not shadow_of(r)
        ]
        found = tallies.compare_block(entries, records)
        total = out.setdefault(p, tallies.BlockResult())
        total.duplicates += found.duplicates
        total.missing += found.missing
        total.mismatched += found.mismatched
        if total.first_missing is None:
            total.first_missing = found.first_missing
        total.unmatched.update(found.unmatched)
    return out


BLOCK_BATCH = tallies.BLOCK
