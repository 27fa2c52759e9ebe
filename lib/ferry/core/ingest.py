"""The one write path into Redis: the ingest script, its keys, arming and frontiers."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, TryAgainError

from ferry.config import StreamConfig
from ferry.core.entries import KafkaRecord, record_args
from ferry.errors import ForeignStreamError, IntegrityError, NotArmedError


@dataclass(frozen=True)
class MigrationKeys:
    """Every Redis key of one migration.

    The migration-wide state (phase, epoch, writers, events) is ``{name}:ferry:state``. In
    the ``merged`` and ``per-partition`` layouts every key shares the hash tag ``{name}`` (one
    Redis Cluster slot) and the per-partition fields (``frontier:<p>``, ``start:<p>``, ...)
    live in that state hash too. In the ``spread`` layout partition ``p`` has its own tag
    ``{name:p}``: its stream (``redis.stream`` with ``{name}`` replaced) and a partition
    state hash holding the same per-partition fields sit in the partition's own slot, so
    every ingest is still one script on one shard and partitions spread over shards."""

    tag: str
    stream: str
    layout: str

    @property
    def state(self) -> str:
        return f"{self.tag}:ferry:state"

    @property
    def spread(self) -> bool:
        return self.layout == "spread"

    def partition_tag(self, partition: int) -> str:
        return self.tag[:-1] + f":{partition}}}" if self.spread else self.tag

    def partition_state(self, partition: int) -> str:
        """The hash holding partition ``partition``'s frontier, start and trim records."""
        return f"{self.partition_tag(partition)}:ferry:state" if self.spread else self.state

    def stream_for(self, partition: int) -> str:
        if self.layout == "merged":
            return self.stream
        if self.spread:
            return self.stream.replace(self.tag, self.partition_tag(partition), 1)
        return f"{self.stream}:{partition}"

    def streams(self, partitions: list[int]) -> list[str]:
        if self.layout == "merged":
            return [self.stream]
        return [self.stream_for(p) for p in partitions]


@dataclass(frozen=True)
class BatchResult:
    """What the ingest script did with one batch."""

    partition: int
    appended: int
    frontier: int
    refused: bool


def migration_keys(config: StreamConfig) -> MigrationKeys:
    return MigrationKeys(config.hash_tag, config.redis.stream, config.redis.layout)


def _script(client: redis.Redis, name: str):
    source = resources.files("ferry").joinpath("lua", name).read_text()
    return client.register_script(source)


# a cluster's answer that the slot is elsewhere or moving: MOVED (an AskError), ASK, TRYAGAIN
# (a multi-key call while the slot's keys move), CLUSTERDOWN
REDIRECTS = (AskError, TryAgainError, ClusterDownError)


