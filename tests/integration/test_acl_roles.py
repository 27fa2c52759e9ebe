"""Each role runs as an ACL user holding exactly the line ``ferry acl`` prints for it: its
verbs work, and what lies outside its line is refused in one line naming command and user."""

from __future__ import annotations

import secrets

import pytest
import redis

from ferry.config import parse_config
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.redis.acl import ROLES
from ferry.services.seed import SeedRecord

from .helpers import (
    backfill_cli_error,
    by_partition,
    read_kafka_raw,
    read_redis_records,
    wait_until,
)

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server


@pytest.fixture
def acl_user(redis_client, tmp_path, monkeypatch):
    """Factory: an ACL user with a role's line on the stack's server; removed afterwards."""
    made = []

    def make(role: str, name: str) -> dict:
        user, password = f"ferry-{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
        line = ROLES[role].setuser_line(user, name).replace(">PASSWORD", f">{password}")
        redis_client.execute_command(*line.split())
        made.append(user)
        (tmp_path / f"{user}.pw").write_text(password)
        monkeypatch.setenv(f"FERRY_TEST_USER_{role.upper()}", user)
        return {
            "username": {"env": f"FERRY_TEST_USER_{role.upper()}"},
            "password": {"file": str(tmp_path / f"{user}.pw")},
            "user": user,
        }

    yield make
    for user in made:
        redis_client.acl_deluser(user)


def as_user(stream, creds: dict):
    doc = {
        **stream.doc,
        "redis": {**stream.doc["redis"], **{k: creds[k] for k in ("username", "password")}},
    }
    return doc, parse_config(doc, "<acl>")


def records(n: int) -> list[SeedRecord]:
    return [SeedRecord(i % 2, b"k%d" % i, b"v%d" % i, (), 1_700_000_000_000 + i) for i in range(n)]


def test_the_mirror_role_copies_and_nothing_more(make_stream, acl_user, services, redis_client):
    stream = make_stream(records(300), partitions=2)
    creds = acl_user("mirror", stream.config.name)
    _, config = as_user(stream, creds)
    assert backfill(config, progress=False).complete
    kafka = read_kafka_raw(services.kafka_bootstrap, config.kafka.topic, 2)
    copied = read_redis_records(redis_client, config.redis.stream)
    assert by_partition(r for _, r in copied) == kafka
    mirror = redis.Redis.from_url(
        services.redis_url, username=creds["user"], password=creds_password(creds)
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        mirror.xtrim(config.redis.stream, maxlen=0)  # retention is the operator's
    with pytest.raises(redis.exceptions.NoPermissionError):
        mirror.get("some-other-migration")  # keys outside the migration


def test_the_validator_role_validates_and_cannot_write(make_stream, acl_user, tmp_path):
    stream = make_stream(records(200), partitions=2)
    backfill(stream.config, progress=False)  # as the default user
    creds = acl_user("validator", stream.config.name)
    doc, config = as_user(stream, creds)
    assert validate_stream(config).ok
    line, _ = backfill_cli_error(doc, tmp_path, env={"FERRY_TEST_USER_VALIDATOR": creds["user"]})
    assert creds["user"] in line and "permissions" in line, line


def creds_password(creds: dict) -> str:
    from pathlib import Path

    return Path(creds["password"]["file"]).read_text()


def test_preflight_checks_the_user_against_each_roles_list(make_stream, acl_user, redis_client):
    from ferry.runbook.preflight import run_preflight

    stream = make_stream(records(10), partitions=2)
    creds = acl_user("mirror", stream.config.name)
    _, config = as_user(stream, creds)
    checks = {c.name.split(" (")[0]: c for c in run_preflight(config).checks}
    assert checks["Redis user may act as the mirror"].ok
    validator = checks["Redis user may act as the validator"]
    assert not validator.ok and "xlen" in validator.detail and "get" in validator.detail

    # the case: a user without TYPE passed preflight, then the mirror crashed
    redis_client.execute_command("ACL", "SETUSER", creds["user"], "-type")
    checks = {c.name.split(" (")[0]: c for c in run_preflight(config).checks}
    mirror = checks["Redis user may act as the mirror"]
    assert not mirror.ok and mirror.detail.startswith("lacks type"), mirror.detail
    assert redis_client.exists(f"{{{config.name}}}:ferry:preflight") == 0  # nothing ran


def test_the_writer_role_writes_in_every_phase(make_stream, acl_user, redis_client, services):
    from ferry.core.ingest import migration_keys
    from ferry.live.dualwriter import DualWriter
    from ferry.live.phases import DRAINING, DUAL_WRITE, REDIS_PRIMARY, read_phase, set_phase

    stream = make_stream(records(100), partitions=2)
    backfill(stream.config, progress=False)  # history as the default user
    keys = migration_keys(stream.config)
    creds = acl_user("writer", stream.config.name)
    _, config = as_user(stream, creds)
    set_phase(redis_client, keys, DUAL_WRITE)
    writer = DualWriter(config, poll_interval_s=0.02)
    try:
        for i in range(40):
            writer.send(b"dual %d" % i, key=b"k", partition=i % 2)
        writer.flush()
        set_phase(redis_client, keys, DRAINING)
        set_phase(redis_client, keys, REDIS_PRIMARY)
        wait_until(lambda: writer.phase == REDIS_PRIMARY, "the writer to follow the phase", 4)
        for i in range(30):
            writer.send(b"first %d" % i, key=b"k", partition=i % 2)
        writer.flush()
    finally:
        writer.close()
    counts = writer.counts
    assert counts.failures == 0 and not writer.failed, writer.failed[:3]
    assert counts.written_redis == 40 and counts.written_redis_first == 30 == counts.shadowed
    assert read_phase(redis_client, keys).phase == REDIS_PRIMARY
    assert redis_client.xlen(config.redis.stream) == 170
    as_writer = redis.Redis.from_url(
        services.redis_url, username=creds["user"], password=creds_password(creds)
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_writer.xtrim(config.redis.stream, maxlen=0)


def test_the_consumer_role_reads_acks_and_dead_letters(make_stream, acl_user, services):
    from ferry.live.handover import StreamConsumer, translate_group

    stream = make_stream(
        [SeedRecord(0, b"k", b"v%d" % i, (), 1_700_000_000_000 + i) for i in range(20)],
        partitions=1,
    )
    backfill(stream.config, progress=False)
    translate_group(stream.config, "g", committed={}, reset="earliest")
    creds = acl_user("consumer", stream.config.name)
    _, config = as_user(stream, creds)
    first = StreamConsumer(config, "g", "c1", batch=5, block_ms=50, claim_idle_ms=0, max_failures=1)
    got = first.poll()
    first.ack(*got[:4])
    assert first.fail(got[4], "boom") is True  # dead-lettered at the first failure
    rest = []
    second = StreamConsumer(config, "g", "c2", batch=50, block_ms=50, claim_idle_ms=0)
    while batch := second.poll():
        second.ack(*batch)
        rest += batch
    assert [d.record.offset for d in got[:4] + rest] == [o for o in range(20) if o != 4]
    as_consumer = redis.Redis.from_url(
        services.redis_url, username=creds["user"], password=creds_password(creds)
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_consumer.evalsha("0" * 40, 0)  # ferry's scripts are not the consumer's
