"""Integration fixtures: real services, one stack per (Kafka broker, Redis server) pair.

``FERRY_TEST_KAFKA`` picks the brokers every test body runs against (default ``tansu``),
``FERRY_TEST_REDIS`` the Redis servers (default ``redis,valkey``), every pair of the two;
``FERRY_TEST_STACKS`` names the pairs instead (``make test`` runs Tansu and Apache Kafka 3.7
on both servers, Kafka 4.x on redis-server). A kind that cannot start fails the run, it is never
skipped; a test that needs what one broker lacks says so with ``requires_broker`` and is
skipped on that broker with the reason.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from ferry.config import StreamConfig, parse_config
from ferry.services.seed import SeedRecord, create_topic, produce_records
from ferry.services.servers import Services, start_services, stop_services

from .helpers import OwnRedis


def _kinds(var: str, default: str) -> list[str]:
    return [k.strip() for k in os.environ.get(var, default).split(",") if k.strip()]


KAFKA_KINDS = _kinds("FERRY_TEST_KAFKA", "tansu")
REDIS_KINDS = _kinds("FERRY_TEST_REDIS", "redis,valkey")
# FERRY_TEST_STACKS lists pairs explicitly (``tansu/redis,apache:4.x/valkey``) instead
STACKS = [tuple(s.split("/", 1)) for s in _kinds("FERRY_TEST_STACKS", "")] or [
    (k, r) for k in KAFKA_KINDS for r in REDIS_KINDS
]
_counter = itertools.count()


@pytest.fixture(scope="session", params=STACKS, ids=[f"{k}-{r}" for k, r in STACKS])
def services(request, tmp_path_factory) -> Services:
    kafka, redis_kind = request.param
    folder = tmp_path_factory.mktemp(f"services-{kafka.replace(':', '')}-{redis_kind}")
    old = os.environ.get("FERRY_REDIS_SERVER")
    os.environ["FERRY_REDIS_SERVER"] = redis_kind
    try:
        stack = start_services(folder, kafka=kafka)
    finally:
        if old is None:
            os.environ.pop("FERRY_REDIS_SERVER", None)
        else:
            os.environ["FERRY_REDIS_SERVER"] = old
    assert stack.redis_kind == redis_kind
    yield stack
    stop_services(Path(stack.folder))


def _first_stack_per_redis_kind() -> set[tuple[str, str]]:
    first: dict[str, tuple[str, str]] = {}
    for kafka, redis_kind in STACKS:
        first.setdefault(redis_kind, (kafka, redis_kind))
    return set(first.values())


def _first_stack_per_broker() -> set[tuple[str, str]]:
    first: dict[str, tuple[str, str]] = {}
    for kafka, redis_kind in STACKS:
        first.setdefault(kafka, (kafka, redis_kind))
    return set(first.values())


def pytest_collection_modifyitems(config, items):
    """A test marked ``redis_side`` proves Redis behaviour (faults, failover, TLS, ACLs, the
    CLI's answers to them): it runs once per Redis server, on the first stack that has that
    server, and is deselected (not skipped) on the other brokers' stacks. A test marked
    ``kafka_side`` (the brokers' group protocol, say) runs once per broker, likewise; one
    marked ``each_server`` runs on the stacks that give every broker and every Redis server
    once (a costly end-to-end test: each server's behaviour, not each pairing's)."""
    keep_on = {
        "redis_side": _first_stack_per_redis_kind(),
        "kafka_side": _first_stack_per_broker(),
        "each_server": _first_stack_per_redis_kind() | _first_stack_per_broker(),
    }
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        stack = callspec.params.get("services") if callspec else None
        if stack is not None and any(
            item.get_closest_marker(side) and stack not in stacks
            for side, stacks in keep_on.items()
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _broker_gate(request):
    """Skip (with the reason) a test marked ``requires_broker`` on a broker that lacks it."""
    marker = request.node.get_closest_marker("requires_broker")
    if marker is None or "services" not in request.fixturenames:
        return
    stack = request.getfixturevalue("services")
    kinds = marker.args[0]
    if stack.kafka_kind not in kinds:
        pytest.skip(f"{stack.kafka_kind} broker: {marker.kwargs.get('reason', 'not supported')}")


@pytest.fixture
def redis_client(services) -> redis.Redis:
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


@dataclass
class StreamFixture:
    config: StreamConfig
    services: Services
    records: list[SeedRecord]  # what was produced, in order
    doc: dict  # the config document the stream was made from

    def write_config(self, path: Path, **extra) -> Path:
        """The stream's config as a YAML file (for the CLI), with ``extra`` top-level fields."""
        import yaml

        path.write_text(yaml.safe_dump({**self.doc, **extra}))
        return path

    @property
    def bootstrap(self) -> str:
        return self.services.kafka_bootstrap

    def with_client(self, client: str) -> StreamConfig:
        return replace(self.config, kafka=replace(self.config.kafka, client=client))


def stream_factory(services, redis_client, request, target: dict, prefix: str = "t"):
    """The ``make_stream`` factory with streams on the Redis target ``target`` (the
    config's ``redis`` block without ``layout``); yields it, then deletes every stream's keys.
    ``name`` and ``redis_doc`` per call override the generated name and the target."""
    made: list[StreamConfig] = []

    def make(
        records: list[SeedRecord] = (),
        partitions: int = 3,
        client: str = "confluent",
        layout: str = "merged",
        extra: dict | None = None,
        kafka_extra: dict | None = None,
        topic_config: dict | None = None,
        name: str | None = None,
        redis_doc: dict | None = None,
    ) -> StreamFixture:
        if name is None:
            name = f"{prefix}{next(_counter)}-{request.node.name[:40]}"
            name = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
        create_topic(services.kafka_bootstrap, name, partitions, topic_config)
        if records:
            produce_records(services.kafka_bootstrap, name, records)
        doc = {
            "name": name,
            "kafka": {
                "bootstrap_servers": services.kafka_bootstrap,
                "topic": name,
                "client": client,
                **(kafka_extra or {}),
            },
            "redis": {**(redis_doc or target), "layout": layout},
            **(extra or {}),
        }
        config = parse_config(doc, f"<test {name}>")
        made.append(config)
        return StreamFixture(config, services, list(records), doc)

    yield make
    for config in made:
        # {name} and, in the spread layout, {name:<partition>}
        for key in redis_client.scan_iter(match=f"*{{{config.name}[:}}]*", count=1000):
            redis_client.delete(key)  # one by one: a cluster client deletes key by key too


@pytest.fixture
def make_stream(services, redis_client, request):
    """Factory: a fresh topic (seeded with the given records) and a config for a fresh stream.

    Every stream of a test lives under its own hash tag; the keys are deleted afterwards.
    """
    yield from stream_factory(services, redis_client, request, {"url": services.redis_url})


@pytest.fixture
def own_redis(services, tmp_path):
    """A Redis server of the stack's kind for this test alone: to restart, stall or kill."""
    server = OwnRedis(services.redis_binary, tmp_path)
    server.start()
    yield server
    if server.proc.poll() is None:
        server.kill()
