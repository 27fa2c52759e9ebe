"""Least privilege: the Redis commands each role of ferry needs, in one place.

The README's ``ACL SETUSER`` lines are made from these lists (``ferry acl``), and the tests
run each role as an ACL user holding exactly its line. Commands called from ferry's Lua
scripts count: Redis checks them against the caller's ACL too.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every role: redis-py greets with HELLO (it also names itself with CLIENT SETINFO, which
# Redis 7.0 lacks; redis-py ignores a refusal, so the lines leave it out), and preflight
# tries a role's commands inside MULTI ... DISCARD, which runs none of them.
CONNECT = ("ping", "hello", "multi", "discard")
# Every role on a Redis Cluster: redis-py's cluster client learns the slot map (CLUSTER SLOTS)
# and where each command's keys are (COMMAND; COMMAND GETKEYS for XREAD and XREADGROUP) from
# the servers. Both only describe; a standalone server answers CLUSTER SLOTS with an error.
CLUSTER_CLIENT = ("cluster|slots", "command")


@dataclass(frozen=True)
class Role:
    name: str
    purpose: str
    commands: tuple[str, ...]

    def setuser_line(self, user: str, name: str) -> str:
        """The ``ACL SETUSER`` line for ``user`` playing this role on migration ``name``:
        only its commands, only the migration's keys (every key carries ``{name}``, or in the
        spread layout ``{name:<partition>}``; names hold no ``:``, so no other migration's)."""
        allowed = " ".join(f"+{c}" for c in (*CONNECT, *self.commands))
        keys = f"~*{{{name}}}* ~*{{{name}:*}}*"
        return f"ACL SETUSER {user} on >PASSWORD resetkeys {keys} resetchannels -@all {allowed}"


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "mirror",
            "ferry backfill, one-shot and --follow (arming, the ingest script, heartbeat)",
            (
                *CLUSTER_CLIENT,
                "info",  # server kind and version, persistence, run_id after a restart
                "config|get",  # maxmemory-policy and size limits; optional, defaults if denied
                "bgrewriteaof",  # only after a server restart with an AOF (see README)
                "evalsha",
                "script|load",
                "exists",
                "type",  # arm.lua: are the stream keys free or ferry's
                "hget",
                "hgetall",
                "hset",
                "hsetnx",
                "hincrby",
                "xadd",
                "xrange",  # ingest.lua: a shadow's entry
                "xrevrange",  # each partition's last entry before resuming
                "set",  # the --follow heartbeat
                "time",  # ingest.lua: the copy time that bounds entry IDs
            ),
        ),
        Role(
            "validator",
            "ferry validate and the runbook's read-only checks",
            (
                *CLUSTER_CLIENT,
                "info",
                "hget",
                "hgetall",
                "exists",
                "xrange",
                "xrevrange",
                "xlen",
                "get",
            ),
        ),
        Role(
            "writer",
            "DualWriter in every phase: dual-write, Redis-first with shadows, the registry",
            (
                *CLUSTER_CLIENT,
                "evalsha",
                "script|load",
                "script|exists",
                "hget",
                "hmget",
                "hset",
                "hdel",
                "hincrby",
                "xadd",
                "time",  # ingest.lua and primary.lua: the copy time that bounds entry IDs
                "xread",  # the events stream: a blocking read wakes the writer on a phase change
                "xrevrange",  # ... from its last entry
            ),
        ),
        Role(
            "consumer",
            "the consumer helper on a handed-over group: read, acknowledge, claim, dead-letter",
            (
                *CLUSTER_CLIENT,
                "exec",  # acknowledgement and dead-lettering in one MULTI
                "hgetall",
                "hdel",
                "hincrby",
                "smembers",
                "xreadgroup",
                "xack",
                "xautoclaim",
                "xrange",
                "xadd",  # the dead-letter stream
                "mget",  # idempotency keys: which of a batch were processed
                "get",
                "set",  # ... recorded with SET NX EX in the MULTI of the XACK
                "watch",  # process(): the key, so a concurrent commit aborts ours
                "unwatch",
            ),
        ),
    )
}

# The runbook operator runs every step: it acts as each role above, and changes phases,
# hands groups over, trims, and reads what sizing and evidence need.
OPERATOR_EXTRA = (
    "xgroup",
    "xtrim",
    "xinfo",
    "xpending",  # trim.lua: a group's oldest unacknowledged entry bounds retention
    "xlen",
    "memory|usage",
    "wait",
    "del",
    "sadd",
    "scan",
)
ROLES["operator"] = Role(
    "operator",
    "the runbook: every step, phase changes, cutover, hand-over, retention, evidence",
    tuple(dict.fromkeys(c for r in list(ROLES.values()) for c in r.commands)) + OPERATOR_EXTRA,
)


