"""The one write path into Redis: the ingest script, its keys, arming and frontiers."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import redis
from ferry.config import StreamConfig
from ferry.entries import KafkaRecord, record_args
from ferry.errors import ForeignStreamError, IntegrityError, NotArmedError


@dataclass(frozen=True)
class MigrationKeys:
    """Every Redis key of one migration; all share the hash tag ``{name}``."""

    tag: str
    stream: str
    layout: str

    @property
    def state(self) -> str:
        return f"{self.tag}:ferry:state"

    def stream_for(self, partition: int) -> str:
        return self.stream if self.layout == "merged" else f"{self.stream}:{partition}"

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
    source = resources.files("ferry").joinpath(name).read_text()
    return client.register_script(source)


class Ingestor:
    """Registers the ingest script once per client and builds its calls."""

    def __init__(self, client: redis.Redis, keys: MigrationKeys):
        self.client = client
        self.keys = keys
        self.script = _script(client, "ingest.lua")

    def batch_args(self, partition: int, read_from: int, records: list[KafkaRecord]) -> list:
        args: list = [partition, read_from]
        for record in records:
            args += record_args(record)
        return args

    def call(self, partition: int, args: list, pipe=None):
        keys = [self.keys.state, self.keys.stream_for(partition)]
        return self.script(keys=keys, args=args, client=pipe or self.client)

    def ingest_batch(
        self, partition: int, read_from: int, records: list[KafkaRecord]
    ) -> BatchResult:
        """Append ``records`` (one partition, increasing offsets) if they continue the frontier."""
        try:
            reply = self.call(partition, self.batch_args(partition, read_from, records))
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
    if "FERRY_ORDER" in text:
        return IntegrityError(text.split("FERRY_ORDER", 1)[1].strip())
    if "FERRY_FOREIGN" in text:
        return ForeignStreamError(
            text.split("FERRY_FOREIGN", 1)[1].strip()
            + "; choose another redis.stream or remove that key yourself"
        )
    return exc


def arm_migration(
    client: redis.Redis, keys: MigrationKeys, topic: str, starts: dict[int, int]
) -> int:
    """Claim the stream key(s) and set ``frontier[p] = start[p] - 1`` for unarmed partitions.

    Partitions already armed keep their start and frontier (a rerun resumes). Returns the
    number of partitions armed now.
    """
    script = _script(client, "arm.lua")
    args: list = [topic, keys.layout]
    for partition, start in sorted(starts.items()):
        args += [partition, start]
    try:
        return int(script(keys=[keys.state, *keys.streams(sorted(starts))], args=args))
    except redis.ResponseError as exc:
        raise script_error(exc) from exc


def read_state(client: redis.Redis, keys: MigrationKeys) -> tuple[dict[int, int], dict[int, int]]:
    """(start, frontier) per partition as recorded in the state hash."""
    raw = client.hgetall(keys.state)
    starts: dict[int, int] = {}
    frontiers: dict[int, int] = {}
    for field, value in raw.items():
        name = field.decode()
        if name.startswith("start:"):
            starts[int(name[6:])] = int(value)
        elif name.startswith("frontier:"):
            frontiers[int(name[9:])] = int(value)
    return starts, frontiers
