"""The runbook end to end: Papermill runs, gates, the audit archive and its secrets."""

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from ferry.config import load_config
from ferry.core.follower import stop_follower
from ferry.core.ingest import migration_keys
from ferry.redis.acl import ROLES
from ferry.runbook.audit import verify_archive
from ferry.runbook.runner import run_runbook
from ferry.services.seed import awkward_records, create_topic, payment_events, produce_records
from ferry.services.traffic import generate_traffic

from .chromium import OFFLINE_FLAGS
from .helpers import ferry_cli

SENTINEL = "s3ntinel-Pa55w0rd-8d1f"
PARTITIONS = 4


@pytest.fixture
def runbook_stream(services, redis_client, tmp_path, monkeypatch, request):
    """A seeded topic and a config that logs in to Redis as a user whose password is the
    sentinel, passed by reference (an environment variable), as a real run would."""
    name = (
        "rb-" + request.node.name.split("[")[0][-20:].replace("_", "-") + "-" + services.redis_kind
    )
    create_topic(services.kafka_bootstrap, name, PARTITIONS)
    produce_records(
        services.kafka_bootstrap, name, awkward_records(PARTITIONS, big_value_bytes=50_000)
    )
    produce_records(services.kafka_bootstrap, name, payment_events(6000, PARTITIONS - 1))
    user = f"ferry-{name}"
    line = ROLES["operator"].setuser_line(user, name).replace(">PASSWORD", f">{SENTINEL}")
    redis_client.execute_command(*line.split())  # least privilege: the operator's line
    monkeypatch.setenv("FERRY_TEST_REDIS_USER", user)
    monkeypatch.setenv("FERRY_TEST_REDIS_PASSWORD", SENTINEL)
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "kafka": {"bootstrap_servers": services.kafka_bootstrap, "topic": name},
                "redis": {
                    "url": services.redis_url,
                    "username": {"env": "FERRY_TEST_REDIS_USER"},
                    "password": {"env": "FERRY_TEST_REDIS_PASSWORD"},
                },
                "trim": {"max_len": 5000},
            }
        )
    )
    yield config, name
    stop_follower(load_config(config))  # step 03 started one
    redis_client.acl_deluser(user)
    keys = list(redis_client.scan_iter(match=f"*{{{name}}}*"))
    if keys:
        redis_client.delete(*keys)


