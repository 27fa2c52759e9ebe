"""Production metrics, logs and the follow mirror's status, on real services."""

from __future__ import annotations

import subprocess

import pytest

from ferry.services.seed import payment_events
from ferry.services.servers import free_port

from .helpers import ferry_cli, wait_until

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_broker_that_is_down_is_one_line_not_a_flood(make_stream, tmp_path, client):
    stream = make_stream([], partitions=1, client=client)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    doc = {**stream.doc, "kafka": {**stream.doc["kafka"], "bootstrap_servers": dead}}
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        ferry_cli("backfill", path, "--no-progress"), capture_output=True, text=True, timeout=180
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0, proc.stderr
    errors = [line for line in lines if line.startswith("ferry: error:")]
    assert len(errors) == 1 and f"cannot reach Kafka at {dead}" in errors[0], proc.stderr
    assert len(lines) < 5, proc.stderr


def scrape(port: int) -> dict[str, float]:
    """Every ferry_* sample of the endpoint, by its name and labels."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ferry_")
    }


def sample(port: int, name: str) -> float | None:
    try:
        return scrape(port).get(name)
    except OSError:
        return None


def start_follow(path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        ferry_cli("backfill", path, "--follow", "--no-progress", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_metrics_of_a_running_mirror_show_freshness_and_stale_lag(
    make_stream, own_redis, services, tmp_path
):
    import os
    import signal

    import yaml

    from ferry.services.seed import produce_records

    from .test_redis_faults import frontier_total, on_own_redis, seed

    stream = make_stream(seed(500, 2), partitions=2)
    doc, config = on_own_redis(stream, own_redis)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    proc = start_follow(path, "--metrics-addr", f"0.0.0.0:{port}", "--lag-stale-after", "2")
    name = config.name
    lag0 = f'ferry_mirror_lag{{partition="0",stream="{name}"}}'
    stale = f'ferry_mirror_lag_stale{{stream="{name}"}}'
    progress = f'ferry_mirror_last_progress_timestamp_seconds{{stream="{name}"}}'
    client = own_redis.client()
    try:
        wait_until(lambda: frontier_total(client, config) == 500, "the history")
        wait_until(lambda: sample(port, lag0) == 0.0, "lag 0 on partition 0")
        metrics = scrape(port)
        assert metrics[stale] == 0.0
        for kind in ("kafka_read", "redis_fault", "refused_batch"):
            assert metrics[f'ferry_mirror_errors_total{{kind="{kind}",stream="{name}"}}'] == 0.0
        assert metrics[f'ferry_mirror_records_total{{stream="{name}"}}'] == 500.0
        first = metrics[progress]
        wait_until(lambda: (sample(port, progress) or 0) > first, "freshness to advance")

        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # Redis hangs: the mirror stalls
        try:
            produce_records(services.kafka_bootstrap, config.kafka.topic, seed(50, 2, start=500))
            wait_until(lambda: sample(port, stale) == 1.0, "the lag to go stale", 30)
            metrics = scrape(port)
            assert not [k for k in metrics if k.startswith("ferry_mirror_lag{")], metrics
            stalled_at = metrics[progress]
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        wait_until(lambda: sample(port, stale) == 0.0, "fresh lag again", 90)
        wait_until(lambda: frontier_total(client, config) == 550, "the mirror to catch up", 90)
        assert scrape(port)[progress] > stalled_at
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"records": 550' in out
    assert "Traceback" not in err, err


def test_mirror_status_and_stop_of_a_real_follow_mirror(make_stream, tmp_path):
    import json

    from ferry.core.follower import MIRROR_NOT_LIVE

    stream = make_stream(list(payment_events(300, 2)), partitions=2)
    path = stream.write_config(tmp_path / "s.yaml")

    def status(*extra):
        return subprocess.run(
            ferry_cli("mirror", "status", path, *extra), capture_output=True, text=True, timeout=60
        )

    before = status()
    assert before.returncode == MIRROR_NOT_LIVE, before.stdout + before.stderr
    assert "no live follow mirror" in before.stdout
    proc = start_follow(path)
    try:
        wait_until(lambda: status().returncode == 0, "the mirror's heartbeat")
        wait_until(lambda: json.loads(status("--json").stdout)["lag"] == {"0": 0, "1": 0}, "lag 0")
        shown = json.loads(status("--json").stdout)
        assert shown["pid"] == proc.pid and shown["live"] is True
        assert shown["heartbeat_age_s"] < 5
        text = status().stdout
        assert f"pid {proc.pid}" in text and "partition 0: lag 0" in text
        stop = subprocess.run(
            ferry_cli("mirror", "stop", path, "--wait", "30"),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert f"stopped the follow mirror (pid {proc.pid})" in stop.stdout
        assert proc.wait(timeout=5) == 0  # it had exited when stop returned
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    after = status()
    assert after.returncode == MIRROR_NOT_LIVE, after.stdout
    again = subprocess.run(ferry_cli("mirror", "stop", path), capture_output=True, text=True)
    assert again.returncode == MIRROR_NOT_LIVE and "no live follow mirror" in again.stdout
