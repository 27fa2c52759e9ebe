"""Every verb that touches Redis, against each Redis fault a user meets first: the server is
down, the ACL user may run nothing but PING, or a key of the migration holds another type. Each is one ``ferry: error:`` line and exit
status 4 (unreachable) or 1 (any other error), never a traceback (the verbs run in-process through ``ferry.cli.main``, so any
exception that escapes fails the test)."""

from __future__ import annotations

import secrets

import pytest
import yaml

from ferry.cli import main
from ferry.services.seed import SeedRecord
from ferry.services.servers import free_port

from .test_live import commit_group

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server

VERBS = {
    "backfill": ["backfill", "{cfg}", "--no-progress"],
    "validate": ["validate", "{cfg}"],
    "phase": ["phase", "{cfg}"],
    "phase --set": ["phase", "{cfg}", "--set", "dual-write"],
    "cutover": ["cutover", "{cfg}"],
    "translate-group": ["translate-group", "{cfg}", "g1"],
    "traffic": ["traffic", "{cfg}", "--seconds", "1", "--rate", "20"],
    "group-consumer": ["group-consumer", "{cfg}", "g1", "--log", "{log}"],
}


@pytest.fixture
def denied_user(redis_client, tmp_path, monkeypatch):
    user, password = f"nobody-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["-@all", "+ping", "+hello"],
    )
    (tmp_path / "pw").write_text(password)
    monkeypatch.setenv("FERRY_TEST_DENIED_USER", user)
    yield user
    redis_client.acl_deluser(user)


@pytest.mark.parametrize("fault", ["redis down", "acl denies", "wrong key type"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_reports_a_redis_fault_in_one_line(
    make_stream, tmp_path, capsys, request, verb, fault
):
    if (verb, fault) == ("group-consumer", "wrong key type"):
        pytest.skip("the group consumer reads no key of the migration's state until step 05")
    stream = make_stream([SeedRecord(0, b"k", b"v", (), 1_700_000_000_000)], partitions=1)
    if verb == "translate-group":  # a group with no committed offset is refused before Redis
        commit_group(stream.bootstrap, stream.config.kafka.topic, "g1", {0: 0})
    doc = {**stream.doc, "redis": {**stream.doc["redis"], "fault_deadline": "1s"}}
    if fault == "redis down":
        doc["redis"]["url"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    elif fault == "wrong key type":  # the migration's state key overwritten by hand
        request.getfixturevalue("redis_client").set(f"{{{stream.config.name}}}:ferry:state", "x")
    else:
        request.getfixturevalue("denied_user")
        doc["redis"]["username"] = {"env": "FERRY_TEST_DENIED_USER"}
        doc["redis"]["password"] = {"file": str(tmp_path / "pw")}
    cfg = tmp_path / "stream.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    argv = [a.format(cfg=cfg, log=tmp_path / "log.jsonl") for a in VERBS[verb]]
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ferry: error:")]
    assert status == (4 if fault == "redis down" else 1), err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    expect = {
        "redis down": ("unreachable", "cannot reach redis"),
        "acl denies": ("permission",),
        "wrong key type": ("another type", "wrongtype", "wrong kind"),
    }[fault]
    assert any(word in lines[0].lower() for word in expect), lines[0]
