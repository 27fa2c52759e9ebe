"""Bad input: each a clear error naming what is wrong, and nothing written."""

import subprocess
from dataclasses import replace

import pytest
import redis

from ferry.core.mirror import backfill
from ferry.errors import ForeignStreamError, KafkaError, RedisTargetError, TopicNotFoundError
from ferry.services.seed import payment_events
from ferry.services.servers import free_port

from .helpers import ferry_cli


def tagged_keys(client, config):
    return list(client.scan_iter(match=f"*{{{config.name}}}*"))


def test_unknown_topic(make_stream, redis_client):
    stream = make_stream([], partitions=1)
    config = replace(stream.config, kafka=replace(stream.config.kafka, topic="no-such-topic"))
    with pytest.raises(TopicNotFoundError, match="'no-such-topic' does not exist"):
        backfill(config, progress=False)
    assert tagged_keys(redis_client, config) == []


@pytest.mark.kafka_side
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_unreachable_broker(make_stream, redis_client, client):
    stream = make_stream([], partitions=1, client=client)
    dead = f"127.0.0.1:{free_port()}"
    config = replace(stream.config, kafka=replace(stream.config.kafka, bootstrap_servers=dead))
    with pytest.raises(KafkaError, match=f"cannot reach Kafka at {dead}"):
        backfill(config, progress=False)
    assert tagged_keys(redis_client, config) == []


@pytest.mark.redis_side
def test_unreachable_redis(make_stream):
    """Waited out for redis.fault_deadline (2 minutes by default; 1.5 s here), then one line
    naming the address and the deadline."""
    stream = make_stream([], partitions=1)
    url = f"redis://127.0.0.1:{free_port()}/0"
    redis_settings = replace(stream.config.redis, url=url, fault_deadline_ms=1500)
    config = replace(stream.config, redis=redis_settings)
    with pytest.raises(RedisTargetError, match=f"cannot reach Redis at {url}") as info:
        backfill(config, progress=False)
    assert "gave up after 2s (redis.fault_deadline)" in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_redis_password(make_stream, redis_client, monkeypatch):
    from ferry.config import SecretRef

    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    redis_client.acl_setuser(
        "ferry-test", enabled=True, passwords=["+right-password"], commands=["+@all"], keys=["*"]
    )
    monkeypatch.setenv("FERRY_TEST_REDIS_PW", "wrong-password")
    settings = replace(
        stream.config.redis,
        username=SecretRef(file=None, env="FERRY_TEST_REDIS_USER"),
        password=SecretRef(env="FERRY_TEST_REDIS_PW"),
    )
    monkeypatch.setenv("FERRY_TEST_REDIS_USER", "ferry-test")
    config = replace(stream.config, redis=settings)
    try:
        with pytest.raises(RedisTargetError, match="refused the credentials") as info:
            backfill(config, progress=False)
        assert "wrong-password" not in str(info.value)
        assert tagged_keys(redis_client, config) == []
        monkeypatch.setenv("FERRY_TEST_REDIS_PW", "right-password")  # and the right one works
        assert backfill(config, progress=False).records == 10
    finally:
        redis_client.acl_deluser("ferry-test")


def test_stream_key_with_foreign_data(make_stream, redis_client):
    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    redis_client.xadd(stream.config.redis.stream, {"from": "another app"})
    with pytest.raises(ForeignStreamError, match="ferry did not write"):
        backfill(stream.config, progress=False)
    assert redis_client.xlen(stream.config.redis.stream) == 1
    assert tagged_keys(redis_client, stream.config) == [stream.config.redis.stream.encode()]


def test_stream_key_holding_another_type(make_stream, redis_client):
    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    redis_client.set(stream.config.redis.stream, "a string")
    with pytest.raises(ForeignStreamError, match="holds a string"):
        backfill(stream.config, progress=False)
    assert redis_client.get(stream.config.redis.stream) == b"a string"


def test_evicting_redis_is_refused(make_stream, redis_client):
    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(RedisTargetError, match="allkeys-lru"):
            backfill(stream.config, progress=False)
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    assert tagged_keys(redis_client, stream.config) == []


def test_cli_reports_invalid_config_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nkafka: {bootstrap_servers: k, topic: t, client: java}\nredis: {url: 'redis://r'}\n"
    )
    done = subprocess.run(
        ferry_cli("backfill", bad),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3  # configuration error
    assert (
        f"ferry: error: {bad}: kafka.client: 'java' is not one of confluent, kafka-python"
        in done.stderr
    )


def test_redis_errors_are_not_hidden(redis_client):
    # the fixture client itself still works after the tests above changed ACLs and config
    assert redis_client.ping() is True
    assert redis_client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert isinstance(redis_client, redis.Redis)
