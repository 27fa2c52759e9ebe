"""ferry: move Kafka topics to Redis Streams with zero downtime, and prove it."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["DualWriter", "FerryError", "__version__"]

import logging

from ferry import _moved
from ferry.errors import FerryError

# the flat layout's module names (ferry.mirror, ferry.handover, ...) still import
_moved.install()

# a library does not configure logging; this keeps unconfigured logs (librdkafka's among them)
# off stderr until the application or the CLI says where they go
logging.getLogger("ferry").addHandler(logging.NullHandler())


def __getattr__(name: str):
    if name == "DualWriter":  # imported on use: it pulls in confluent-kafka and redis
        from ferry.live.dualwriter import DualWriter

        return DualWriter
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")
