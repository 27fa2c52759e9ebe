"""What ferry may assume of the broker it reads: a named set of traits, never a broker name
tested in the middle of a loop.

Apache Kafka gets the ordinary path: ListOffsets for partition ends (the last stable offset
under ``read_committed``), offset gaps believed as the client delivers them (markers, aborted
and compacted records), ``offsets_for_times`` as the answer. Tansu 0.6, the embedded broker,
needs three workarounds, each switched on by its own trait:

- ``exact_end_offsets=False``: ListOffsets(latest) answers the last batch's base offset + 1, so
  the end is taken from a fetch's end-of-partition instead.
- ``fetch_race=True``: a fetch near the live end can be answered with a later batch while an
  earlier one is not yet readable, so a gap there is read again before it is believed.
- ``exact_time_index=False``: ``offsets_for_times`` answers 0 for any timestamp, so ferry
  finds the offset itself (the first record whose timestamp is at or after the target).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ferry.config import BROKERS
from ferry.errors import ConfigError


@dataclass(frozen=True)
class BrokerTraits:
    name: str
    exact_end_offsets: bool
    fetch_race: bool
    exact_time_index: bool
    fetch_wait_ms: int  # the consumer's fetch.wait.max.ms (measured: bench/backfill_bench.py)
    create_partitions: bool
    delete_records: bool


APACHE = BrokerTraits(
    name="apache",
    exact_end_offsets=True,
    fetch_race=False,
    exact_time_index=True,
    fetch_wait_ms=100,
    create_partitions=True,
    delete_records=True,
)
TANSU = BrokerTraits(
    name="tansu",
    exact_end_offsets=False,
    fetch_race=True,
    exact_time_index=False,
    fetch_wait_ms=5,
    create_partitions=False,
    delete_records=False,
)


def broker_traits(cluster_id: str | None, declared: str = "auto") -> BrokerTraits:
    """The traits of a broker: as the config declares (``kafka.broker``), else recognised by
    its cluster id (Tansu names its cluster ``tansu_cluster``); anything else is treated as
    Apache Kafka. ``FERRY_KAFKA_BROKER`` overrides both."""
    declared = os.environ.get("FERRY_KAFKA_BROKER", declared) or "auto"
    if declared not in BROKERS:
        raise ConfigError(f"kafka.broker {declared!r} must be one of {', '.join(BROKERS)}")
    if declared == "tansu" or (declared == "auto" and (cluster_id or "").startswith("tansu")):
        traits = TANSU
    else:
        traits = APACHE
    wait = os.environ.get("FERRY_FETCH_WAIT_MS")  # the benchmark's sweep
    return replace(traits, fetch_wait_ms=int(wait)) if wait else traits