@pytest.mark.each_server
def test_full_run_passes_every_gate_and_archives_verifiably(runbook_stream, tmp_path, redis_client):
    config, name = runbook_stream
    redis_client.acl_log_reset()
    lines = []
    stop = threading.Event()
    counts = {}
    traffic = threading.Thread(  # a live producer through every phase
        target=lambda: counts.update(
            generate_traffic(load_config(config), rate=300, should_stop=stop.is_set)
        )
    )
    traffic.start()
    try:
        result = run_runbook(str(config), audit_root=tmp_path / "audit", echo=lines.append)
    finally:
        stop.set()
        traffic.join(timeout=60)
    assert result.ok, [s.message for s in result.steps]
    assert [(s.id, s.outcome) for s in result.steps] == [
        (step, "passed") for step in ("00", "01", "03", "02", "04", "05", "06")
    ]
    assert counts["written_redis_first"] > 0 and counts["not_accepted"] == 0
    denied = [
        e
        for e in redis_client.acl_log()
        if e["username"] == f"ferry-{name}" and e["object"] != "client|setinfo"
    ]  # CLIENT SETINFO (not in Redis 7.0, so not in the lines) is refused and redis-py goes on
    assert denied == [], denied  # the operator's ACL line was enough for every step
    folder = result.folder
    for label in (
        "00-capacity-sizing",
        "01-preflight",
        "03-backfill",
        "02-dual-write",
        "04-validation",
        "05-cutover",
        "06-retention-scaling",
    ):
        assert (folder / f"{label}.ipynb").exists() and (folder / f"{label}.html").exists()
        # nothing drawn as an error box: client libraries log to clients.log, bars go to stdout
        cells = json.loads((folder / f"{label}.ipynb").read_text())["cells"]
        red = [o for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
        assert red == [], (label, ["".join(o["text"])[:200] for o in red])
    assert (folder / "clients.log").exists()
    assert (folder / "data-docs" / "index.html").exists()
    assert (folder / "keda-scaledobject.yaml").exists()
    assert verify_archive(folder) == []

    # the sentinel password is in no archived file, in any form
    for path in folder.rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path

    # the HTML renders offline: no scripts, charts inline as SVG
    html = (folder / "00-capacity-sizing.html").read_text()
    assert "<script" not in html and 'src="http' not in html
    assert (
        len(re.findall(r'<img [^>]*src="data:image/svg\+xml;base64,', html)) == 2
    )  # the two charts

    # one altered byte is found and named
    target = folder / "03-backfill.ipynb"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x20
    target.write_bytes(bytes(data))
    done = subprocess.run(
        ferry_cli("audit", "verify", folder),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 6  # data integrity
    assert done.stdout.strip() == "03-backfill.ipynb: altered (sha256 differs from the manifest)"


def test_deleted_record_stops_the_run_at_validation_naming_the_partition(
    runbook_stream, redis_client, tmp_path
):
    config, name = runbook_stream
    first = run_runbook(str(config), only="03", audit_root=tmp_path / "audit", echo=lambda s: None)
    assert first.ok
    stream = migration_keys(load_config(config)).stream
    victim_id, fields = redis_client.xrange(stream, count=40)[-1]
    redis_client.xdel(stream, victim_id)
    partition = int(fields[b"p"])
    result = run_runbook(
        str(config), start="04", audit_root=tmp_path / "audit", echo=lambda s: None
    )
    assert not result.ok
    failed = result.failed
    assert (failed.id, failed.name) == ("04", "validation")
    assert "GateFailed" in failed.message and f"partition {partition}" in failed.message
    # stopped there: 05 and 06 are listed as not run
    assert [(s.id, s.outcome) for s in result.steps] == [
        ("04", "failed"),
        ("05", "not-run"),
        ("06", "not-run"),
    ]
    assert not (result.folder / "05-cutover.ipynb").exists()
    page = (result.folder / "04-validation.html").read_text()
    banner = re.search(r'<body[^>]*><div id="ferry-failure"[^>]*>([^<]*)</div>', page)
    assert banner is not None, "the failed step's page does not start with its cause"
    assert banner.group(1).startswith("step 04-validation failed: GateFailed: ")
    assert f"partition {partition}" in banner.group(1)
    assert verify_archive(result.folder) == []  # a failed run is archived all the same


def test_archived_html_shows_its_charts_in_headless_chromium(runbook_stream, tmp_path):
    from PIL import Image

    assert shutil.which("chromium"), (
        "needs Debian's chromium (scripts/ensure-system-packages installs it)"
    )
    config, _ = runbook_stream
    result = run_runbook(str(config), only="00", audit_root=tmp_path / "audit", echo=lambda s: None)
    assert result.ok
    page = result.folder / "00-capacity-sizing.html"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            *OFFLINE_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,4000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    image = Image.open(shot).convert("L")
    colours = image.getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 50, "the page rendered (nearly) blank"
    # the charts: plenty of non-white pixels in the page
    dark = sum(count for count, level in colours if level < 200)
    assert dark > 5000
    Path(tmp_path / "kept.png").write_bytes(shot.read_bytes())


def test_a_rebuilt_archive_is_caught_by_its_anchor(runbook_stream, tmp_path, monkeypatch):
    import json

    from ferry.live.phases import log_event
    from ferry.redis.target import connect_redis
    from ferry.runbook.audit import build_manifest
    from ferry.runbook.audit_anchor import generate_key_pair

    config, _ = runbook_stream
    private, public = generate_key_pair(tmp_path)
    monkeypatch.setenv("FERRY_AUDIT_SIGNING_KEY", str(private))
    result = run_runbook(str(config), only="00", audit_root=tmp_path / "audit", echo=lambda s: None)
    assert result.ok and (result.folder / "manifest.sig").is_file()
    verify = ferry_cli("audit", "verify", result.folder)
    env = {**os.environ, "FERRY_AUDIT_PUBLIC_KEY": str(public)}
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and "matches the one recorded in Redis" in done.stdout, done

    # whoever edits the evidence and rebuilds the manifest gets an archive that is
    # consistent in itself...
    sizing = next(result.folder.glob("*.ipynb"))
    sizing.write_text(sizing.read_text().replace("passed", "p4ssed"))
    metadata = json.loads((result.folder / "manifest.json").read_text())["metadata"]
    metadata = {k: v for k, v in metadata.items() if k not in ("kind", "prev", "hash")}
    manifest = build_manifest(result.folder, metadata)
    assert verify_archive(result.folder) == []
    # ...but not one whose head matches the anchor recorded when the run ended
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 6 and "manifest was rebuilt" in done.stdout, done

    # and an anchor forged beside it, without the operator's key, does not verify
    loaded = load_config(str(config))
    client = connect_redis(loaded)
    log_event(
        client,
        migration_keys(loaded),
        "audit",
        run_id=result.run_id,
        head=manifest["head"],
        signature="00" * 64,
        key_id=json.loads((result.folder / "manifest.sig").read_text())["key_id"],
    )
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 6 and "not signed by that key" in done.stdout, done


@pytest.mark.redis_side
@pytest.mark.kafka_side  # both: one stack only (the layout is ferry's, not a server's)
def test_a_spread_migration_passes_every_gate(runbook_stream, tmp_path, redis_client):
    """The runbook on the spread layout (a hash tag per partition), with a live producer
    through every phase, a Kafka consumer group to hand over and the operator's ACL line:
    every step passes, every partition's stream holds its records and the group's Redis
    group is on every partition stream."""
    from .test_live import commit_group

    config, name = runbook_stream
    doc = yaml.safe_load(config.read_text())
    doc["redis"]["layout"] = "spread"
    config.write_text(yaml.safe_dump(doc))
    commit_group(doc["kafka"]["bootstrap_servers"], name, "billing", {0: 5, 1: 7})
    stop = threading.Event()
    counts = {}
    traffic = threading.Thread(
        target=lambda: counts.update(
            generate_traffic(load_config(config), rate=300, should_stop=stop.is_set)
        )
    )
    traffic.start()
    keys = migration_keys(load_config(config))
    try:
        result = run_runbook(str(config), audit_root=tmp_path / "audit", echo=lambda _: None)
        lengths = [redis_client.xlen(k) for k in keys.streams(list(range(PARTITIONS)))]
        groups = [
            [g["name"] for g in redis_client.xinfo_groups(k)]
            for k in keys.streams(list(range(PARTITIONS)))
        ]
    finally:
        stop.set()
        traffic.join(timeout=60)
        for key in redis_client.scan_iter(match=f"*{{{name}:*}}*"):
            redis_client.delete(key)
    assert result.ok, [s.message for s in result.steps]
    assert [(s.id, s.outcome) for s in result.steps] == [
        (step, "passed") for step in ("00", "01", "03", "02", "04", "05", "06")
    ]
    assert counts["written_redis_first"] > 0 and counts["not_accepted"] == 0
    assert all(lengths) and not redis_client.exists(keys.stream), lengths
    assert groups == [[b"billing"]] * PARTITIONS
