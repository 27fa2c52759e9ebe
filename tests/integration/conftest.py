"""Integration fixtures: real embedded services, one stack per Redis server kind.

``FERRY_TEST_REDIS`` picks the Redis servers to run every test body against
(default ``redis,valkey``); a kind that cannot start fails the run, it is never skipped.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from ferry.config import StreamConfig, parse_config
from ferry.seed import SeedRecord, create_topic, produce_records
from ferry.services import Services, start_services, stop_services

REDIS_KINDS = [
    k.strip() for k in os.environ.get("FERRY_TEST_REDIS", "redis,valkey").split(",") if k.strip()
]
_counter = itertools.count()


@pytest.fixture(scope="session", params=REDIS_KINDS)
def services(request, tmp_path_factory) -> Services:
    folder = tmp_path_factory.mktemp(f"services-{request.param}")
    old = os.environ.get("FERRY_REDIS_SERVER")
    os.environ["FERRY_REDIS_SERVER"] = request.param
    try:
        stack = start_services(folder)
    finally:
        if old is None:
            os.environ.pop("FERRY_REDIS_SERVER", None)
        else:
            os.environ["FERRY_REDIS_SERVER"] = old
    assert stack.redis_kind == request.param
    yield stack
    stop_services(Path(stack.folder))


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


@pytest.fixture
def make_stream(services, redis_client, request):
    """Factory: a fresh topic (seeded with the given records) and a config for a fresh stream.

    Every stream of a test lives under its own hash tag; the keys are deleted afterwards.
    """
    made: list[StreamConfig] = []

    def make(
        records: list[SeedRecord] = (),
        partitions: int = 3,
        client: str = "confluent",
        layout: str = "merged",
        extra: dict | None = None,
    ) -> StreamFixture:
        name = f"t{next(_counter)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
        name = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
        create_topic(services.kafka_bootstrap, name, partitions)
        if records:
            produce_records(services.kafka_bootstrap, name, records)
        doc = {
            "name": name,
            "kafka": {
                "bootstrap_servers": services.kafka_bootstrap,
                "topic": name,
                "client": client,
            },
            "redis": {"url": services.redis_url, "layout": layout},
            **(extra or {}),
        }
        config = parse_config(doc, f"<test {name}>")
        made.append(config)
        return StreamFixture(config, services, list(records), doc)

    yield make
    for config in made:
        keys = list(redis_client.scan_iter(match=f"*{{{config.name}}}*", count=1000))
        if keys:
            redis_client.delete(*keys)
