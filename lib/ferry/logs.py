"""Where ferry's log goes, and how the client libraries' noise is kept in check.

The library only logs (``ferry.*`` loggers, a NullHandler on ``ferry``); the CLI calls
:func:`configure_logging` once. librdkafka's log arrives on ``ferry.librdkafka`` (the
``logger`` setting of every confluent-kafka client ferry makes) and kafka-python's on
``kafka``: a broker that is down makes both repeat the same connection failure every few
hundred milliseconds, so below DEBUG they are shown at WARNING and up, and at most one line
per (facility, broker) per :data:`THROTTLE_S` (the next one says how many were held back).

Runbook notebooks call :func:`route_client_logs_to` to send the client libraries' log and
Python warnings to a file in the run folder instead of the notebook's output.
"""

from __future__ import annotations

import json as jsonlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

LIBRDKAFKA = "ferry.librdkafka"
THROTTLE_S = 60.0
TEXT_FORMAT = "ferry: %(asctime)s %(levelname)s %(name)s: %(message)s"
# the loggers of the client libraries a notebook's output should not show
CLIENT_LOGGERS = (LIBRDKAFKA, "kafka", "great_expectations", "py.warnings")

_installed: list[Callable[[], None]] = []  # undo steps of configure_logging
_routed: dict[str, logging.Handler] = {}  # route_client_logs_to's handler, by logger


def throttle_key(record: logging.LogRecord) -> tuple | None:
    """What makes two client-library records "the same line again"; None for ferry's own."""
    if record.name == LIBRDKAFKA:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, text) and librdkafka's
        # text starts with the broker ("127.0.0.1:9092/bootstrap: Connect to ... failed")
        args = record.args if isinstance(record.args, tuple) else ()
        facility = args[0] if args else record.msg
        text = str(args[2]) if len(args) > 2 else record.getMessage()
        broker = text.split(": ", 1)[0] if ": " in text else ""
        return (LIBRDKAFKA, facility, broker.split("/", 1)[0])
    if record.name == "kafka" or record.name.startswith("kafka."):
        return (record.name, str(record.msg))  # the template: one per kind of message
    return None


class Throttle(logging.Filter):
    """At most one record per :func:`throttle_key` per ``interval_s``; ferry's own records
    always pass. The first record let through after a quiet spell counts what was held back."""

    def __init__(self, interval_s: float = THROTTLE_S, clock=time.monotonic) -> None:
        super().__init__()
        self.interval_s, self.clock = interval_s, clock
        self.last: dict[tuple, float] = {}
        self.held: dict[tuple, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = throttle_key(record)
        if key is None:
            return True
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.interval_s:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        self.last[key] = now
        held = self.held.pop(key, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it held back)"
            record.args = ()
        return True


class _JsonFormatter(logging.Formatter):
    """One JSON object a line (used when python-json-logger is not installed)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return jsonlib.dumps(out)


def json_formatter() -> logging.Formatter:
    """python-json-logger's formatter when it is installed, else a small one of ours."""
    fields = "%(asctime)s %(levelname)s %(name)s %(message)s"
    rename = {"asctime": "time", "levelname": "level", "name": "logger"}
    try:
        from pythonjsonlogger.json import JsonFormatter
    except ImportError:
        try:
            from pythonjsonlogger.jsonlogger import JsonFormatter  # older releases
        except ImportError:
            return _JsonFormatter()
    return JsonFormatter(fields, rename_fields=rename)


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)")
    return value


def configure_logging(
    level: str | int = "INFO", json: bool = False, file: str | Path | None = None
) -> logging.Handler:
    """Send ferry's log at ``level`` and up (and the client libraries' warnings, throttled)
    to stderr, or to ``file``; one JSON object a line with ``json``. Calling it again
    replaces the earlier configuration; :func:`reset_logging` undoes it."""
    reset_logging()
    threshold = _level(level)
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(json_formatter() if json else logging.Formatter(TEXT_FORMAT))
    if threshold > logging.DEBUG:  # at DEBUG every line of the clients is shown
        handler.addFilter(Throttle())
    clients = logging.DEBUG if threshold <= logging.DEBUG else max(threshold, logging.WARNING)
    levels = {"": logging.WARNING, "ferry": threshold, LIBRDKAFKA: clients, "kafka": clients}
    root = logging.getLogger()
    root.addHandler(handler)
    for name, value in levels.items():
        logger = logging.getLogger(name)
        before = logger.level
        logger.setLevel(value)
        _installed.append(lambda logger=logger, before=before: logger.setLevel(before))
    logging.captureWarnings(True)
    _installed.append(lambda: logging.captureWarnings(False))
    _installed.append(lambda: (root.removeHandler(handler), handler.close()))
    return handler


def reset_logging() -> None:
    """Undo :func:`configure_logging` (the CLI does, so ``main()`` called in-process leaves
    no handler behind)."""
    while _installed:
        _installed.pop()()


def route_client_logs_to(file: str | Path, level: str | int = "INFO") -> logging.Handler:
    """Send the client libraries' log (librdkafka, kafka-python, great_expectations) and
    Python warnings to ``file`` (appended) instead of wherever they would show, such as a
    notebook's output; repeated connection failures are throttled as on the CLI. Calling it
    again moves them to the new file."""
    for name, old in _routed.items():
        logging.getLogger(name).removeHandler(old)
        old.close()
    _routed.clear()
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(file, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Throttle())
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(_level(level))
        _routed[name] = handler
    logging.captureWarnings(True)
    return handler
