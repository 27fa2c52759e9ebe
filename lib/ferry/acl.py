"""Least privilege: the Redis commands each role of ferry needs, in one place.

The README's ``ACL SETUSER`` lines are made from these lists (``ferry acl``), and the tests
run each role as an ACL user holding exactly its line. Commands called from ferry's Lua
scripts count: Redis checks them against the caller's ACL too.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every connection: redis-py greets with HELLO. (It also names itself with CLIENT SETINFO,
# which Redis 7.0 lacks; redis-py ignores a refusal, so the lines leave it out.)
CONNECT = ("ping", "hello")


@dataclass(frozen=True)
class Role:
    name: str
    purpose: str
    commands: tuple[str, ...]

    def setuser_line(self, user: str, name: str) -> str:
        """The ``ACL SETUSER`` line for ``user`` playing this role on migration ``name``:
        only its commands, only the migration's keys (every key carries ``{name}``)."""
        allowed = " ".join(f"+{c}" for c in (*CONNECT, *self.commands))
        return (
            f"ACL SETUSER {user} on >PASSWORD resetkeys ~*{{{name}}}* resetchannels -@all {allowed}"
        )


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "mirror",
            "ferry backfill, one-shot and --follow (arming, the ingest script, heartbeat)",
            (
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
            ),
        ),
        Role(
            "validator",
            "ferry validate and the runbook's read-only checks",
            ("info", "hget", "hgetall", "exists", "xrange", "xrevrange", "xlen", "get"),
        ),
    )
}


def setuser_line(role: str, user: str, name: str) -> str:
    """``ACL SETUSER`` for a role by name; unknown roles are named in the error."""
    from ferry.errors import ConfigError

    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return ROLES[role].setuser_line(user, name)