class Ingestor:
    """Registers the ingest script once per client and builds its calls.

    On a Redis Cluster (a :class:`redis.cluster.RedisCluster` client) the script is loaded on
    every primary and :meth:`call_many` sends its packed round trip to the node that owns the
    migration's slot."""

    def __init__(self, client: redis.Redis | RedisCluster, keys: MigrationKeys):
        self.client = client
        self.keys = keys
        self.cluster = isinstance(client, RedisCluster)
        self.script = _script(client, "ingest.lua")
        self.sha = client.script_load(self.script.script)  # a cluster: on every primary

    def batch_args(
        self, partition: int, read_from: int, records: list[KafkaRecord], read_to: int | None = None
    ) -> list:
        """The script's arguments; the same encoding as :func:`record_args`, inlined because
        this runs once per record on the mirror's hot path. ``read_to`` defaults to just past
        the last record."""
        if read_to is None:
            read_to = max(r.offset for r in records) + 1 if records else read_from
        args: list = [partition, read_from, read_to]
        extend = args.extend
        for _, offset, ts, key, value, headers in records:
            if key is None or value is None or headers:
                extend(record_args(KafkaRecord(partition, offset, ts, key, value, headers)))
            else:
                extend((offset, ts, 0, key, value, b""))
        return args

    def call(self, partition: int, args: list, pipe=None):
        keys = [self.keys.partition_state(partition), self.keys.stream_for(partition)]
        return self.script(keys=keys, args=args, client=pipe or self.client)

    def call_many(self, batches: list[tuple[int, list]]) -> list:
        """Send many ``(partition, args)`` calls in one round trip; replies (or the
        ResponseError of each failed call) in order.

        Packs with hiredis directly: redis-py's pipeline walks every argument in Python,
        which on the mirror's hot path cost more than Redis running the script.
        """
        if self.cluster:
            replies = self._call_many_cluster(batches)
        else:
            replies = self._round(self.client.connection_pool, batches)
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):  # server lost its scripts
                self.sha = self.client.script_load(self.script.script)
                p, args = batches[i]
                replies[i] = self._retry(p, args)
        return replies

    def _call_many_cluster(self, batches: list[tuple[int, list]]) -> list:
        """One packed round trip per primary that owns a partition's slot (one primary for
        the single-slot layouts). Calls answered with a redirect (the slot moved, or is
        moving) are made again one by one, in order, through the cluster client, which
        follows MOVED and ASK, waits out TRYAGAIN and refreshes its slot map; once a call is
        redirected every later one of that node's round is too, and none of them ran."""
        cluster = self.client
        by_node: dict[str, list[int]] = {}
        nodes = {}
        for i, (partition, _) in enumerate(batches):
            node = cluster.get_node_from_key(self.keys.partition_state(partition))
            nodes[node.name] = node
            by_node.setdefault(node.name, []).append(i)
        replies: list = [None] * len(batches)
        for name, indexes in by_node.items():
            pool = cluster.get_redis_connection(nodes[name]).connection_pool
            try:
                answered = self._round(pool, [batches[i] for i in indexes])
            except (redis.ConnectionError, redis.TimeoutError):
                cluster.nodes_manager.initialize()  # the node may be gone: learn the map again
                raise
            for i, reply in zip(indexes, answered, strict=True):
                replies[i] = self._retry(*batches[i]) if isinstance(reply, REDIRECTS) else reply
        return replies

    def _round(self, pool: redis.ConnectionPool, batches: list[tuple[int, list]]) -> list:
        """Every call packed with hiredis, sent on one connection of ``pool``, replies read
        in order (a failed call's ResponseError in its place)."""
        state_for = self.keys.partition_state
        stream_for = self.keys.stream_for
        pack = hiredis.pack_command
        payload = b"".join(
            pack(("EVALSHA", self.sha, 2, state_for(p), stream_for(p), *args))
            for p, args in batches
        )
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload], check_health=False)
            replies = []
            for _ in batches:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return replies

    def _retry(self, partition: int, args: list):
        try:
            return self.call(partition, args)
        except redis.ResponseError as exc:
            return exc

    def ingest_batch(
        self,
        partition: int,
        read_from: int,
        records: list[KafkaRecord],
        read_to: int | None = None,
    ) -> BatchResult:
        """Append ``records`` (one partition, increasing offsets) if they continue the position
        (``read_from <= position``), and move the position to ``read_to``."""
        try:
            reply = self.call(partition, self.batch_args(partition, read_from, records, read_to))
        except redis.ResponseError as exc:
            raise script_error(exc) from exc
        return parse_reply(partition, reply)


def parse_reply(partition: int, reply) -> BatchResult:
    appended, frontier, refused = reply
    return BatchResult(partition, int(appended), int(frontier), bool(int(refused)))


def script_error(exc: redis.ResponseError) -> Exception:
    text = str(exc)
    if "FERRY_NOT_ARMED" in text:
        return NotArmedError(text.split("FERRY_NOT_ARMED", 1)[1].strip())
    for marker in ("FERRY_ORDER", "FERRY_SHADOW"):
        if marker in text:
            return IntegrityError(text.split(marker, 1)[1].strip())
    if "FERRY_TOPIC" in text:
        from ferry.core.identity import REMEDY
        from ferry.errors import TopicMismatchError

        return TopicMismatchError(text.split("FERRY_TOPIC", 1)[1].strip() + "; " + REMEDY)
    if "FERRY_FOREIGN" in text:
        return ForeignStreamError(
            text.split("FERRY_FOREIGN", 1)[1].strip()
            + "; choose another redis.stream or remove that key yourself"
        )
    return exc


@dataclass(frozen=True)
class ArmRequest:
    """What arming records: the topic's identity, the start rule and, per partition, the
    start offset, how it was found and (without a topic ID) a fingerprint of its record."""

    topic: str
    topic_id: str | None
    start_rule: str
    start_ts: int | None
    starts: dict[int, int]
    found: dict[int, str]
    fingerprints: dict[int, str]


def arm_migration(
    client: redis.Redis,
    keys: MigrationKeys,
    topic: str | ArmRequest,
    starts: dict[int, int] | None = None,
) -> int:
    """Claim the stream key(s), record the topic's identity and set ``position[p] = start[p]``
    for unarmed partitions.

    Partitions already armed keep their start and position (a rerun resumes). Returns the
    number of partitions armed now. ``arm_migration(client, keys, topic, starts)`` arms with
    no identity or provenance (new partitions, tests).
    """
    if isinstance(topic, str):
        topic = ArmRequest(topic, None, "earliest", None, dict(starts or {}), {}, {})
    script = _script(client, "arm.lua")
    args: list = [
        topic.topic,
        keys.layout,
        topic.topic_id or "",
        topic.start_rule,
        "" if topic.start_ts is None else topic.start_ts,
    ]
    for partition, start in sorted(topic.starts.items()):
        args += [
            partition,
            start,
            topic.found.get(partition, "earliest"),
            topic.fingerprints.get(partition, ""),
        ]
    try:
        if not keys.spread:
            return int(script(keys=[keys.state, *keys.streams(sorted(topic.starts))], args=args))
        return _arm_spread(client, keys, script, args)
    except redis.ResponseError as exc:
        raise script_error(exc) from exc


