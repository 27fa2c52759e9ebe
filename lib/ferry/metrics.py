"""Prometheus metrics of a running mirror (``ferry backfill --metrics-addr HOST:PORT``).

The mirror's callbacks only record values and when they arrived; a custom collector turns
them into series when Prometheus scrapes, so a mirror that stalls shows it: once no lag
measurement arrived for ``stale_after_s`` the ``ferry_mirror_lag`` series are dropped and
``ferry_mirror_lag_stale`` is 1, instead of the last lag standing still.

Series (every one labelled ``stream``):

- ``ferry_mirror_records_total``: records appended to the stream
- ``ferry_mirror_frontier{partition}``: the last offset in the stream
- ``ferry_mirror_lag{partition}``: records Kafka holds beyond what the mirror read (absent
  while stale)
- ``ferry_mirror_lag_stale``: 1 when the last lag measurement is older than the window
- ``ferry_mirror_lag_age_seconds``: age of the last lag measurement
- ``ferry_mirror_last_progress_timestamp_seconds``: unix time of the last batch written or
  the last measurement that found the mirror caught up (an alert: ``time() - this > 60``)
- ``ferry_mirror_errors_total{kind}``: ``kafka_read`` (errors the Kafka client reported),
  ``redis_fault`` (calls made again after a transient Redis fault), ``refused_batch``
  (batches the ingest script refused; the mirror re-reads from the frontier)
- ``ferry_redis_waiting``: 1 while the mirror waits out a Redis fault
- ``ferry_redis_fault_retries_total``: calls made again after a transient Redis fault
- the ``process_*`` series of prometheus_client
"""

from __future__ import annotations

import math
import threading
import time

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ferry.errors import ConfigError

DEFAULT_STALE_AFTER_S = 15.0  # the mirror measures lag about once a second
ERROR_KINDS = ("kafka_read", "redis_fault", "refused_batch")


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``0.0.0.0:9108``, ``[::]:9108``; ``:9108`` means every interface)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-addr {text!r}: expected HOST:PORT, such as 0.0.0.0:9108")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MirrorMetrics(Collector):
    """What the mirror reported, and when; series are computed at scrape time."""

    def __init__(
        self, stream: str, stale_after_s: float = DEFAULT_STALE_AFTER_S, clock=time.time
    ) -> None:
        self.stream, self.stale_after_s, self.clock = stream, stale_after_s, clock
        self.lock = threading.Lock()
        self.records = 0
        self.frontier: dict[int, int] = {}
        self.lag: dict[int, int] = {}
        self.lag_at: float | None = None
        self.progress_at: float | None = None
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.waiting = False
        self.retries = 0

    # --- the mirror's callbacks (any thread) ----------------------------------------------
    def on_batch(self, partition: int, frontier: int, appended: int) -> None:
        with self.lock:
            self.records += appended
            self.frontier[partition] = frontier
            self.progress_at = self.clock()

    def on_lag(self, values: dict[int, int]) -> None:
        with self.lock:
            now = self.clock()
            self.lag = dict(values)
            self.lag_at = now
            if values and not any(values.values()):  # caught up: fresh, even with no batch
                self.progress_at = now

    def on_redis_fault(self, state) -> None:
        with self.lock:
            self.waiting = state.cause is not None
            new = state.waits - self.retries
            self.retries = state.waits
            self.errors["redis_fault"] += max(0, new)

    def on_error(self, kind: str, count: int = 1) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + count

    # --- the scrape ---------------------------------------------------------------------------
    def stale(self, now: float) -> bool:
        return self.lag_at is None or now - self.lag_at > self.stale_after_s

    def collect(self):
        s = self.stream
        with self.lock:
            now = self.clock()
            stale = self.stale(now)
            records = CounterMetricFamily(
                "ferry_mirror_records", "records the mirror appended", labels=["stream"]
            )
            records.add_metric([s], self.records)
            frontier = GaugeMetricFamily(
                "ferry_mirror_frontier", "last offset in the stream", labels=["stream", "partition"]
            )
            for p, value in sorted(self.frontier.items()):
                frontier.add_metric([s, str(p)], value)
            lag = GaugeMetricFamily(
                "ferry_mirror_lag",
                "records Kafka holds beyond what the mirror read (absent while stale)",
                labels=["stream", "partition"],
            )
            if not stale:
                for p, value in sorted(self.lag.items()):
                    lag.add_metric([s, str(p)], value)
            flag = GaugeMetricFamily(
                "ferry_mirror_lag_stale",
                f"1 when no lag measurement arrived within {self.stale_after_s:g}s",
                labels=["stream"],
            )
            flag.add_metric([s], 1 if stale else 0)
            age = GaugeMetricFamily(
                "ferry_mirror_lag_age_seconds", "age of the last lag measurement", labels=["stream"]
            )
            age.add_metric([s], now - self.lag_at if self.lag_at is not None else math.nan)
            progress = GaugeMetricFamily(
                "ferry_mirror_last_progress_timestamp_seconds",
                "unix time of the last batch written or the last caught-up measurement",
                labels=["stream"],
            )
            progress.add_metric([s], self.progress_at if self.progress_at is not None else 0)
            errors = CounterMetricFamily(
                "ferry_mirror_errors", "errors by kind", labels=["kind", "stream"]
            )
            for kind, value in sorted(self.errors.items()):
                errors.add_metric([kind, s], value)
            waiting = GaugeMetricFamily(
                "ferry_redis_waiting",
                "1 while the mirror waits out a Redis fault",
                labels=["stream"],
            )
            waiting.add_metric([s], 1 if self.waiting else 0)
            retries = CounterMetricFamily(
                "ferry_redis_fault_retries",
                "calls made again after a transient Redis fault",
                labels=["stream"],
            )
            retries.add_metric([s], self.retries)
        yield from (records, frontier, lag, flag, age, progress, errors, waiting, retries)


def serve_mirror_metrics(
    addr: tuple[str, int], stream: str, stale_after_s: float = DEFAULT_STALE_AFTER_S
) -> MirrorMetrics:
    """Serve the mirror's metrics on ``addr`` (host, port) from a daemon thread; the returned
    object's ``on_batch``, ``on_lag``, ``on_redis_fault`` and ``on_error`` feed them."""
    metrics = MirrorMetrics(stream, stale_after_s)
    registry = CollectorRegistry()
    registry.register(metrics)
    ProcessCollector(registry=registry)
    host, port = addr
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return metrics
