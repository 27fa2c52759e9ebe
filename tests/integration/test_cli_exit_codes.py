"""Exit statuses that need a real broker and Redis: a data-integrity failure found by
``ferry validate``, and ``ferry translate-group`` on a group that committed nothing on the
topic, refused before anything is created in Redis. In-process through ``ferry.cli.main``."""

from __future__ import annotations

import pytest

from ferry.cli import main
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.exitcodes import ExitCode
from ferry.services.seed import SeedRecord

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server


def records(n: int, partitions: int) -> list[SeedRecord]:
    return [
        SeedRecord(i % partitions, f"k{i}".encode(), f"v{i}".encode(), (), 1_700_000_000_000 + i)
        for i in range(n)
    ]


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def test_validate_on_a_stream_missing_an_entry_is_an_integrity_failure(
    make_stream, redis_client, tmp_path, capsys
):
    stream = make_stream(records(60, 2), partitions=2)
    backfill(stream.config, progress=False)
    config_file = stream.write_config(tmp_path / "s.yaml")
    assert main(["validate", str(config_file)]) == ExitCode.OK
    capsys.readouterr()
    victim, _ = redis_client.xrange(stream.config.redis.stream, count=1)[0]
    redis_client.xdel(stream.config.redis.stream, victim)
    assert main(["validate", str(config_file)]) == 6 == ExitCode.INTEGRITY
    out = capsys.readouterr().out
    assert "FAILED" in out and "missing" in out


def test_translate_group_refuses_a_group_with_no_committed_offsets(
    make_stream, redis_client, tmp_path, capsys
):
    stream = make_stream(records(10, 1), partitions=1)
    config_file = stream.write_config(tmp_path / "s.yaml")
    keys = migration_keys(stream.config)
    before = set(redis_client.scan_iter(match=f"*{{{stream.config.name}}}*"))
    status = main(["translate-group", str(config_file), "nosuchgroup"])
    assert status == 3 == ExitCode.CONFIG
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("ferry: error: "), lines
    assert "'nosuchgroup'" in lines[0] and repr(stream.config.kafka.topic) in lines[0]
    # nothing was created in Redis: no stream key (backfill would refuse it as foreign), no group
    assert not redis_client.exists(keys.stream)
    assert set(redis_client.scan_iter(match=f"*{{{stream.config.name}}}*")) == before
    # and a backfill afterwards takes the stream as its own
    backfill(stream.config, progress=False)
    assert redis_client.xlen(keys.stream) == 10
    assert redis_client.xinfo_groups(keys.stream) == []
