"""A real Apache Kafka broker on loopback: KRaft mode, one combined broker+controller node.

The jars come from Maven Central through ``brokers/pom.xml`` (``mvn dependency:copy-dependencies``)
and are cached per version under ``$FERRY_KAFKA_CACHE`` (default ``~/.cache/ferry/kafka``), so
only the first start of a version needs the network. Data and logs live in the services
folder; the log directory is formatted on every start (a fresh cluster, like Tansu's memory).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import ServiceError

DEFAULT_VERSION = "3.7.2"
# the versions the project tests; any other served version may be asked for by number
KNOWN_VERSIONS = {"3.7": "3.7.2", "4": "4.4.0", "4.x": "4.4.0"}
POM = Path(__file__).with_name("brokers") / "pom.xml"
HEAP = os.environ.get("FERRY_KAFKA_HEAP", "-Xmx768m")


@dataclass(frozen=True)
class KafkaListeners:
    """The ports one broker listens on."""

    plaintext: int
    controller: int
    sasl_ssl: int | None = None


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener (SCRAM-SHA-512) beside the plaintext one, as a secured cluster has.

    ``keystore_pem``: the server's private key and certificate chain in one PEM file;
    ``users``: SCRAM users created when the log dir is formatted (name -> password).
    """

    port: int
    keystore_pem: Path
    users: dict[str, str]

    def properties(self) -> dict[str, str]:
        prefix = "listener.name.sasl_ssl."
        return {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            prefix + "scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            prefix + "ssl.keystore.type": "PEM",
            prefix + "ssl.keystore.location": str(self.keystore_pem),
        }

    def format_args(self) -> list[str]:
        out = []
        for name, password in self.users.items():
            out += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return out


STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class Authorizer:
    """KRaft's ACL authorizer (StandardAuthorizer), as a cluster that enforces ACLs runs it.

    ``super_users``: principals every ACL check lets through: the broker's and controller's own
    (User:ANONYMOUS on this node's PLAINTEXT and CONTROLLER listeners) and a trusted admin;
    ``allow_everyone_if_no_acl``: a resource no ACL matches is open to every principal.
    """

    super_users: tuple[str, ...] = ("User:ANONYMOUS",)
    allow_everyone_if_no_acl: bool = True

    def properties(self) -> dict[str, str]:
        return {
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "super.users": ";".join(self.super_users),
            "allow.everyone.if.no.acl.found": str(self.allow_everyone_if_no_acl).lower(),
        }


def resolve_version(version: str | None) -> str:
    """A full Kafka version from a user's choice: ``3.7``, ``4.x``, ``3.7.2``... (default 3.7.2)."""
    version = (version or os.environ.get("FERRY_KAFKA_VERSION") or DEFAULT_VERSION).strip()
    version = KNOWN_VERSIONS.get(version, version)
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ServiceError(
            f"Kafka version {version!r} is not of the form MAJOR.MINOR.PATCH "
            f"(or one of {', '.join(sorted(KNOWN_VERSIONS))})"
        )
    return version


def jar_cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferry" / "kafka"
    return Path(os.environ.get("FERRY_KAFKA_CACHE", default))


def fetch_kafka_jars(version: str) -> Path:
    """The folder holding Kafka ``version``'s broker jars, fetched with Maven when missing."""
    folder = jar_cache() / version
    done = folder / ".complete"
    if done.exists():
        return folder
    mvn = shutil.which("mvn")
    java = shutil.which("java")
    if not mvn or not java:
        raise ServiceError(
            "the Apache Kafka broker needs Java 17+ and Maven on PATH "
            "(apt-get install openjdk-17-jre-headless maven); or use the embedded Tansu broker"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs fetching at once share one download
        if done.exists():
            return folder
        staging = folder.with_name(f".{version}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0 or not any(staging.glob(f"kafka_2.13-{version}.jar")):
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
            raise ServiceError(f"could not fetch Apache Kafka {version} with Maven:\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        done.write_text(version)
    return folder


def broker_properties(data: Path, ports: KafkaListeners, extra: dict[str, str]) -> str:
    """server.properties for one combined KRaft node listening on loopback."""
    listeners = [
        f"PLAINTEXT://127.0.0.1:{ports.plaintext}",
        f"CONTROLLER://127.0.0.1:{ports.controller}",
    ]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    advertised = [f"PLAINTEXT://127.0.0.1:{ports.plaintext}"]
    if ports.sasl_ssl:
        listeners.append(f"SASL_SSL://127.0.0.1:{ports.sasl_ssl}")
        protocols.append("SASL_SSL:SASL_SSL")
        advertised.append(f"SASL_SSL://127.0.0.1:{ports.sasl_ssl}")
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ports.controller}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": ",".join(protocols),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data / "log"),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",  # a typo'd topic must be an error, not a new topic
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.backoff.ms": "1000",  # compaction tests wait for the cleaner
        # a test and demo broker keeps what it is given (seeded history is years old); a
        # topic's own retention.ms, and DeleteRecords, still apply
        "log.retention.ms": "-1",
        "log.retention.check.interval.ms": "1000",
        "num.network.threads": "2",
        "num.io.threads": "4",
        **extra,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""
# Kafka 4 also loads log4j2 for its own controller; the same file, log4j2's syntax
LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


def broker_command(
    folder: Path,
    version: str,
    ports: KafkaListeners,
    extra: dict[str, str] | None = None,
    secure: SaslSsl | None = None,
    authorizer: Authorizer | None = None,
) -> list[str]:
    """Format a fresh KRaft log dir under ``folder`` and return the broker's command line;
    ``authorizer`` makes the broker enforce ACLs."""
    extra = {
        **(extra or {}),
        **(secure.properties() if secure else {}),
        **(authorizer.properties() if authorizer else {}),
    }
    jars = fetch_kafka_jars(version)
    data = folder / "kafka-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    config = data / "server.properties"
    config.write_text(broker_properties(data, ports, extra))
    log4j = data / "log4j.properties"
    log4j.write_text(LOG4J.format(log=folder / "kafka-server.log"))
    log4j2 = data / "log4j2.properties"
    log4j2.write_text(LOG4J2.format(log=folder / "kafka-server.log"))
    java = [
        shutil.which("java") or "java",
        HEAP,
        "-XX:+UseSerialGC",  # two cores shared with Redis and ferry: no parallel GC threads
        "-Xshare:auto",
        f"-Dlog4j.configuration=file:{log4j}",
        f"-Dlog4j2.configurationFile={log4j2}",
        "-Djava.awt.headless=true",
        "-cp",
        f"{jars}/*",
    ]
    fmt = subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(config),
            *(secure.format_args() if secure else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if fmt.returncode != 0:
        raise ServiceError(
            f"formatting the Kafka {version} log dir failed: {(fmt.stdout + fmt.stderr)[-800:]}"
        )
    return [*java, "kafka.Kafka", str(config)]


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding, never starting with
    '-' (the storage tool would read it as an option: 1 start in 64 failed that way)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if cluster_id[0].isalnum():
            return cluster_id


if (
    __name__ == "__main__"
):  # python -m ferry.services.apache_kafka 3.7 4.x: fetch (and cache) the jars
    import sys

    for wanted in sys.argv[1:] or [DEFAULT_VERSION]:
        print(fetch_kafka_jars(resolve_version(wanted)))
