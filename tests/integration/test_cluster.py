"""ferry on a Redis Cluster: the same test bodies as on a standalone server, run against a
local 3-primary cluster (redis-server and Valkey), plus what only a cluster has: a migration
whose slot lives on another node than the seed (MOVED), a slot that moves while the mirror
and a writer run (ASK, then MOVED), a primary that dies or fails over to its replica, ACL
users that differ between nodes, and a primary that may evict.

The standalone bodies collected here (backfill, validate, dual-write, cutover, consume,
retention, finish, rollback, preflight and its ACL probe, the roles' ACL lines, the runbook's
full run) take this module's ``redis_client`` and ``make_stream``: a cluster client, and
streams whose config lists the cluster's nodes in ``redis.cluster.addresses``.

The cluster is started once per Redis kind for the whole session (cluster.shared_cluster),
on the first stack of that kind (``redis_side``): one Kafka broker, Tansu in ``make test``.
The failover tests start one of their own (they leave a primary dead).
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
import yaml

import ferry
from ferry.config import parse_config
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.core.validate import validate_stream
from ferry.errors import RedisTargetError
from ferry.live.cutover import run_cutover
from ferry.live.phases import start_dual_write
from ferry.redis.target import connect_redis
from ferry.services.seed import BASE_TS_MS, SeedRecord, payment_events, produce_records

from . import (
    test_acl_roles,
    test_finish,
    test_idempotency,
    test_live,
    test_mirror,
    test_preflight,
    test_primary,
    test_retention,
    test_runbook,
    test_validate,
)
from .cluster import (
    add_replica,
    cluster_client,
    move_slot,
    name_on_node,
    node_client,
    owner_port,
    primary_ports,
    shared_cluster,
    slot_of,
    start_cluster_like,
    wait_for_owner,
)
from .conftest import _counter, stream_factory
from .helpers import Mirror, by_partition, expected_records, read_redis_records, wait_for_mirror

pytestmark = pytest.mark.redis_side


@pytest.fixture(scope="session")
def local_cluster(services, request):
    """The session's cluster of the stack's Redis kind (cluster.shared_cluster)."""
    return shared_cluster(request, services)


@pytest.fixture
def redis_client(local_cluster):
    """Overrides the standalone client: the test bodies read and write through the cluster."""
    client = cluster_client(local_cluster)
    yield client
    client.close()


def _cluster_doc(local_cluster, seeds: list[str] | None = None) -> dict:
    return {"cluster": {"addresses": seeds or local_cluster.addresses}}


@pytest.fixture
def make_stream(services, redis_client, local_cluster, request):
    """conftest's factory, with the stream on the cluster (``redis.cluster.addresses``)."""
    yield from stream_factory(
        services, redis_client, request, _cluster_doc(local_cluster), prefix="c"
    )


