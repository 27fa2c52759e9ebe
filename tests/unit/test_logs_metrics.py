"""The log throttle, configure_logging, route_client_logs_to and the mirror's metrics
collector (values computed at scrape time from when they arrived)."""

from __future__ import annotations

import logging
import math

import pytest

from ferry.logs import LIBRDKAFKA, Throttle, configure_logging, reset_logging, route_client_logs_to
from ferry.metrics import MirrorMetrics, parse_addr


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rdkafka_record(facility: str, text: str) -> logging.LogRecord:
    # how confluent-kafka hands librdkafka's log to a Python logger
    return logging.LogRecord(
        LIBRDKAFKA, logging.ERROR, "", 0, "%s [%s] %s", (facility, "rdkafka#consumer-1", text), None
    )


def test_the_throttle_lets_one_line_per_facility_and_broker_through_per_interval():
    clock = Clock()
    throttle = Throttle(60, clock)
    fail = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    other = "127.0.0.1:10/bootstrap: Connect to ipv4#127.0.0.1:10 failed: Connection refused"
    passed = [throttle.filter(rdkafka_record("FAIL", fail)) for _ in range(194)]
    assert passed.count(True) == 1
    assert throttle.filter(rdkafka_record("FAIL", other))  # another broker
    assert throttle.filter(rdkafka_record("ERROR", fail))  # another facility
    clock.now += 61
    again = rdkafka_record("FAIL", fail)
    assert throttle.filter(again) and "193 more like it held back" in again.getMessage()
    own = logging.LogRecord("ferry.core.mirror", logging.INFO, "", 0, "progress", (), None)
    assert all(throttle.filter(own) for _ in range(5))


def test_configure_logging_shows_ferry_info_and_throttled_clients(tmp_path):
    path = tmp_path / "ferry.log"
    configure_logging("INFO", file=path)
    try:
        logging.getLogger("ferry.core.mirror").info("backfill x: started")
        logging.getLogger("ferry.core.mirror").debug("hidden")
        for _ in range(50):
            logging.getLogger(LIBRDKAFKA).error(
                "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "h:1/bootstrap: Connect failed"
            )
        logging.getLogger(LIBRDKAFKA).info("%s [%s] %s", "CONF", "rdkafka#1", "h:1/b: info")
        logging.getLogger("kafka.conn").info("kafka-python chatter")
    finally:
        reset_logging()
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert "INFO ferry.core.mirror: backfill x: started" in lines[0] and "FAIL" in lines[1]
    assert logging.getLogger("ferry").level == logging.NOTSET  # undone


def test_json_logs_are_one_object_a_line(tmp_path):
    import json

    path = tmp_path / "ferry.log"
    configure_logging("INFO", json=True, file=path)
    try:
        logging.getLogger("ferry.live.cutover").info("draining %s", "payments")
    finally:
        reset_logging()
    (line,) = path.read_text().splitlines()
    doc = json.loads(line)
    assert doc["message"] == "draining payments" and doc["logger"] == "ferry.live.cutover"
    assert doc["level"] == "INFO" and "time" in doc


def test_client_logs_and_warnings_can_go_to_a_file(tmp_path, capsys):
    import warnings

    path = tmp_path / "run" / "clients.log"
    handler = route_client_logs_to(path)
    try:
        logging.getLogger(LIBRDKAFKA).error("%s [%s] %s", "FAIL", "rd#1", "h:1/b: down")
        logging.getLogger("great_expectations.core").warning("a GX warning")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    finally:
        for name in ("ferry.librdkafka", "kafka", "great_expectations", "py.warnings"):
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).propagate = True
        logging.captureWarnings(False)
        handler.close()
    text = path.read_text()
    assert "h:1/b: down" in text and "a GX warning" in text and "a library's warning" in text
    captured = capsys.readouterr()
    assert "down" not in captured.err and "warning" not in captured.err


def test_lag_goes_stale_when_no_measurement_arrives():
    clock = Clock()
    metrics = MirrorMetrics("s", stale_after_s=5, clock=clock)

    def scrape():
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.collect()
            for s in family.samples
        }

    first = scrape()
    assert first[("ferry_mirror_lag_stale", (("stream", "s"),))] == 1  # nothing measured yet
    metrics.on_batch(0, 99, 100)
    metrics.on_lag({0: 0, 1: 3})
    metrics.on_error("refused_batch")
    now = scrape()
    assert now[("ferry_mirror_lag", (("partition", "1"), ("stream", "s")))] == 3
    assert now[("ferry_mirror_lag_stale", (("stream", "s"),))] == 0
    assert now[("ferry_mirror_records_total", (("stream", "s"),))] == 100
    assert now[("ferry_mirror_errors_total", (("kind", "refused_batch"), ("stream", "s")))] == 1
    assert now[("ferry_mirror_last_progress_timestamp_seconds", (("stream", "s"),))] == 1000
    clock.now += 2
    metrics.on_lag({0: 0, 1: 0})  # caught up: progress without a batch
    assert scrape()[("ferry_mirror_last_progress_timestamp_seconds", (("stream", "s"),))] == 1002
    clock.now += 6
    stale = scrape()
    assert stale[("ferry_mirror_lag_stale", (("stream", "s"),))] == 1
    assert not [k for k in stale if k[0] == "ferry_mirror_lag"]
    assert stale[("ferry_mirror_lag_age_seconds", (("stream", "s"),))] == 6
    assert not math.isnan(stale[("ferry_mirror_frontier", (("partition", "0"), ("stream", "s")))])


@pytest.mark.parametrize(
    "text, addr",
    [("0.0.0.0:9108", ("0.0.0.0", 9108)), (":9108", ("0.0.0.0", 9108)), ("[::]:1", ("::", 1))],
)
def test_metrics_addr(text, addr):
    assert parse_addr(text) == addr


@pytest.mark.parametrize("text", ["9108", "host:", "host:99999", "host:x"])
def test_a_bad_metrics_addr_is_a_config_error(text):
    from ferry.errors import ConfigError

    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_addr(text)