# How preflight tries a command without running it: queued inside MULTI (Redis checks the
# ACL, keys included, when it queues) and then discarded. "{key}" is a scratch key of the
# migration.
PROBES: dict[str, tuple[str, ...]] = {
    "info": ("INFO", "server"),
    "config|get": ("CONFIG", "GET", "maxmemory-policy"),
    "bgrewriteaof": ("BGREWRITEAOF",),
    "evalsha": ("EVALSHA", "0" * 40, "1", "{key}"),
    "script|load": ("SCRIPT", "LOAD", "return 1"),
    "exists": ("EXISTS", "{key}"),
    "type": ("TYPE", "{key}"),
    "hget": ("HGET", "{key}", "f"),
    "hgetall": ("HGETALL", "{key}"),
    "hset": ("HSET", "{key}", "f", "v"),
    "hsetnx": ("HSETNX", "{key}", "f", "v"),
    "hincrby": ("HINCRBY", "{key}", "f", "1"),
    "xadd": ("XADD", "{key}", "*", "f", "v"),
    "xrange": ("XRANGE", "{key}", "-", "+", "COUNT", "1"),
    "xrevrange": ("XREVRANGE", "{key}", "+", "-", "COUNT", "1"),
    "xlen": ("XLEN", "{key}"),
    "set": ("SET", "{key}", "v", "EX", "1"),
    "get": ("GET", "{key}"),
    "script|exists": ("SCRIPT", "EXISTS", "0" * 40),
    "hmget": ("HMGET", "{key}", "f"),
    "mget": ("MGET", "{key}"),
    "hdel": ("HDEL", "{key}", "f"),
    "smembers": ("SMEMBERS", "{key}"),
    "xread": ("XREAD", "COUNT", "1", "STREAMS", "{key}", "0"),
    "xreadgroup": ("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "{key}", ">"),
    "xack": ("XACK", "{key}", "g", "0-1"),
    "xautoclaim": ("XAUTOCLAIM", "{key}", "g", "c", "0", "0-0", "COUNT", "1"),
    "time": ("TIME",),
    "cluster|slots": ("CLUSTER", "SLOTS"),
    "command": ("COMMAND", "COUNT"),
    # no probe for EXEC: queued inside MULTI it would run the transaction; none for WATCH and
    # UNWATCH either, which Redis refuses inside MULTI
}


def denied_commands(client, commands: list[str], key: str) -> dict[str, str]:
    """Which of ``commands`` the connection's ACL user may not run on ``key``: each is
    queued inside MULTI (where Redis checks permissions) and the transaction discarded, so
    nothing runs. Returns command -> Redis' refusal (on a cluster, the first node's that
    refused, named)."""
    denied: dict[str, str] = {}
    for where, refused in denied_by_node(client, commands, key).items():
        for command, refusal in refused.items():
            denied.setdefault(command, f"{refusal} (on {where})" if where else refusal)
    return denied


def denied_by_node(client, commands: list[str], key: str) -> dict[str, dict[str, str]]:
    """:func:`denied_commands` per server: ``{"": refusals}`` for a standalone server, and on
    a Redis Cluster ``{"host:port": refusals}`` for every primary, since ACL users are each
    node's own and a slot may move to any primary. A primary that does not own ``key``'s slot
    checks the ACL before it answers MOVED, so the probe means the same on every node."""
    from ferry.redis.target import is_cluster_client

    if not is_cluster_client(client):
        return {"": _denied_on(client, commands, key)}
    return {
        f"{node.host}:{node.port}": _denied_on(client.get_redis_connection(node), commands, key)
        for node in client.get_primaries()
    }


def _denied_on(client, commands: list[str], key: str) -> dict[str, str]:
    """The probe on one server: a standalone client, or one cluster node's."""
    import redis

    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except redis.AuthenticationError as exc:  # a cluster node without the user
        return dict.fromkeys(commands, f"cannot log in: {exc}")
    denied = {}
    try:
        conn.send_command("MULTI")
        conn.read_response()
        for command in (c for c in commands if c in PROBES):
            conn.send_command(*(a.format(key=key) for a in PROBES[command]))
            try:
                conn.read_response()
            except redis.ResponseError as exc:  # MOVED (another node's slot) is no refusal
                if "NOPERM" in str(exc) or "no permissions" in str(exc):
                    denied[command] = " ".join(str(exc).split())
        conn.send_command("DISCARD")
        conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return denied


def setuser_line(role: str, user: str, name: str) -> str:
    """``ACL SETUSER`` for a role by name; unknown roles are named in the error."""
    from ferry.errors import ConfigError

    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return ROLES[role].setuser_line(user, name)