# The standalone bodies, collected here with this module's fixtures: on the cluster.
test_backfill_round_trip = test_mirror.test_awkward_records_round_trip
test_backfill_again_writes_nothing = test_mirror.test_finished_backfill_writes_nothing_again
test_per_partition_layout = test_mirror.test_per_partition_layout
test_follow_tails_new_records = test_mirror.test_follow_tails_new_records_until_stopped
test_validate_clean_copy = test_validate.test_clean_copy_passes
test_validate_finds_deleted_entry = test_validate.test_deleted_entry_is_missing
test_dual_write_lands_headers = test_primary.test_records_the_dual_writer_lands_keep_their_headers
test_cutover_rollback_cutover = (
    test_primary.test_redis_primary_then_rollback_then_cutover_again_keeps_every_record_once
)
test_redis_only = test_primary.test_redis_only_writes_no_shadow_and_the_partition_follows_the_key
# dual-write, cutover, consume, retention, finish, rollback: the standalone bodies again
test_dual_writer_exactly_once = (
    test_live.test_dual_writer_lands_every_record_exactly_once_beside_the_mirror
)
test_cutover_bounded_pause = (
    test_live.test_cutover_completes_with_a_bounded_pause_while_writers_keep_sending
)
test_cutover_missing_handshake_aborts = (
    test_live.test_writer_missing_the_handshake_blocks_cutover_and_it_aborts_cleanly
)
test_consume_exactly_once = test_live.test_group_hand_over_is_exactly_once
test_consume_claim_retry_dead_letter = (
    test_live.test_failing_entry_is_claimed_retried_then_dead_lettered
)
test_group_consumer_skips_processed = (
    test_idempotency.test_the_demos_group_consumer_records_keys_and_skips_what_was_processed
)
test_consume_process_watch = (
    test_idempotency.test_an_entry_committed_while_a_claimer_holds_it_is_caught_by_watch
)
test_consume_process_failing_handler = (
    test_idempotency.test_a_failing_handler_writes_nothing_and_is_retried_then_dead_lettered
)
test_consumer_role_idempotent = (
    test_idempotency.test_the_consumer_role_may_run_an_idempotent_consumer
)
test_trim_by_length = test_retention.test_trim_by_length_in_limited_steps
test_trim_by_age = test_retention.test_trim_by_age
test_trim_respects_groups = test_retention.test_trim_stops_at_what_a_group_has_not_acknowledged
test_trim_group_read_nothing = test_retention.test_a_group_that_read_nothing_holds_everything
test_finish_refuses_before_switch = test_finish.test_finish_refuses_before_the_switch
test_finish_direct_record = (
    test_finish.test_a_direct_kafka_record_after_the_switch_refuses_within_the_quiet_window
)
test_finish_group_not_handed_over = test_finish.test_a_group_not_handed_over_refuses_until_it_is
test_finish_cli = test_finish.test_the_cli_refuses_in_one_line_then_finishes
test_rollback_plan_and_act = test_live.test_rollback_plan_then_act_and_writers_follow
test_rollback_step = test_live.test_rollback_step_runs_on_demand
test_preflight_passes = test_preflight.test_preflight_passes_on_a_fresh_target_then_on_ferrys_own
test_preflight_foreign_key = test_preflight.test_preflight_names_a_key_ferry_did_not_write
# ACL users on every node (cluster.EveryNodeAcl): preflight's probe, and each role's line
acl_user = test_acl_roles.acl_user
test_preflight_acl_probe = test_acl_roles.test_preflight_checks_the_user_against_each_roles_list
test_validator_role = test_acl_roles.test_the_validator_role_validates_and_cannot_write


def test_a_migration_on_another_node_than_the_seed_follows_moved(make_stream, local_cluster):
    seed = local_cluster.ports[0]
    name = name_on_node(local_cluster, local_cluster.ports[1], f"moved{next(_counter)}")
    records = list(payment_events(600, 2))
    stream = make_stream(
        records,
        partitions=2,
        name=name,
        redis_doc={"url": local_cluster.url(0), "cluster": {"addresses": [f"127.0.0.1:{seed}"]}},
    )
    key = stream.config.redis.stream
    with node_client(seed) as plain, pytest.raises(redis.exceptions.MovedError):
        plain.xlen(key)  # what a plain client of the seed meets: the slot lives elsewhere

    assert backfill(stream.config, progress=False).records == 600
    client = connect_redis(stream.config)
    try:
        assert client.get_node_from_key(key).port == local_cluster.ports[1]
        entries = read_redis_records(client, key)
    finally:
        client.close()
    assert by_partition(r for _, r in entries) == expected_records(records)
    report = validate_stream(stream.config)
    assert report.ok, report.failures()

    standalone = dict(stream.doc, redis={"url": local_cluster.url(0)})
    with pytest.raises(RedisTargetError, match=r"cluster node .*redis\.cluster\.addresses"):
        backfill(parse_config(standalone, "<standalone>"), progress=False)


def test_an_unreachable_cluster_is_one_line(services, tmp_path):
    from ferry.errors import RedisUnreachableError
    from ferry.services.servers import free_port

    doc = {
        "name": "nowhere",
        "kafka": {"bootstrap_servers": services.kafka_bootstrap, "topic": "nowhere"},
        "redis": {"cluster": {"addresses": [f"127.0.0.1:{free_port()}"]}},
    }
    with pytest.raises(RedisUnreachableError, match=r"cannot reach any node of the Redis Cl"):
        connect_redis(parse_config(doc, "<test>"))


