"""The hand-over follows Kafka's rules, with offsets committed through the real group
coordinator: a committed offset below the migration's start is refused (or accepted on the
operator's word, the gap recorded in the events stream); a partition the group never committed
follows the reset policy the operator states, ``latest`` (Kafka's default) or ``earliest``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ferry.cli import main
from ferry.core.ingest import migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.errors import GroupGapError, HandoverError
from ferry.exitcodes import ExitCode
from ferry.live.handover import StreamConsumer, group_offsets_key, hand_over_group, translate_group
from ferry.live.phases import events_key
from ferry.services.seed import SeedRecord, produce_records

from .test_live import commit_group

BASE = 1_700_000_000_000


def records(n: int, partitions: int, first: int = 0) -> list[SeedRecord]:
    return [
        SeedRecord(i % partitions, f"k{i}".encode(), f"v{i}".encode(), (), BASE + i)
        for i in range(first, first + n)
    ]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def drain(consumer: StreamConsumer) -> dict[int, list[int]]:
    """Every delivery until the group is caught up, acknowledged: offsets per partition."""
    got: dict[int, list[int]] = {}
    while batch := consumer.poll():
        for d in batch:
            got.setdefault(d.record.partition, []).append(d.record.offset)
        consumer.ack(*batch)
    return got


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def group_keys(client, config, group: str) -> set[bytes]:
    base = group_offsets_key(migration_keys(config), group)
    return {k for k in client.scan_iter(match=f"{base}*")}


def test_a_commit_below_the_start_is_refused_naming_it_then_accepted_with_the_gap_recorded(
    make_stream, redis_client, tmp_path, capsys
):
    # 20 records per partition; the migration starts at offset 10 of each
    stream = make_stream(records(40, 2), partitions=2, extra={"start": iso(BASE + 20)})
    config = stream.config
    backfill(config, progress=False)
    starts, _ = read_state(redis_client, migration_keys(config))
    assert starts == {0: 10, 1: 10}
    commit_group(stream.bootstrap, config.kafka.topic, "billing", {0: 4, 1: 15})
    keys = migration_keys(config)

    with pytest.raises(GroupGapError) as refused:
        translate_group(config, "billing")
    assert isinstance(refused.value, HandoverError)
    text = str(refused.value)
    assert "partition 0" in text and "committed offset 4" in text and "start 10" in text
    assert "partition 1" not in text  # 15 is past the start: no gap there
    assert "catch up on Kafka" in text and "--accept-gap" in text
    assert refused.value.gaps == {0: (4, 10)}
    # refused before anything was written: no group, no stored offsets, no event
    assert redis_client.xinfo_groups(keys.stream) == []
    assert group_keys(redis_client, config, "billing") == set()
    assert not redis_client.exists(events_key(keys))

    config_file = stream.write_config(tmp_path / "s.yaml")
    status = main(["translate-group", str(config_file), "billing"])
    assert status == ExitCode.ERROR == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("ferry: error: ") and "--accept-gap" in lines[0]

    assert main(["translate-group", str(config_file), "billing", "--accept-gap"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gaps"] == {"0": [4, 10]} and out["committed"] == {"0": 4, "1": 15}
    gaps = [f for _, f in redis_client.xrange(events_key(keys)) if f[b"type"] == b"handover-gap"]
    assert len(gaps) == 1
    assert (gaps[0][b"group"], gaps[0][b"partition"]) == (b"billing", b"0")
    assert (gaps[0][b"committed"], gaps[0][b"start"], gaps[0][b"lost"]) == (b"4", b"10", b"6")
    consumer = StreamConsumer(config, "billing", "c1", block_ms=50)
    assert drain(consumer) == {0: list(range(10, 20)), 1: list(range(15, 20))}


@pytest.mark.parametrize("reset", ["latest", "earliest"])
def test_a_partition_never_committed_follows_the_reset_policy(make_stream, redis_client, reset):
    stream = make_stream(records(30, 3), partitions=3)  # offsets 0..9 in every partition
    config = stream.config
    backfill(config, progress=False)
    commit_group(stream.bootstrap, config.kafka.topic, "billing", {0: 4})  # 1 and 2: never
    if reset == "latest":  # the default, as Kafka's consumer
        translation = hand_over_group(config, "billing", 30.0)
    else:
        translation = hand_over_group(config, "billing", 30.0, reset="earliest")
    assert translation.committed == {0: 4}
    assert translation.reset == reset
    assert translation.reset_offsets == ({1: 10, 2: 10} if reset == "latest" else {1: 0, 2: 0})

    produce_records(stream.bootstrap, config.kafka.topic, records(9, 3, first=30))  # 10..12
    backfill(config, progress=False)
    got = drain(StreamConsumer(config, "billing", "c1", block_ms=50))
    if reset == "latest":  # nothing of 1 and 2 that was in the stream at the hand-over
        assert got == {0: list(range(4, 13)), 1: [10, 11, 12], 2: [10, 11, 12]}
    else:
        assert got == {0: list(range(4, 13)), 1: list(range(13)), 2: list(range(13))}


def test_translate_group_cli_takes_the_reset_policy(make_stream, redis_client, tmp_path, capsys):
    stream = make_stream(records(20, 2), partitions=2)
    backfill(stream.config, progress=False)
    commit_group(stream.bootstrap, stream.config.kafka.topic, "fraud", {1: 3})
    commit_group(stream.bootstrap, stream.config.kafka.topic, "audit", {1: 3})
    config_file = stream.write_config(tmp_path / "s.yaml")

    assert main(["translate-group", str(config_file), "fraud"]) == 0  # default: latest
    out = json.loads(capsys.readouterr().out)
    assert (out["reset"], out["reset_offsets"], out["committed"]) == ("latest", {"0": 10}, {"1": 3})
    assert main(["translate-group", str(config_file), "audit", "--reset", "earliest"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["reset"], out["reset_offsets"]) == ("earliest", {"0": 0})
    assert drain(StreamConsumer(stream.config, "audit", "c", block_ms=50)) == {
        0: list(range(10)),
        1: list(range(3, 10)),
    }

    with pytest.raises(SystemExit) as bad:
        main(["translate-group", str(config_file), "audit", "--reset", "none"])
    assert bad.value.code == ExitCode.USAGE
