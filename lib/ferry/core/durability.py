"""Resuming only from a consistent state, after whatever the Redis server went through.

Two checks before the mirror writes (at start, and again after every Redis outage):

* **A restart is settled first.** Redis replays each ingest batch from its append-only file
  as one MULTI/EXEC transaction. A crash that cuts the file inside a transaction leaves it
  open: the next load drops it (stream and frontier agree), but the file still ends with an
  unclosed MULTI, and the load after that merges it with whatever was appended since, which
  doubles records. So when the server's ``run_id`` differs from the one ferry recorded when it
  last wrote, and the server keeps an AOF, ferry rewrites the AOF (``BGREWRITEAOF``) and waits
  for it to finish before it writes again; the rewrite is built from memory, which holds no
  half transaction.
* **No entry lies beyond its partition's frontier.** Each partition's last entry must carry
  an offset at or below the frontier (equal unless markers, aborted or compacted offsets,
  or shadows were stepped over after it). An entry beyond it means entries were kept while
  the frontier's update was lost: a rerun would copy them again.
"""

from __future__ import annotations

import time

import redis

from ferry.core.ingest import MigrationKeys
from ferry.errors import IntegrityError, RedisTargetError, ReplicationError

RUN_ID_FIELD = "server_run_id"
REWRITE_WAIT_S = 600.0
TAIL_SCAN = 1000  # merged layout: entries read back from the end to find each partition's last


def settle_restart(client: redis.Redis, keys: MigrationKeys) -> bool:
    """Rewrite the AOF if the server restarted since ferry last wrote; record its run_id.
    True when a rewrite was needed."""
    run_id = client.info("server")["run_id"]
    recorded = client.hget(keys.state, RUN_ID_FIELD)
    if recorded is None:  # not armed yet (arming records it), or armed by an older ferry
        if client.exists(keys.state):
            client.hset(keys.state, RUN_ID_FIELD, run_id)
        return False
    if recorded.decode() == run_id:
        return False
    rewrote = False
    if int(client.info("persistence").get("aof_enabled", 0)):
        rewrite_aof(client)
        rewrote = True
    client.hset(keys.state, RUN_ID_FIELD, run_id)
    return rewrote


def rewrite_aof(client: redis.Redis, wait_s: float = REWRITE_WAIT_S) -> None:
    """BGREWRITEAOF and wait until it has finished well."""
    try:
        client.bgrewriteaof()
    except redis.exceptions.NoPermissionError as exc:
        raise RedisTargetError(
            "Redis restarted since ferry last wrote, and its append-only file may end inside "
            "a half-written transaction; ferry's ACL user may not run BGREWRITEAOF: run it as "
            f"an administrator, wait for it to finish, then rerun ({exc})"
        ) from exc
    except redis.ResponseError as exc:
        if "already in progress" not in str(exc):
            raise
    deadline = time.monotonic() + wait_s
    while True:
        info = client.info("persistence")
        busy = int(info.get("aof_rewrite_in_progress", 0)) or int(
            info.get("aof_rewrite_scheduled", 0)
        )
        if not busy:
            break
        if time.monotonic() > deadline:
            raise RedisTargetError(
                f"the AOF rewrite after a Redis restart did not finish within {wait_s:.0f}s"
            )
        time.sleep(0.05)  # polling the server's own progress flag, bounded above
    status = info.get("aof_last_bgrewrite_status", "ok")
    if status != "ok":
        raise RedisTargetError(
            f"the AOF rewrite after a Redis restart failed (aof_last_bgrewrite_status={status}); "
            "see the server's log, fix it, then rerun"
        )


def check_stream_tail(client: redis.Redis, keys: MigrationKeys, frontiers: dict[int, int]) -> None:
    """Refuse to resume when a partition's last entry lies beyond its frontier."""
    partitions = sorted(frontiers)
    if not partitions:  # not armed: arming checks the keys are free or ferry's
        return
    seen: set[int] = set()
    for stream in keys.streams(partitions):
        count = TAIL_SCAN if keys.layout == "merged" else 1
        for entry_id, fields in client.xrevrange(stream, count=count):
            p = int(fields.get(b"p", -1))
            if p in seen or p not in frontiers:
                continue
            seen.add(p)
            offset = fields.get(b"o") or b""
            if (
                offset
                and int(offset) > frontiers[p]
                and int(offset) > _frontier_now(client, keys, p)
            ):
                # (read again: a dual-writer may have moved it on since the caller read it;
                # an entry and its frontier are written in one script, so a frontier read
                # after the entry covers it unless the pair was really broken)
                raise IntegrityError(
                    f"partition {p}: the last entry of {stream} ({entry_id.decode()}) holds "
                    f"offset {int(offset)} but the frontier is {frontiers[p]}: Redis kept entries "
                    "whose frontier update it lost (a damaged or hand-edited append-only file?). "
                    "Writing on would copy them again. Restore the keys from a good backup, or "
                    "delete the migration's keys and copy again from the start"
                )
            if len(seen) == len(partitions):
                return


def _frontier_now(client: redis.Redis, keys: MigrationKeys, partition: int) -> int:
    value = client.hget(keys.partition_state(partition), f"frontier:{partition}")
    return int(value) if value is not None else -1


REPLICA_WAIT_MS = 2000


def wait_for_replicas(client: redis.Redis, what: str, timeout_ms: int = REPLICA_WAIT_MS) -> int:
    """``WAIT`` until every replica attached to the primary has what was just written;
    raise naming ``what`` when some did not within the timeout (a failover then could undo
    it). Returns the replicas that acknowledged (0 without replicas: nothing to wait for)."""
    attached = int(client.info("replication").get("connected_slaves", 0))
    if attached == 0:
        return 0
    acked = int(client.execute_command("WAIT", attached, timeout_ms))
    if acked < attached:
        raise ReplicationError(
            f"{what} reached {acked} of {attached} replicas within {timeout_ms / 1000:.0f}s: a "
            "failover now could undo it. It is in effect on the primary; check the replicas "
            "(INFO replication) before going on"
        )
    return acked
