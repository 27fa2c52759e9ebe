"""Mirror workers' own logic, without servers: group id, consumer settings, what a reply
means for a partition's position, replays dropped, when a non-following run is done."""

import pytest

from ferry.cli import build_parser
from ferry.config import parse_config
from ferry.core.entries import KafkaRecord
from ferry.core.ingest import BatchResult
from ferry.core.workers import (
    Ownership,
    caught_up,
    fresh,
    group_id_for,
    group_settings,
)
from ferry.errors import UsageError


def config(name="orders"):
    return parse_config(
        {
            "name": name,
            "kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "orders"},
            "redis": {"url": "redis://127.0.0.1:6379/0"},
        },
        "<test>",
    )


def rec(p, offset):
    return KafkaRecord(p, offset, 0, b"k", b"v", ())


def test_group_id_is_derived_from_the_migration_and_overridable():
    assert group_id_for(config("orders")) == "ferry-mirror.orders"
    assert group_id_for(config("orders"), "team-a.workers") == "team-a.workers"
    with pytest.raises(UsageError):
        group_id_for(config(), "  ")


def test_consumer_never_commits_and_is_a_cooperative_member():
    s = group_settings({"bootstrap.servers": "x"}, "g", "orders", 6000)
    assert s["enable.auto.commit"] is False and s["enable.auto.offset.store"] is False
    assert s["auto.offset.reset"] == "error"  # every start is an explicit frontier + 1
    assert s["isolation.level"] == "read_committed"
    assert s["partition.assignment.strategy"] == "cooperative-sticky"
    assert s["group.id"] == "g" and s["session.timeout.ms"] == 6000
    assert s["client.id"].startswith("ferry-worker-orders-")  # host and pid: who holds what
    assert s["heartbeat.interval.ms"] < s["session.timeout.ms"]
    with pytest.raises(UsageError):
        group_settings({}, "g", "orders", 10)


def test_assigned_partitions_start_after_their_frontier():
    own = Ownership()
    assert own.take({0: 99, 3: -1}) == {0: 100, 3: 0}
    own.drop([3, 7])
    assert own.pos == {0: 100}


def test_reply_in_step_reads_on():
    own = Ownership()
    own.take({0: 99})
    gen = own.generation[0]
    own.pos[0] = 200  # a batch 100..199 was queued
    assert own.settle(0, gen, BatchResult(0, 100, 199, False)) is None
    assert own.overtaken == 0


def test_frontier_beyond_what_was_read_means_read_again_from_it():
    """A stale worker: another worker copied up to 499 while this one read 100..199; its
    batch appended nothing and it must not go on reading 200.."""
    own = Ownership()
    own.take({0: 99})
    gen = own.generation[0]
    own.pos[0] = 200
    assert own.settle(0, gen, BatchResult(0, 0, 499, False)) == 500
    assert own.pos[0] == 500 and own.overtaken == 1
    # the next reply to a batch read before the re-seek is not acted on again
    assert own.settle(0, gen, BatchResult(0, 0, 499, False)) is None


def test_refused_batch_reads_again_from_the_frontier_even_below():
    own = Ownership()
    own.take({0: 99})
    gen = own.generation[0]
    own.pos[0] = 300
    assert own.settle(0, gen, BatchResult(0, 0, 49, True)) == 50


def test_reply_for_a_partition_no_longer_owned_changes_nothing():
    own = Ownership()
    own.take({0: 99})
    gen = own.generation[0]
    own.drop([0])
    assert own.settle(0, gen, BatchResult(0, 0, 499, True)) is None
    own.take({0: 499})  # assigned back: a new generation, the old reply is stale
    assert own.settle(0, gen, BatchResult(0, 0, 999, False)) is None
    assert own.pos[0] == 500


def test_fresh_drops_replays_and_records_before_the_position():
    recs = [rec(0, o) for o in (5, 6, 7, 8, 6, 7, 8, 9, 12)]
    assert [r.offset for r in fresh(recs, 7)] == [7, 8, 9, 12]
    assert fresh([], 0) == []


def test_caught_up_needs_every_partition_at_its_end():
    assert caught_up({0: 9, 1: 4}, {0: 10, 1: 5})
    assert not caught_up({0: 9, 1: 3}, {0: 10, 1: 5})
    assert not caught_up({0: 9}, {0: 10, 1: 5})
    assert caught_up({0: -1}, {0: 0})  # an empty partition


def test_cli_backfill_takes_the_worker_flags():
    args = build_parser().parse_args(
        ["backfill", "s.yaml", "--follow", "--workers", "--session-timeout", "6000"]
    )
    assert args.workers and args.follow and args.session_timeout == 6000 and args.group is None
    args = build_parser().parse_args(["backfill", "s.yaml", "--group", "g1"])
    assert args.group == "g1" and not args.workers