def test_the_slot_moves_while_the_mirror_and_a_dual_writer_run(
    make_stream, redis_client, local_cluster
):
    """The migration's slot moves to another node: while its keys sit on the new node but the
    old one still owns the slot the writer's calls are answered ASK, after it MOVED; the
    writer lands them itself (next to nothing deferred), the mirror follows, nothing lost or doubled,
    then a cutover and Redis-first writes on the new node."""
    stream = make_stream(list(payment_events(1500, 3)), partitions=3)
    keys = migration_keys(stream.config)
    slot = slot_of(keys.state)
    source = owner_port(local_cluster, slot)
    target = next(p for p in local_cluster.ports if p != source)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    mirror = Mirror(stream.config)
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    sent: list[int] = []  # appended from two threads

    def send(n: int, what: bytes) -> None:
        for i in range(n):
            writer.send(what + b" %d" % i, key=b"k%d" % (i % 11))
        sent.append(n)
        writer.flush()

    stop = threading.Event()

    def keep_sending() -> None:  # while the keys move
        while not stop.is_set():
            send(50, b"during")

    def while_asking() -> None:  # the keys are on the target, the source answers ASK
        send(200, b"asked")

    try:
        send(300, b"before")
        during = threading.Thread(target=keep_sending)
        during.start()
        try:
            moved = move_slot(local_cluster, slot, target, between=while_asking)
        finally:
            stop.set()
            during.join(timeout=60)
        assert moved >= 3  # the stream, the state hash, the events stream at least
        assert owner_port(local_cluster, slot) == target
        send(300, b"after")
        # the writer follows ASK and MOVED and lands its records itself: without the redirect
        # retry some 700 of them were left to the mirror; under load a few may still be (the
        # mirror got there first), which the exact check below covers
        assert writer.counts.deferred_to_mirror < 100, writer.counts
        test_primary.wait_for_no_lag(stream.config)
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        send(200, b"primary")
        test_primary.wait_for_no_lag(stream.config)
    finally:
        writer.close()
        mirror.close()
    assert not writer.failed
    assert writer.counts.written_redis_first == 200
    with node_client(target) as plain:
        assert plain.exists(keys.state, stream.config.redis.stream) == 2  # on the new node
    result = test_primary.check_both_sides(stream, redis_client, 3)
    assert result.ok, result
    assert result.kafka == result.redis == 1500 + sum(sent)
    report = validate_stream(stream.config)
    assert report.ok, report.failures()


def test_records_produced_while_the_slot_moves_reach_the_mirror(make_stream, local_cluster):
    """A following mirror alone (no writer) while the slot moves: every record once."""
    stream = make_stream(list(payment_events(500, 2)), partitions=2)
    keys = migration_keys(stream.config)
    slot = slot_of(keys.state)
    target = next(p for p in local_cluster.ports if p != owner_port(local_cluster, slot))
    mirror = Mirror(stream.config)
    late: list[SeedRecord] = []

    def produce(tag: bytes, n: int) -> None:
        batch = [SeedRecord(i % 2, b"m", tag + b" %d" % i, (), BASE_TS_MS + i) for i in range(n)]
        produce_records(stream.bootstrap, stream.config.kafka.topic, batch)
        late.extend(batch)

    try:
        produce(b"before", 300)  # armed and copied before the slot moves
        wait_for_mirror(stream.config, time.monotonic() + 60)

        def while_asking() -> None:  # the mirror writes while the source answers ASK
            produce(b"asked", 300)
            wait_for_mirror(stream.config, time.monotonic() + 60)

        move_slot(local_cluster, slot, target, between=while_asking)
        produce(b"after", 300)
        wait_for_mirror(stream.config, time.monotonic() + 60)
    finally:
        mirror.close()
    client = connect_redis(stream.config)
    try:
        entries = read_redis_records(client, stream.config.redis.stream)
    finally:
        client.close()
    assert by_partition(r for _, r in entries) == expected_records(stream.records + late)


