"""Capacity sizing: pure arithmetic over measured inputs (bytes per entry, event rate,
XADD rate) and the plan's parameters (retention, node size, headroom, replicas, price)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GB = 1024**3


@dataclass(frozen=True)
class SizingInputs:
    bytes_per_entry: float  # measured with MEMORY USAGE on the target
    event_rate: float  # msg/s, measured from end offsets (or the planned peak, if higher)
    xadd_rate: float  # entries/s one target node took in the timed run
    retention_s: float  # how long entries stay in the stream
    backlog_records: int  # records the backfill brings at once
    node_memory_gb: float
    headroom: float  # fraction of memory and throughput kept free, 0..0.9
    replicas: int  # replicas per shard
    node_price_month: float
    max_entries: int | None = None  # the stream's trim.max_len: steady state never holds more
    partitions: int = 1  # the topic's partitions
    layout: str = "merged"  # redis.layout: only 'spread' puts partitions on several shards

    def __post_init__(self) -> None:
        for name in ("bytes_per_entry", "node_memory_gb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.headroom < 0.9:
            raise ValueError(f"headroom must be in [0, 0.9), got {self.headroom}")
        if self.replicas < 0 or self.event_rate < 0 or self.retention_s <= 0:
            raise ValueError("replicas and event_rate must be >= 0 and retention positive")
        if self.partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {self.partitions}")


@dataclass(frozen=True)
class Sizing:
    entries: int
    memory_gb: float
    shards_for_memory: int
    shards_for_throughput: int
    shards: int
    nodes: int
    throughput_headroom: float  # how many times the event rate one node's XADD rate covers
    monthly_cost: float
    fits_one_shard: bool  # the data and its rate fit one shard
    # the spread layout: the fewest shards whose busiest one (ceil(partitions / shards)
    # partitions, slots assumed balanced) fits memory and rate; None when one partition alone
    # does not fit a node. Other layouts: 1 when the migration fits its one slot's shard.
    shards_for_partitions: int | None
    feasible: bool  # the layout can hold the plan: one slot's shard, or spread partitions
    limit: str  # what decides the shard count, or why the plan does not fit

    def as_dict(self) -> dict:
        return asdict(self)


def size_target(i: SizingInputs) -> Sizing:
    steady = math.ceil(i.event_rate * i.retention_s)
    if i.max_entries is not None:
        steady = min(steady, i.max_entries)
    entries = max(i.backlog_records, steady)  # the backfill lands all history before trimming
    memory = entries * i.bytes_per_entry
    usable = i.node_memory_gb * GB * (1 - i.headroom)
    for_memory = max(1, math.ceil(memory / usable))
    per_node_rate = i.xadd_rate * (1 - i.headroom)
    for_throughput = max(1, math.ceil(i.event_rate / per_node_rate)) if per_node_rate > 0 else 1
    shards = max(for_memory, for_throughput)
    by_partition = shards_for_partitions(i, memory, usable, per_node_rate)
    if i.layout == "spread":
        feasible = by_partition is not None
        shards = by_partition or i.partitions
        limit = (
            f"{i.partitions} partitions, the busiest shard holding "
            f"{math.ceil(i.partitions / shards)}"
            if feasible
            else "one partition alone needs more than a node: add partitions or bigger nodes"
        )
    else:
        feasible = shards == 1
        limit = (
            "one slot: the migration fits one shard"
            if feasible
            else f"layout {i.layout!r} keeps the migration in one slot, which needs {shards} "
            "shards' worth: use layout 'spread'"
        )
    nodes = shards * (1 + i.replicas)
    return Sizing(
        entries=entries,
        memory_gb=memory / GB,
        shards_for_memory=for_memory,
        shards_for_throughput=for_throughput,
        shards=shards,
        nodes=nodes,
        throughput_headroom=(i.xadd_rate / i.event_rate) if i.event_rate > 0 else math.inf,
        monthly_cost=nodes * i.node_price_month,
        fits_one_shard=max(for_memory, for_throughput) == 1,
        shards_for_partitions=by_partition,
        feasible=feasible,
        limit=limit,
    )


def shards_for_partitions(
    i: SizingInputs, memory: float, usable: float, per_node_rate: float
) -> int | None:
    """The fewest shards S (at most one per partition) for which the busiest shard, holding
    ceil(partitions / S) partitions of equal size and rate, fits a node's usable memory and
    write rate; None when even one partition per shard does not fit."""
    p = i.partitions
    part_memory, part_rate = memory / p, i.event_rate / p
    for shards in range(1, p + 1):
        busiest = math.ceil(p / shards)
        fits_rate = per_node_rate <= 0 or busiest * part_rate <= per_node_rate
        if busiest * part_memory <= usable and fits_rate:
            return shards
    return None


def memory_over_retention(i: SizingInputs, days: list[float]) -> list[dict]:
    """Memory needed for each retention in ``days`` (chart data)."""
    out = []
    for d in days:
        s = size_target(replace_inputs(i, retention_s=d * 86_400))
        out.append({"retention_days": d, "memory_gb": s.memory_gb, "shards": s.shards})
    return out


def shards_over_rate(i: SizingInputs, rates: list[float]) -> list[dict]:
    """Shards needed for each event rate (chart data)."""
    return [
        {"event_rate": r, "shards": size_target(replace_inputs(i, event_rate=r)).shards}
        for r in rates
    ]


def replace_inputs(i: SizingInputs, **changes) -> SizingInputs:
    return SizingInputs(**{**asdict(i), **changes})
