"""Preflight (step 01) on the target as configured: every check passes on a fresh target and
on one ferry already wrote, the role probes run nothing, and a key ferry did not write is
named. test_cluster.py runs the same bodies on a Redis Cluster."""

from __future__ import annotations

from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.redis.acl import ROLES
from ferry.redis.target import is_cluster_client
from ferry.runbook.preflight import run_preflight
from ferry.services.seed import payment_events


def checks_of(config) -> dict:
    result = run_preflight(config)
    return {c.name.split(" (")[0]: c for c in result.checks}, result.facts


def test_preflight_passes_on_a_fresh_target_then_on_ferrys_own(make_stream, redis_client):
    stream = make_stream(list(payment_events(200, 2)), partitions=2)
    cluster = is_cluster_client(redis_client)
    checks, facts = checks_of(stream.config)
    assert [name for name, c in checks.items() if not c.ok] == []
    assert facts["cluster"] is cluster
    assert checks["cluster mode"].detail == ("cluster" if cluster else "standalone")
    primaries = len(redis_client.get_primaries()) if cluster else 1
    for role in ROLES.values():  # the default user may do everything, on every primary
        assert checks[f"Redis user may act as the {role.name}"].detail == (
            f"{len(role.commands)} commands permitted"
            + (f" on each of {primaries} primaries" if cluster else "")
        )
    keys = migration_keys(stream.config)
    if cluster:  # every primary is checked, and each partition's stream is placed
        assert checks["maxmemory-policy is noeviction"].detail == (
            f"noeviction on each of {primaries} primaries"
        )
        nodes = [row["redis node"] for row in run_preflight(stream.config).partitions]
        assert len(nodes) == 2
        for p, node in enumerate(nodes):
            owner = redis_client.get_node_from_key(keys.stream_for(p))
            assert node == f"{owner.host}:{owner.port}"
    key = stream.config.redis.stream
    assert checks["target stream key is free or ferry's own"].detail == f"{key} is free"
    # the probes queue commands inside MULTI and discard them: nothing was written
    assert redis_client.exists(f"{{{stream.config.name}}}:ferry:preflight", key) == 0

    backfill(stream.config, progress=False)
    checks, _ = checks_of(stream.config)
    assert [name for name, c in checks.items() if not c.ok] == []
    assert checks["target stream key is free or ferry's own"].detail == (
        f"{key} is ferry's (resumable)"
    )
    assert redis_client.xlen(key) == 200


def test_preflight_names_a_key_ferry_did_not_write(make_stream, redis_client):
    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    key = migration_keys(stream.config).stream
    redis_client.set(key, "someone else's")
    checks, _ = checks_of(stream.config)
    found = checks["target stream key is free or ferry's own"]
    assert not found.ok and found.detail == f"{key} holds a string that ferry did not write"
