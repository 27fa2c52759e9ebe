"""A local 3-primary Redis Cluster for the integration tests, and what they do to it: find a
name whose slot lives on a given node, move a slot to another node while ferry runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from ferry.errors import ServiceError
from ferry.services.servers import LocalCluster, Services, start_redis_cluster

SLOT_MOVE_TIMEOUT_S = 30.0


def start_cluster_like(services: Services, folder: Path) -> LocalCluster:
    """A 3-primary cluster of the stack's Redis kind (the same binary the stack runs)."""
    return start_redis_cluster(folder, server=(services.redis_kind, services.redis_binary))


_SHARED: dict[str, LocalCluster] = {}


def shared_cluster(request, services: Services) -> LocalCluster:
    """The session's 3-primary cluster of the stack's Redis kind, started by the first test
    that asks and stopped when the session ends: for tests that only use their own
    migrations' keys (slots may move). A test that kills or reshapes nodes starts its own.
    Skipped on stacks whose broker is not Tansu: the cluster tests run on one broker."""
    import pytest

    if services.kafka_kind != "tansu":
        pytest.skip("the cluster tests run on one broker, Tansu (stack has none)")
    kind = services.redis_kind
    if kind not in _SHARED:
        folder = request.getfixturevalue("tmp_path_factory").mktemp(f"cluster-{kind}")
        _SHARED[kind] = start_cluster_like(services, folder)
        request.config.add_cleanup(lambda: _SHARED.pop(kind).stop())
    return _SHARED[kind]


# ACL users are each node's own: a test's ACL SETUSER, DELUSER and LOG go to every node (an
# operator runs them with ``redis-cli --cluster call``), and ACL LOG lists every node's entries
_EVERY_NODE = ("ACL SETUSER", "ACL DELUSER", "ACL LOG")


def _merged(command: str, replies: dict) -> object:
    values = list(replies.values())
    if all(isinstance(v, list) for v in values):
        return [entry for v in values for entry in v]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return max(values)
    return all(values)


class EveryNodeAcl(RedisCluster):
    """The tests' cluster client: as redis-py's, with the ACL commands sent to every node."""

    COMMAND_FLAGS = {**RedisCluster.COMMAND_FLAGS, **dict.fromkeys(_EVERY_NODE, "all")}
    RESULT_CALLBACKS = {**RedisCluster.RESULT_CALLBACKS, **dict.fromkeys(_EVERY_NODE, _merged)}


def cluster_client(local: LocalCluster, seed: int | None = None) -> RedisCluster:
    """A cluster client seeded from every node, or from node ``seed`` alone."""
    ports = local.ports if seed is None else (local.ports[seed],)
    return EveryNodeAcl(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports])


