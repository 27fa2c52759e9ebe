"""``ferry run --all``: several streams, each in its own ``ferry run`` child and archive, a few
at a time, one combined table; a broken config fails its row only; SIGTERM stops them all."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from ferry.runbook.audit import verify_archive
from ferry.services.seed import payment_events

from .helpers import ferry_cli, wait_until

pytestmark = pytest.mark.redis_side  # orchestration of ferry run processes: once per Redis kind


def make_streams(make_stream, folder: Path, count: int) -> list[str]:
    folder.mkdir()
    names = []
    for letter in "abc"[:count]:
        stream = make_stream(list(payment_events(300, 2)), partitions=2)
        stream.write_config(folder / f"{letter}.yaml")
        names.append(stream.config.name)
    return names


def table_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["stream", "result"])
    return {ln.split()[0]: ln.split() for ln in lines[head + 1 :] if ln.strip()}


def test_every_stream_runs_into_its_own_archive_and_a_broken_config_fails_its_row(
    make_stream, tmp_path
):
    streams = tmp_path / "streams"
    names = make_streams(make_stream, streams, 2)
    gone = make_stream([], partitions=1)  # its config names a topic the broker does not have
    gone.write_config(streams / "gone.yaml", kafka={**gone.doc["kafka"], "topic": "no-such-topic"})
    (streams / "broken.yaml").write_text(
        yaml.safe_dump({"name": "broken", "kafka": {"bootstrap_servers": "x:1"}, "redis": {}})
    )
    audit = tmp_path / "audit"
    done = subprocess.run(
        ferry_cli(
            "run", "--all", "--streams", streams, "--parallel", 2, "--only", "00", "--audit", audit
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 5, done  # the gate's status, above the broken config's 3
    assert done.stderr.strip() == "ferry: error: 2 of 4 stream(s) did not pass", done.stderr
    rows = table_rows(done.stdout)
    assert sorted(rows) == sorted([*names, gone.config.name, "broken"]), done.stdout
    gone_line = " ".join(rows[gone.config.name])
    assert rows[gone.config.name][1:4:2] == ["failed", "00-capacity-sizing"], done.stdout
    assert "no-such-topic" in gone_line, gone_line
    assert rows["broken"][1:4] == ["failed", "0.0", "config"]
    broken_line = " ".join(rows["broken"])
    assert str(streams / "broken.yaml") in broken_line and "kafka" in broken_line
    for name in names:
        assert rows[name][1] == "passed", done.stdout
        (archive,) = (audit / name).iterdir()  # one archive per stream
        assert rows[name][4] == str(archive)
        assert (archive / "00-capacity-sizing.ipynb").is_file()
        assert verify_archive(archive) == []
        steps = json.loads((archive / "manifest.json").read_text())["metadata"]["steps"]
        assert [(s["id"], s["outcome"]) for s in steps] == [("00", "passed")]
    # two at a time, never more: the third starts only once one has finished
    running, peak = set(), 0
    for line in done.stdout.splitlines():
        if ": started (pid " in line:
            running.add(line.split(":")[0])
        elif line.startswith("["):
            running.discard(line.split()[1])
        peak = max(peak, len(running))
    assert peak == 2, done.stdout


def test_sigterm_stops_every_child_and_reports_what_finished(make_stream, tmp_path):
    streams, audit = tmp_path / "streams", tmp_path / "audit"
    first, second = make_streams(make_stream, streams, 2)
    proc = subprocess.Popen(
        ferry_cli("run", "--all", "--streams", streams, "--parallel", 1, "--only", "00",
                  "--audit", audit),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen = [proc.stdout.readline(), proc.stdout.readline()]
    assert seen[1].startswith(f"{first}: started (pid "), seen
    child = int(seen[1].split("pid ")[1].split(",")[0])
    # the first stream's step is under way: Papermill has written its output notebook
    wait_until(lambda: any(audit.glob(f"{first}/*/00-*.ipynb")), "step 00 to start", 120)
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=180)
    out = "".join(seen) + rest
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "ferry: interrupted; rerun to resume from the frontier", err
    rows = table_rows(out)
    (archive,) = (audit / first).iterdir()
    assert rows[first][1:5] == ["interrupted", rows[first][2], "00-capacity-sizing", str(archive)]
    assert "interrupted: ferry run received SIGINT or SIGTERM" in out
    assert rows[second][1:] == ["not-run", "-", "-", "-", "-"], out
    assert f"{second}: started" not in out  # none started after the signal
    assert not (audit / second).exists()
    # the stopped child archived what ran, verifiably, and is gone
    assert verify_archive(archive) == []
    manifest = json.loads((archive / "manifest.json").read_text())["metadata"]
    assert manifest["outcome"] == "failed"
    assert [(s["id"], s["outcome"]) for s in manifest["steps"]] == [("00", "failed")]
    assert not Path(f"/proc/{child}").exists(), f"ferry run child {child} is still running"
