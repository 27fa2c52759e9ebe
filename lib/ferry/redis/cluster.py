"""The Redis Cluster client ferry uses for a cluster target.

redis-py's :class:`~redis.cluster.RedisCluster` follows MOVED and ASK and keeps the slot map.
Two things differ from what ferry's code asks of a plain client, and are settled here rather
than in every caller:

- keyless commands (TIME, INFO, CONFIG GET, PING) go to the primary that owns the migration's
  slot (its "home" key, the stream), not to a node picked at random: leases, heartbeats and
  the scripts' clocks then read one server's clock, and the checks look at the node that
  holds the data;
- a pipeline may carry TIME (``read_phase_lease`` reads the phase and the server's clock in
  one round trip); redis-py refuses it by default since it cannot tell which node to ask;
- when redis-py gives up on a slot in flux (``TTL exhausted`` after 16 redirects or TRYAGAIN
  answers, or CLUSTERDOWN), the error names TRYAGAIN or CLUSTERDOWN first, so
  :func:`ferry.redis.faults.transient_cause` waits it out like any other passing fault
  (redis-py's own errors drop that word from their text).
"""

from __future__ import annotations

from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ClusterDownError, ClusterError, SlotNotCoveredError, TryAgainError


def _home_node(client: RedisCluster, home_key: str | None) -> ClusterNode | None:
    if home_key is None:
        return None
    try:
        return client.get_node_from_key(home_key)
    except (SlotNotCoveredError, IndexError, KeyError):  # the map is being learned again
        return None


def _passing(exc: ClusterError) -> ClusterError:
    """redis-py's give-up on a slot in flux, as an error whose text names the cause."""
    if isinstance(exc, ClusterDownError):
        return ClusterDownError(f"CLUSTERDOWN {exc}")
    return TryAgainError(f"TRYAGAIN the slot kept moving or answering TRYAGAIN ({exc})")


class FerryCluster(RedisCluster):
    """A cluster client whose keyless commands go to the node that owns ``home_key``."""

    home_key: str | None = None

    def execute_command(self, *args, **kwargs):  # noqa: ANN201 - redis-py's reply
        try:
            return super().execute_command(*args, **kwargs)
        except ClusterError as exc:
            raise _passing(exc) from exc

    def get_default_node(self) -> ClusterNode:
        return _home_node(self, self.home_key) or super().get_default_node()

    def pipeline(self, transaction=None, shard_hint=None) -> ClusterPipeline:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.__class__ = FerryClusterPipeline  # same state; TIME allowed, same home node
        pipe.home_key = self.home_key
        return pipe


class FerryClusterPipeline(ClusterPipeline):
    home_key: str | None = None

    def get_default_node(self) -> ClusterNode:
        return _home_node(self, self.home_key) or super().get_default_node()

    def time(self):  # noqa: ANN201 - the pipeline itself, as every queued command returns
        """TIME of the node that owns the migration's slot, queued like any command."""
        return self.execute_command("TIME")