def node_client(port: int) -> redis.Redis:
    """A plain client of one node (it answers MOVED for the others' slots)."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)


def slot_of(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode())


def owner_port(local: LocalCluster, slot: int) -> int:
    """The port of the node that owns ``slot``, as the first live node's CLUSTER SLOTS says
    (a failover test leaves a node dead)."""
    for port in local.ports:
        with node_client(port) as client:
            try:
                owner = _owner_seen_by(client, slot)
            except redis.ConnectionError:
                continue
        if owner is None:
            break
        return owner
    raise AssertionError(f"slot {slot} has no owner")


def primary_ports(local: LocalCluster) -> set[int]:
    """The ports of the nodes that own slots now, as the first live node sees them."""
    for port in local.ports:
        with node_client(port) as client:
            try:
                slots = client.execute_command("CLUSTER SLOTS")
            except redis.ConnectionError:
                continue
        return {int(primary[1]) for _, _, primary, *_ in slots}
    raise AssertionError("no node of the cluster answers")


def name_on_node(local: LocalCluster, port: int, prefix: str) -> str:
    """A migration name ``prefix-N`` whose hash tag ``{name}`` lives on the node at ``port``."""
    for n in range(10_000):
        name = f"{prefix}-{n}"
        if owner_port(local, slot_of("{" + name + "}")) == port:
            return name
    raise AssertionError(f"no name {prefix}-N hashes to the node at port {port}")


def _node_id(client: redis.Redis) -> str:
    node_id = client.execute_command("CLUSTER MYID")
    return node_id.decode() if isinstance(node_id, bytes) else str(node_id)


def move_slot(
    local: LocalCluster,
    slot: int,
    to_port: int,
    keys_per_call: int = 10,
    between: Callable[[], object] | None = None,
) -> int:
    """Move ``slot`` to the node at ``to_port`` as ``redis-cli --cluster reshard`` does:
    IMPORTING on the target, MIGRATING on the source, MIGRATE the keys ``keys_per_call`` at a
    time (redis-cli's pipeline is 10), then SETSLOT NODE everywhere; returns once every node
    says the target owns it. ``between`` runs after the keys moved and before the slot is
    handed over: the source answers ASK then. Returns the number of keys moved."""
    from_port = owner_port(local, slot)
    assert from_port != to_port, "the slot is already there"
    source, target = node_client(from_port), node_client(to_port)
    others = [node_client(p) for p in local.ports if p not in (from_port, to_port)]
    try:
        source_id, target_id = _node_id(source), _node_id(target)
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, keys_per_call):
            source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 10_000, "KEYS", *keys)
            moved += len(keys)
        if between is not None:
            between()
        for client in (target, source, *others):
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        deadline = time.monotonic() + SLOT_MOVE_TIMEOUT_S
        while not all(_owner_seen_by(c, slot) == to_port for c in (source, target, *others)):
            if time.monotonic() > deadline:
                raise ServiceError(f"the nodes did not agree on slot {slot}'s move in time")
            time.sleep(0.05)  # polling the nodes' slot maps, bounded by the deadline
        return moved
    finally:
        for client in (source, target, *others):
            client.close()


def _owner_seen_by(client: redis.Redis, slot: int) -> int | None:
    for first, last, primary, *_ in client.execute_command("CLUSTER SLOTS"):
        if first <= slot <= last:
            return int(primary[1])
    return None


REPLICA_READY_TIMEOUT_S = 60.0


def add_replica(local: LocalCluster, primary_port: int, folder: Path) -> tuple[int, int]:
    """Start one more cluster-enabled server of the cluster's kind and make it a replica of
    the primary at ``primary_port`` (CLUSTER MEET, CLUSTER REPLICATE); returns (port, pid)
    once the replica's link to its primary is up and every node knows it as a replica."""
    from ferry.services.servers import _redis_args, _spawn, _wait_ready, free_port, probe_redis

    folder.mkdir(parents=True, exist_ok=True)
    port, bus = free_port(), free_port()
    args = _redis_args(local.binary, port, folder)
    args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    args += ["--cluster-port", str(bus), "--cluster-node-timeout", "1000"]
    log = folder / "redis.log"
    proc = _spawn(args, log)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready(f"{local.kind} replica", proc, lambda: probe_redis(url), log)
    with node_client(port) as replica, node_client(primary_port) as primary:
        primary_id = _node_id(primary)
        replica.execute_command("CLUSTER MEET", "127.0.0.1", primary_port, _bus_port(primary))
        deadline = time.monotonic() + REPLICA_READY_TIMEOUT_S
        while True:  # the replica must know the primary before it can follow it
            try:
                replica.execute_command("CLUSTER REPLICATE", primary_id)
                break
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the handshake, bounded by the deadline
        ports = (*local.ports, port)
        while not (
            replica.info("replication").get("master_link_status") == "up"
            and all(_knows_replica(p, port) for p in ports)
        ):
            if time.monotonic() > deadline:
                raise ServiceError(f"the replica at {port} did not come up within the deadline")
            time.sleep(0.05)  # replication handshake and gossip, bounded by the deadline
    return port, proc.pid


def _bus_port(client: redis.Redis) -> int:
    return int(client.config_get("cluster-port")["cluster-port"])


def _knows_replica(port: int, replica_port: int) -> bool:
    with node_client(port) as client:
        try:
            nodes = client.execute_command("CLUSTER NODES")
        except redis.ConnectionError:
            return True  # a node killed by an earlier test has no say
        node = nodes.get(f"127.0.0.1:{replica_port}")
    return node is not None and "slave" in node["flags"] and "fail" not in node["flags"]


def wait_for_owner(local: LocalCluster, slot: int, port: int, timeout_s: float = 60.0) -> None:
    """Until the surviving nodes' slot maps name ``port`` as ``slot``'s primary."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = []
        for p in local.ports:
            try:
                with node_client(p) as client:
                    seen.append(_owner_seen_by(client, slot))
            except redis.ConnectionError:
                continue  # the dead one
        if seen and all(s == port for s in seen):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"slot {slot} did not fail over to {port} in time: {seen}")
        time.sleep(0.05)  # the election and gossip, bounded by the deadline
