"""ferry: move Kafka topics to Redis Streams with zero downtime, and prove it."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["DualWriter", "FerryError", "__version__"]

from ferry.errors import FerryError


def __getattr__(name: str):
    if name == "DualWriter":  # imported on use: it pulls in confluent-kafka and redis
        from ferry.dualwriter import DualWriter

        return DualWriter
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")
