"""`ferry services` starts real servers, reports them, stops them; a missing binary is a clear error."""

import json
import os
import subprocess

import pytest

from ferry.errors import ServiceError
from ferry.services.servers import find_redis_binary, probe_kafka, probe_redis

from .helpers import ferry_cli


def ferry(*args, env=None, timeout=60):
    return subprocess.run(
        ferry_cli(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_up_status_down(tmp_path):
    up = ferry("services", "up", "--folder", str(tmp_path))
    assert up.returncode == 0, up.stderr
    try:
        status = ferry("services", "status", "--folder", str(tmp_path))
        body = json.loads(status.stdout)
        assert status.returncode == 0 and body["kafka"] == "up" and body["redis"] == "up"
        host, port = body["kafka_bootstrap"].rsplit(":", 1)
        assert probe_kafka(host, int(port)) and probe_redis(body["redis_url"])
        assert (tmp_path / "services" / "kafka.log").exists()
        again = ferry("services", "up", "--folder", str(tmp_path))
        assert again.returncode == 1 and "already run" in again.stderr
    finally:
        down = ferry("services", "down", "--folder", str(tmp_path))
    assert down.returncode == 0 and down.stdout.strip() == "stopped"
    assert not probe_kafka(host, int(port))
    assert not probe_redis(body["redis_url"])
    after = ferry("services", "status", "--folder", str(tmp_path))
    assert after.returncode == 1 and json.loads(after.stdout)["kafka"] == "down"


def test_missing_redis_binary_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRY_REDIS_SERVER", str(tmp_path / "no-such-server"))
    with pytest.raises(
        ServiceError, match="no-such-server.*neither 'redis', 'valkey' nor an executable"
    ):
        find_redis_binary()
    done = ferry(
        "services", "up", "--folder", str(tmp_path), env={"FERRY_REDIS_SERVER": "/nope/redis"}
    )
    assert done.returncode == 1 and "ferry: error: FERRY_REDIS_SERVER='/nope/redis'" in done.stderr
    # the broker started first was stopped again: nothing is left recorded as running
    assert not (tmp_path / "services" / "services.json").exists()


def test_embedded_reference_without_services_is_a_clear_error(tmp_path, monkeypatch):
    config = tmp_path / "s.yaml"
    config.write_text(
        "name: s\nkafka: {bootstrap_servers: embedded, topic: s}\nredis: {url: embedded}\n"
    )
    done = ferry("backfill", str(config), env={"FERRY_HOME": str(tmp_path / "empty")})
    assert done.returncode == 1
    assert "no embedded services recorded" in done.stderr and "ferry services up" in done.stderr
