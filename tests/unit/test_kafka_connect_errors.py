"""The one line a failed Kafka connection becomes, from what kafka-python logged meanwhile."""

from __future__ import annotations

from ferry.kafka.python_client import SASL_ANSWERED, SASL_SENT, _connect_failure

TIMEOUT = TimeoutError("Unable to bootstrap from ['127.0.0.1:9093']")


def test_an_authentication_error_response_is_named():
    seen = [SASL_SENT, SASL_ANSWERED, "Connection failed: [Error 58] SaslAuthenticationFailedError"]
    assert "authentication failed" in _connect_failure("127.0.0.1:9093", TIMEOUT, seen)


def test_a_hang_up_right_after_the_credentials_is_an_authentication_failure():
    seen = [SASL_SENT, SASL_ANSWERED, SASL_SENT, "<KafkaSSLTransport>: socket disconnected"]
    line = _connect_failure("127.0.0.1:9093", TIMEOUT, seen)
    assert "authentication failed" in line and "closed the connection" in line


def test_a_hang_up_elsewhere_is_only_unreachable():
    seen = [SASL_SENT, SASL_ANSWERED, "Connection lost: socket disconnected"]
    line = _connect_failure("127.0.0.1:9093", TIMEOUT, seen)
    assert line.startswith("cannot reach Kafka") and "authentication" not in line
