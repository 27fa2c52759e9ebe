"""TLS to Redis as configuration (``redis.tls``), against the stack's Redis server started
with ``--tls-port`` and certificates this test makes: the right CA works (mutual TLS, the
server demands a client certificate), a wrong CA or a missing client certificate is one
line, exit 2; the loudly named insecure option connects and preflight shows it red."""

from __future__ import annotations

import pytest
import redis

from ferry.config import parse_config
from ferry.core.mirror import backfill
from ferry.errors import ServiceError
from ferry.runbook.preflight import run_preflight
from ferry.services.seed import SeedRecord
from ferry.services.servers import _spawn, _wait_ready, free_port

from .certs import make_ca, write_pair
from .helpers import backfill_cli_error, by_partition, read_kafka_raw, read_redis_records

pytestmark = pytest.mark.redis_side  # Redis behaviour: once per Redis server


@pytest.fixture(scope="module")
def tls_redis(services, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls-redis")
    ca_key, ca_cert = make_ca(folder, "redis-ca")
    make_ca(folder, "other-ca")
    server_crt, server_key = write_pair(folder, "server", ca_key, ca_cert)
    client_crt, client_key = write_pair(folder, "client", ca_key, ca_cert)
    port = free_port()
    args = [services.redis_binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(server_crt), "--tls-key-file", str(server_key)]
    args += ["--tls-ca-cert-file", str(folder / "redis-ca.pem"), "--tls-auth-clients", "yes"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"]
    args += ["--maxmemory-policy", "noeviction"]
    proc = _spawn(args, folder / "redis.log")
    url = f"rediss://127.0.0.1:{port}/0"

    def client() -> redis.Redis:
        return redis.Redis.from_url(
            url,
            ssl_ca_certs=str(folder / "redis-ca.pem"),
            ssl_certfile=str(client_crt),
            ssl_keyfile=str(client_key),
        )

    def probe() -> bool:
        try:
            return client().ping()
        except redis.RedisError:
            return False

    try:
        _wait_ready(f"{services.redis_kind} with TLS", proc, probe, folder / "redis.log")
    except ServiceError:
        if "TLS support" in (folder / "redis.log").read_text(errors="replace"):
            pytest.skip(f"this {services.redis_kind} binary was built without TLS")
        raise
    yield {"url": url, "folder": folder, "client": client}
    proc.kill()
    proc.wait(timeout=30)


def tls_doc(stream, tls_redis, **tls) -> dict:
    folder = tls_redis["folder"]
    settings = {
        "ca_file": str(folder / "redis-ca.pem"),
        "cert_file": str(folder / "client.crt"),
        "key_file": str(folder / "client.key"),
        **tls,
    }
    return {**stream.doc, "redis": {"url": tls_redis["url"], "tls": settings}}


def test_mutual_tls_with_the_right_ca_copies_exactly(make_stream, tls_redis, services):
    records = [
        SeedRecord(i % 2, b"k%d" % i, b"v%d" % i, (), 1_700_000_000_000 + i) for i in range(200)
    ]
    stream = make_stream(records, partitions=2)
    config = parse_config(tls_doc(stream, tls_redis), "<tls>")
    assert backfill(config, progress=False).complete
    client = tls_redis["client"]()
    kafka = read_kafka_raw(services.kafka_bootstrap, config.kafka.topic, 2)
    assert by_partition(r for _, r in read_redis_records(client, config.redis.stream)) == kafka


@pytest.mark.parametrize("fault", ["wrong CA", "no client certificate"])
def test_a_tls_fault_is_one_line(make_stream, tls_redis, tmp_path, fault):
    stream = make_stream([SeedRecord(0, b"k", b"v", (), 1_700_000_000_000)], partitions=1)
    if fault == "wrong CA":
        doc = tls_doc(stream, tls_redis, ca_file=str(tls_redis["folder"] / "other-ca.pem"))
    else:
        doc = tls_doc(stream, tls_redis)
        del doc["redis"]["tls"]["cert_file"], doc["redis"]["tls"]["key_file"]
    line, _ = backfill_cli_error(doc, tmp_path)
    assert "TLS" in line or "certificate" in line.lower(), line


def test_skipping_verification_is_loud(make_stream, tls_redis):
    stream = make_stream([SeedRecord(0, b"k", b"v", (), 1_700_000_000_000)], partitions=1)
    doc = tls_doc(
        stream,
        tls_redis,
        ca_file=str(tls_redis["folder"] / "other-ca.pem"),  # would be refused if verified
        insecure_skip_verify=True,
    )
    config = parse_config(doc, "<tls insecure>")
    checks = {c.name: c for c in run_preflight(config).checks}
    assert checks["Redis reachable with the configured credentials"].ok
    assert not checks["Redis TLS verifies the server's certificate"].ok
