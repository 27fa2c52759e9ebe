"""kill -9 the backfill at several points; every rerun resumes with nothing lost or doubled."""

import os
import signal
import subprocess
import time

import pytest

from ferry.core.ingest import migration_keys, read_state
from ferry.core.validate import validate_stream
from ferry.services.seed import payment_events

from .helpers import ferry_cli

RECORDS = 240_000
PARTITIONS = 4


def stream_counts(client, key):
    counts = {}
    for p in range(PARTITIONS):
        counts[p] = 0
    last = "-"
    while True:
        chunk = client.xrange(key, min=last, max="+", count=20_000)
        for _, fields in chunk:
            counts[int(fields[b"p"])] += 1
        if len(chunk) < 20_000:
            return counts
        last = "(" + chunk[-1][0].decode()


@pytest.mark.each_server
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_kill_9_mid_backfill_then_resume(make_stream, redis_client, tmp_path, client):
    stream = make_stream(
        list(payment_events(RECORDS, PARTITIONS)), partitions=PARTITIONS, client=client
    )
    config_file = stream.write_config(tmp_path / "stream.yaml", batch_size=500)
    keys = migration_keys(stream.config)
    cmd = ferry_cli("backfill", config_file, "--no-progress")
    kill_points = [1, RECORDS // 4, RECORDS // 2, 3 * RECORDS // 4]
    killed_at = []
    for point in kill_points:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        copied = 0
        while proc.poll() is None and time.monotonic() < deadline:
            _, frontiers = read_state(redis_client, keys)
            copied = sum(f + 1 for f in frontiers.values())
            if copied >= point:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)  # polling interval while watching progress, not a readiness wait
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, (
            f"backfill ended before the kill point {point}: {proc.stderr.read().decode()[-2000:]}"
        )
        killed_at.append(copied)
        # atomic progress: after a crash anywhere, stream and frontier agree partition by
        # partition. Redis may still run scripts the dead client had already sent, so take the
        # counts between two equal readings of the state (every batch moves a frontier).
        for _ in range(1000):
            _, before = read_state(redis_client, keys)
            counts = stream_counts(redis_client, keys.stream)
            _, after = read_state(redis_client, keys)
            if before == after:
                break
        assert before == after
        assert counts == {p: before[p] + 1 for p in range(PARTITIONS)}

    assert killed_at == sorted(killed_at) and killed_at[-1] < RECORDS
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert redis_client.xlen(keys.stream) == RECORDS
    report = validate_stream(stream.config)
    assert report.ok, report.failures()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert '"records": 0' in again.stdout
    assert redis_client.xlen(keys.stream) == RECORDS