def _arm_spread(client, keys: MigrationKeys, script, args: list) -> int:
    """Arming the spread layout: the migration-wide state first (the topic's identity, with
    no partition), then each partition in its own slot (its state hash and stream, the same
    script and checks), then the partition's ``armed:<p>`` mark in the migration-wide state.
    Each step is idempotent, so an interrupted arming is finished by the next one."""
    head, per_partition = args[:5], args[5:]
    script(keys=[keys.state], args=head)
    skew = client.hget(keys.state, "max_future_skew_ms")
    armed = 0
    for i in range(0, len(per_partition), 4):
        partition = int(per_partition[i])
        pstate = keys.partition_state(partition)
        armed += int(
            script(keys=[pstate, keys.stream_for(partition)], args=head + per_partition[i : i + 4])
        )
        if skew is not None:
            client.hset(pstate, "max_future_skew_ms", skew)
        client.hset(keys.state, f"armed:{partition}", 1)
    return armed


def armed_partitions(client: redis.Redis, keys: MigrationKeys) -> list[int]:
    """The partitions armed in the spread layout (their ``armed:<p>`` marks)."""
    return _armed_marks(client.hgetall(keys.state))  # HGETALL: every role reading it has it


def migration_partitions(client: redis.Redis, keys: MigrationKeys) -> list[int]:
    """Every partition the migration has armed, in any layout (HGETALL only)."""
    fields = client.hgetall(keys.state)
    if keys.spread:
        return _armed_marks(fields)
    return sorted(int(f[6:]) for f in fields if f.startswith(b"start:"))


def _armed_marks(fields) -> list[int]:
    return sorted(int(f[6:]) for f in fields if f.startswith(b"armed:"))


def record_max_future_skew(client: redis.Redis, keys: MigrationKeys, skew_ms: int) -> None:
    """Record ``redis.max_future_skew`` where every write script reads it: an entry's ID is
    ``max(min(record ts, server time + skew), last ID ms)``, whichever process writes it
    (the scripts use 5 minutes until the mirror has recorded the configured value)."""
    client.hset(keys.state, "max_future_skew_ms", skew_ms)
    if keys.spread:
        for partition in armed_partitions(client, keys):
            client.hset(keys.partition_state(partition), "max_future_skew_ms", skew_ms)


def read_state_fields(client: redis.Redis, keys: MigrationKeys) -> dict[bytes, bytes]:
    """Every field of the migration's state: the migration-wide hash and, in the spread
    layout, each armed partition's state hash (its ``frontier:<p>``, ``start:<p>``, ...;
    the migration-wide fields win where both hold one)."""
    raw = client.hgetall(keys.state)
    if not keys.spread:
        return raw
    merged: dict[bytes, bytes] = {}
    for partition in _armed_marks(raw):
        merged.update(client.hgetall(keys.partition_state(partition)))
    merged.update(raw)
    return merged


def read_state_counters(client: redis.Redis, keys: MigrationKeys, *fields: str) -> tuple[int, ...]:
    """Counters the write scripts keep (``primary_written``, ``shadowed``,
    ``direct_after_switch``; ``*_ms`` fields are times): in the spread layout each partition's
    state hash keeps its own, so they are summed (times: the latest)."""
    if not keys.spread:
        return tuple(int(v or 0) for v in client.hmget(keys.state, *fields))
    hashes = [keys.state] + [keys.partition_state(p) for p in armed_partitions(client, keys)]
    rows = [[int(v or 0) for v in client.hmget(h, *fields)] for h in hashes]
    return tuple(
        max(column) if field.endswith("_ms") else sum(column)
        for field, column in zip(fields, zip(*rows, strict=True), strict=True)
    )


def read_state(client: redis.Redis, keys: MigrationKeys) -> tuple[dict[int, int], dict[int, int]]:
    """(start, frontier) per partition as recorded in the state."""
    raw = read_state_fields(client, keys)
    starts: dict[int, int] = {}
    frontiers: dict[int, int] = {}
    for field, value in raw.items():
        name = field.decode()
        if name.startswith("start:"):
            starts[int(name[6:])] = int(value)
        elif name.startswith("frontier:"):
            frontiers[int(name[9:])] = int(value)
    return starts, frontiers
