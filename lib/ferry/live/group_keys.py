"""Where a handed-over consumer group lives in Redis, per layout.

In the ``merged`` layout a group is one Redis consumer group on the one stream, with its
translated Kafka offsets in ``{name}:ferry:group:GROUP``. In the ``per-partition`` and
``spread`` layouts it is one Redis consumer group on each partition's stream, and everything
a consumer changes together with its XACK (offsets, consumed shadows, failure counts, the
dead-letter stream) sits beside that stream, in the partition's slot, so every MULTI stays on
one shard. The record of the whole hand-over (``...:handover``, with ``done``) is always under
the migration's tag: it is written last, so its ``done`` means every partition's group exists.
Partition keys say ``pgroup``/``pdead``, so a scan for ``{name}:ferry:group:*`` in the
single-slot ``per-partition`` layout never takes one for a group of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferry.core.ingest import MigrationKeys


@dataclass(frozen=True)
class GroupTarget:
    """One Redis stream a handed-over group reads, and the keys kept beside it."""

    partition: int | None  # None: the merged stream (every partition)
    stream: str
    offsets: str  # hash: partition -> the Kafka group's committed offset (and 'translated')

    @property
    def shadows(self) -> str:
        """Set: entries written to Redis first whose Kafka shadows the group consumed."""
        return f"{self.offsets}:shadows"

    @property
    def failures(self) -> str:
        """Hash: entry ID -> how many times the handler failed on it."""
        return f"{self.offsets}:failures"

    @property
    def record(self) -> str:
        """Hash: this stream's part of the hand-over (``done`` once its group is made)."""
        return f"{self.offsets}:handover"


def group_offsets_key(keys: MigrationKeys, group: str) -> str:
    """The merged layout's offsets hash; its ``:handover`` is every layout's hand-over record."""
    return f"{keys.tag}:ferry:group:{group}"


def handover_record_key(keys: MigrationKeys, group: str) -> str:
    """The record of a finished hand-over (a hash with ``done``; no ``translated`` marker, so
    it is not taken for a group's offsets)."""
    return f"{group_offsets_key(keys, group)}:handover"


def group_targets(keys: MigrationKeys, group: str, partitions: list[int]) -> list[GroupTarget]:
    """The streams ``group`` reads: the merged stream, or one per partition (``partitions``:
    the migration's armed partitions)."""
    if keys.layout == "merged":
        return [GroupTarget(None, keys.stream, group_offsets_key(keys, group))]
    return [
        GroupTarget(p, keys.stream_for(p), f"{keys.partition_tag(p)}:ferry:pgroup:{group}:{p}")
        for p in sorted(partitions)
    ]


def groups_on(client, stream: str) -> set[str]:
    """The names of the Redis consumer groups on ``stream`` (none when it does not exist)."""
    if not client.exists(stream):
        return set()
    return {
        g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        for g in client.xinfo_groups(stream)
    }


def dead_letter_key(keys: MigrationKeys, group: str, target: GroupTarget) -> str:
    """Where entries that kept failing go: beside the stream they came from."""
    if target.partition is None:
        return f"{keys.tag}:ferry:dead:{group}"
    return f"{keys.partition_tag(target.partition)}:ferry:pdead:{group}:{target.partition}"


def recorded_groups(client, keys: MigrationKeys) -> list[str]:
    """The groups with a finished hand-over record, sorted (any layout)."""
    prefix = group_offsets_key(keys, "")
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*:handover"
    groups = []
    for key in client.scan_iter(match=pattern, count=1000, _type="hash"):
        name = key.decode() if isinstance(key, bytes) else key
        if b"done" in client.hgetall(name):  # HGETALL: every role reading records has it
            groups.append(name[len(prefix) : -len(":handover")])
    return sorted(groups)