def test_preflight_names_the_primary_where_a_role_lacks_a_command(
    make_stream, acl_user, local_cluster
):
    """ACL users are each node's own: a user who may run TYPE on the migration's node but not
    on another primary (where the slot may move) fails preflight, which names that node."""
    from ferry.runbook.preflight import run_preflight

    stream = make_stream(test_acl_roles.records(10), partitions=2)
    creds = acl_user("mirror", stream.config.name)
    _, config = test_acl_roles.as_user(stream, creds)
    home = owner_port(local_cluster, slot_of("{" + stream.config.name + "}"))
    other = next(p for p in local_cluster.ports if p != home)
    with node_client(other) as plain:
        plain.execute_command("ACL", "SETUSER", creds["user"], "-type")
    checks = {c.name.split(" (")[0]: c for c in run_preflight(config).checks}
    mirror = checks["Redis user may act as the mirror"]
    assert not mirror.ok
    assert mirror.detail == f"lacks type on 127.0.0.1:{other}; see `ferry acl mirror`"
    validator = checks["Redis user may act as the validator"]  # refused by every primary
    assert validator.detail == "lacks xlen, get; see `ferry acl validator`"
    assert backfill(config, progress=False).records == 10  # the home node lets it work today


@pytest.fixture
def runbook_stream(services, redis_client, local_cluster, tmp_path, monkeypatch, request):
    """test_runbook's seeded topic and operator login, with the stream on the cluster (the
    operator's ACL line on every node). The full run takes minutes: on redis-server only."""
    if services.redis_kind != "redis":
        pytest.skip("the full run on a cluster runs once, on redis-server's cluster")
    from ferry.config import load_config
    from ferry.core.follower import stop_follower
    from ferry.redis.acl import ROLES
    from ferry.services.seed import awkward_records, create_topic

    parts = test_runbook.PARTITIONS
    name = "rbc-" + request.node.name.split("[")[0][-16:].replace("_", "-")
    name += f"-{services.redis_kind}"
    create_topic(services.kafka_bootstrap, name, parts)
    produce_records(services.kafka_bootstrap, name, awkward_records(parts, big_value_bytes=50_000))
    produce_records(services.kafka_bootstrap, name, payment_events(6000, parts - 1))
    user = f"ferry-{name}"
    line = ROLES["operator"].setuser_line(user, name)
    redis_client.execute_command(*line.replace(">PASSWORD", f">{test_runbook.SENTINEL}").split())
    monkeypatch.setenv("FERRY_TEST_REDIS_USER", user)
    monkeypatch.setenv("FERRY_TEST_REDIS_PASSWORD", test_runbook.SENTINEL)
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "kafka": {"bootstrap_servers": services.kafka_bootstrap, "topic": name},
                "redis": {
                    **_cluster_doc(local_cluster),
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
    for key in redis_client.scan_iter(match=f"*{{{name}}}*"):
        redis_client.delete(key)


# ferry run, every step with live traffic, as the operator's ACL user, on the cluster
test_runbook_full_run = test_runbook.test_full_run_passes_every_gate_and_archives_verifiably


FAILOVER_NODE_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def failover_cluster(services, tmp_path_factory):
    """A cluster of its own for the failover test (it leaves a primary dead), and the pids of
    the replicas the test adds, stopped with it."""
    from ferry.services.servers import _terminate

    if services.kafka_kind != "tansu":
        pytest.skip("the cluster tests run on one broker, Tansu (stack has none)")
    folder = tmp_path_factory.mktemp(f"failover-{services.redis_kind}")
    local = start_cluster_like(services, folder)
    for port in local.ports:  # a dead primary is found in 1 s, not 5: a shorter test
        with node_client(port) as plain:
            plain.config_set("cluster-node-timeout", FAILOVER_NODE_TIMEOUT_MS)
    added: dict[int, int] = {}  # port -> pid of each replica a test added
    yield local, added
    local.stop()
    for pid in added.values():
        _terminate(pid)


def test_a_failover_in_redis_primary_loses_no_redis_first_write(
    failover_cluster, services, request, tmp_path
):
    """In redis-primary Redis is the source of truth: the replica of the migration's primary
    takes over by CLUSTER FAILOVER (the primary pauses writes until the replica has them) while
    a writer appends Redis-first; the writer follows the new primary, and every record it was
    told was written is in the stream once, with its Kafka shadow."""
    local, added = failover_cluster
    client = cluster_client(local)
    factory = stream_factory(services, client, request, _cluster_doc(local), prefix="g")
    make = next(factory)
    writer = mirror = None
    stop = threading.Event()
    sent: list[int] = []
    try:
        stream = make(list(payment_events(300, 2)), partitions=2)
        keys = migration_keys(stream.config)
        slot = slot_of(keys.state)
        primary = owner_port(local, slot)
        replica, pid = add_replica(local, primary, tmp_path / "replica")
        added[replica] = pid
        backfill(stream.config, progress=False)
        start_dual_write(client, keys, "test")
        mirror = Mirror(stream.config)
        writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
        run_cutover(stream.config, pause_bound_s=3.0, attempts=3)

        def keep_sending() -> None:
            while not stop.is_set():
                for i in range(20):
                    writer.send(b"primary %d" % i, key=b"k%d" % (i % 5))
                sent.append(20)
                stop.wait(0.01)

        during = threading.Thread(target=keep_sending)
        during.start()
        try:
            stop.wait(0.5)  # some Redis-first traffic before the failover
            with node_client(replica) as plain:
                plain.execute_command("CLUSTER FAILOVER")
            wait_for_owner(local, slot, replica)
            stop.wait(0.5)  # and after it
        finally:
            stop.set()
            during.join(timeout=60)
        writer.flush()
        test_primary.wait_for_no_lag(stream.config)
    finally:
        stop.set()
        if writer is not None:
            writer.close()
        if mirror is not None:
            mirror.close()
    assert not writer.failed and writer.counts.failures == 0, writer.counts
    assert writer.counts.written_redis_first == sum(sent) > 0
    with node_client(replica) as plain:
        assert plain.exists(keys.state, stream.config.redis.stream) == 2  # the new primary
    result = test_primary.check_both_sides(stream, client, 2)
    assert result.ok, result
    assert result.kafka == result.redis == 300 + sum(sent)
    report = validate_stream(stream.config)
    assert report.ok, report.failures()
    next(factory, None)
    client.close()


def test_the_migrations_primary_dies_and_its_replica_takes_over_nothing_lost(
    failover_cluster, services, request, tmp_path
):
    """kill -9 of the primary that owns the migration's slot, while the mirror follows and a
    writer dual-writes: the cluster is down until the replica is elected (CLUSTERDOWN, refused
    connections, then MOVED to the replica); both wait it out, and afterwards every Kafka
    record is in the stream once, in order. The replica may have missed the last writes the
    primary acknowledged (replication is asynchronous): their entries and the frontier go
    together (one script), so the mirror copies them again from Kafka."""
    import os
    import signal

    local, added = failover_cluster
    client = cluster_client(local)
    factory = stream_factory(services, client, request, _cluster_doc(local), prefix="f")
    make = next(factory)
    writer = mirror = None
    # a primary with no replica yet (the failover test before this one made one a replica)
    port = next(p for p in local.ports if p in primary_ports(local))
    try:
        name = name_on_node(local, port, f"dies{next(_counter)}")
        stream = make(list(payment_events(600, 2)), partitions=2, name=name)
        keys = migration_keys(stream.config)
        slot = slot_of(keys.state)
        primary = owner_port(local, slot)
        replica, pid = add_replica(local, primary, tmp_path / "replica")
        added[replica] = pid
        backfill(stream.config, progress=False)
        start_dual_write(client, keys, "test")
        mirror = Mirror(stream.config)
        writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
        sent = 0
        for what, n in ((b"before", 200), (b"while down", 300)):
            for i in range(n):
                writer.send(what + b" %d" % i, key=b"k%d" % (i % 7))
            sent += n
            if what == b"before":
                writer.flush()
                pids = {**dict(zip(local.ports, local.pids, strict=True)), **added}
                os.kill(pids[primary], signal.SIGKILL)  # an original primary or a replica
        wait_for_owner(local, slot, replica)
        for i in range(300):
            writer.send(b"after %d" % i, key=b"k%d" % (i % 7))
        sent += 300
        writer.flush()
        test_primary.wait_for_no_lag(stream.config)
    finally:
        if writer is not None:
            writer.close()
        if mirror is not None:
            mirror.close()  # raises if the following mirror died
    assert not writer.failed and writer.counts.failures == 0, writer.counts
    assert writer.counts.delivered == sent
    with node_client(replica) as plain:
        assert plain.exists(keys.state, stream.config.redis.stream) == 2  # on the new primary
    result = test_primary.check_both_sides(stream, client, 2)
    assert result.ok, result
    assert result.kafka == result.redis == 600 + sent
    report = validate_stream(stream.config)
    assert report.ok, report.failures()
    next(factory, None)  # deletes the stream's keys
    client.close()


def test_preflight_names_a_primary_that_may_evict(make_stream, local_cluster):
    """noeviction is checked on every primary (a slot may move to any): one that may evict,
    though it does not hold the migration today, fails preflight by name."""
    from ferry.runbook.preflight import run_preflight

    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    home = owner_port(local_cluster, slot_of("{" + stream.config.name + "}"))
    other = next(p for p in local_cluster.ports if p != home)
    with node_client(other) as plain:
        plain.config_set("maxmemory-policy", "allkeys-lru")
        try:
            checks = {c.name: c for c in run_preflight(stream.config).checks}
        finally:
            plain.config_set("maxmemory-policy", "noeviction")
    check = checks["maxmemory-policy is noeviction"]
    assert not check.ok and check.detail == f"127.0.0.1:{other}: allkeys-lru"


@pytest.mark.parametrize("layout", ["merged", "spread"])
def test_the_mirror_and_writer_lines_are_enough_on_the_cluster(
    make_stream, acl_user, redis_client, layout
):
    """Each role as a user holding exactly its line on every node: the mirror copies, the
    writer writes in dual-write and Redis-first; the cluster client's own commands (CLUSTER
    SLOTS, COMMAND, COMMAND GETKEYS for XREAD) are in the lines, and ACL LOG shows no denial."""
    from ferry.live.phases import DRAINING, DUAL_WRITE, REDIS_PRIMARY, set_phase

    stream = make_stream(test_acl_roles.records(200), partitions=2, layout=layout)
    keys = migration_keys(stream.config)
    redis_client.acl_log_reset()
    mirror_creds = acl_user("mirror", stream.config.name)
    writer_creds = acl_user("writer", stream.config.name)
    _, as_mirror = test_acl_roles.as_user(stream, mirror_creds)
    _, as_writer = test_acl_roles.as_user(stream, writer_creds)
    assert backfill(as_mirror, progress=False).records == 200
    set_phase(redis_client, keys, DUAL_WRITE)
    writer = ferry.DualWriter(as_writer, poll_interval_s=0.02)
    try:
        for i in range(40):
            writer.send(b"dual %d" % i, key=b"k", partition=i % 2)
        writer.flush()
        set_phase(redis_client, keys, DRAINING)
        set_phase(redis_client, keys, REDIS_PRIMARY)
        test_acl_roles.wait_until(lambda: writer.phase == REDIS_PRIMARY, "the phase", 10)
        for i in range(30):
            writer.send(b"first %d" % i, key=b"k", partition=i % 2)
        writer.flush()
    finally:
        writer.close()
    assert writer.counts.failures == 0 and not writer.failed, writer.failed[:3]
    assert writer.counts.written_redis == 40 and writer.counts.written_redis_first == 30
    assert sum(redis_client.xlen(k) for k in keys.streams([0, 1])) == 270
    users = {mirror_creds["user"], writer_creds["user"]}
    denied = [
        e
        for e in redis_client.acl_log()
        if e["username"] in users and e["object"] != "client|setinfo"
    ]
    assert denied == [], denied
