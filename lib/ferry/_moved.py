"""Where the modules of the flat package went (the package was split into subpackages).

``import ferry.mirror`` and ``from ferry.mirror import X`` keep working: each old name is the
new module itself (the same object in ``sys.modules``), so code written against the flat layout
and monkeypatches of it see one module, not a copy. Two old names are packages now and are
not aliased: ``ferry.services`` (see ``ferry.services.servers``) and ``ferry.runbook``
(``ferry.runbook.plan``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVES: dict[str, str] = {
    # core: the write path and its proof
    "ingest": "core.ingest",
    "entries": "core.entries",
    "positions": "core.positions",
    "identity": "core.identity",
    "batching": "core.batching",
    "mirror": "core.mirror",
    "follower": "core.follower",
    "durability": "core.durability",
    "validate": "core.validate",
    "row_sample": "core.row_sample",
    "reconcile": "core.reconcile",
    # the Kafka side
    "kafka_source": "kafka.source",
    "kafka_python": "kafka.python_client",
    "kafka_confluent": "kafka.confluent_client",
    "kafka_groups": "kafka.groups",
    "kafka_fence": "kafka.fence",
    "broker": "kafka.broker",
    "partitioner": "kafka.partitioner",
    # the Redis side
    "redis_target": "redis.target",
    "redis_cluster": "redis.cluster",
    "redis_faults": "redis.faults",
    "acl": "redis.acl",
    "retention": "redis.retention",
    # the live migration
    "dualwriter": "live.dualwriter",
    "delivery": "live.delivery",
    "primary_path": "live.primary_path",
    "phases": "live.phases",
    "cutover": "live.cutover",
    "finish": "live.finish",
    "rollback": "live.rollback",
    "handover": "live.handover",
    "group_consumer": "live.group_consumer",
    "idempotency": "live.idempotency",
    "ack_log": "live.ack_log",
    "canary": "live.canary",
    "live_check": "live.live_check",
    # the runbook
    "runner": "runbook.runner",
    "notebook": "runbook.notebook",
    "fleet": "runbook.fleet",
    "fleet_run": "runbook.fleet_run",
    "audit": "runbook.audit",
    "audit_anchor": "runbook.audit_anchor",
    "datadocs": "runbook.datadocs",
    "charts": "runbook.charts",
    "expectations": "runbook.expectations",
    "preflight": "runbook.preflight",
    "sizing": "runbook.sizing",
    "capacity": "runbook.capacity",
    "keda": "runbook.keda",
    # embedded services and the demo
    "apache_kafka": "services.apache_kafka",
    "demo": "services.demo",
    "lab": "services.lab",
    "seed": "services.seed",
    "traffic": "services.traffic",
    "tools_consume": "services.tools_consume",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``ferry.<old name>`` and loads it as the module it moved to."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002
        prefix, _, name = fullname.partition(".")
        if prefix != "ferry" or name not in MOVES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module("ferry." + MOVES[spec.name.partition(".")[2]])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported under its new name."""


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
