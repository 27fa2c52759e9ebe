"""Stream configuration: one YAML file per stream, validated on load.

Every error names the file, the field (dotted path) and what is wrong. Secrets are only
ever references (``{env: NAME}`` or ``{file: PATH}``), resolved when a client connects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from ferry.errors import ConfigError
from ferry.kafka.partitioner import DEFAULT_PARTITIONER, PARTITIONERS

BROKERS = ("auto", "apache", "tansu")  # ferry.kafka.broker's traits

STREAMS_DIR = Path("runbook/streams")
CLIENTS = ("confluent", "kafka-python")
LAYOUTS = ("merged", "per-partition", "spread")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PERSISTENCE = ("any", "aof", "rdb", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# how far past the copy time (the Redis server's clock) a record's timestamp may place its
# entry ID: a far-future timestamp would otherwise pin every later ID of the stream
DEFAULT_MAX_FUTURE_SKEW_MS = 300_000


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = None
    file: str | None = None

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(
                    f"environment variable {self.env} (a secret reference) is not set"
                )
            return value
        assert self.file is not None
        try:
            return Path(self.file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"secret file {self.file} cannot be read: {exc.strerror}") from exc

    def __str__(self) -> str:  # what logs and manifests may show
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"


@dataclass(frozen=True)
class StartPosition:
    """Where the migration starts in every partition: earliest, an age, or a timestamp."""

    kind: str  # "earliest" | "age" | "timestamp"
    millis: int = 0  # age in ms, or epoch ms

    def describe(self) -> str:
        """The rule as a user wrote it: ``earliest``, ``age 604800000ms`` or an ISO timestamp."""
        if self.kind == "earliest":
            return "earliest"
        if self.kind == "age":
            return f"age {self.millis}ms"
        return datetime.fromtimestamp(self.millis / 1000, UTC).isoformat().replace("+00:00", "Z")

    def timestamp_ms(self, now_ms: int) -> int | None:
        """The epoch-ms timestamp to look offsets up for, or None for earliest."""
        if self.kind == "earliest":
            return None
        if self.kind == "age":
            return now_ms - self.millis
        return self.millis


@dataclass(frozen=True)
class TrimPolicy:
    """Retention in the stream: entries older than an age, or beyond a length, are removed."""

    max_age_ms: int | None = None
    max_len: int | None = None


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic: str
    client: str = "confluent"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: SecretRef | None = None
    password: SecretRef | None = None
    ssl_cafile: str | None = None
    transactional: bool = False
    broker: str = "auto"  # auto | apache | tansu: which broker's traits apply (ferry.kafka.broker)


@dataclass(frozen=True)
class RedisTls:
    """TLS to Redis: the CA that signs the server's certificate, and (for mutual TLS) the
    client's certificate and key. Verification is on unless ``insecure_skip_verify``."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class RedisSentinel:
    """A primary found through Sentinel: the Sentinels' addresses and the service name.
    ferry asks them for the current primary on every (re)connect, so it follows failovers."""

    addresses: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: SecretRef | None = None  # the Sentinels' own password, when they have one


@dataclass(frozen=True)
class RedisCluster:
    """The target is a Redis Cluster: its seed nodes (``redis.cluster.addresses``; with
    ``redis.url``, that node too). ferry connects through them with a cluster client, which
    learns the slot map and follows MOVED and ASK; KEDA's redis-cluster-streams scaler seeds
    from the same addresses. Every key of a migration shares one hash tag, so one slot."""

    addresses: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class RedisSettings:
    url: str  # "sentinel" when the primary is found through redis.sentinel
    stream: str
    layout: str = "merged"
    username: SecretRef | None = None
    password: SecretRef | None = None
    persistence: str = "any"  # what preflight demands: any | aof | rdb | none
    fault_deadline_ms: int = 120_000  # how long a one-shot run waits out a Redis fault
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS  # entry IDs <= copy time + this
    tls: RedisTls | None = None
    sentinel: RedisSentinel | None = None
    cluster: RedisCluster | None = None

    @property
    def is_cluster(self) -> bool:
        """Whether the target is a Redis Cluster (``redis.cluster`` given)."""
        return self.cluster is not None

    def cluster_seeds(self) -> list[tuple[str, int]]:
        """The nodes a cluster client starts from: ``redis.url``'s node (when it names one),
        then ``redis.cluster.addresses``, without repeats."""
        seeds: list[tuple[str, int]] = []
        parts = urlsplit(self.url)
        if parts.scheme in ("redis", "rediss") and parts.hostname:
            seeds.append((parts.hostname, parts.port or 6379))
        for address in self.cluster.addresses if self.cluster else ():
            if address not in seeds:
                seeds.append(address)
        return seeds


@dataclass(frozen=True)
class WriterSettings:
    """What the DualWriter needs of the application: the partitioner its Kafka producer uses
    (librdkafka's names, ``ferry.kafka.partitioner``), so the Redis-first phases pick the same one."""

    partitioner: str = DEFAULT_PARTITIONER


@dataclass(frozen=True)
class StreamConfig:
    """A validated stream config: one Kafka topic to one Redis Stream migration."""

    name: str
    kafka: KafkaSettings
    redis: RedisSettings
    start: StartPosition
    batch_size: int = 2000
    trim: TrimPolicy | None = None
    source: str = field(default="<memory>", compare=False)
    writer: WriterSettings = field(default_factory=WriterSettings)

    @property
    def hash_tag(self) -> str:
        return "{" + self.name + "}"


def first_hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes, braces included: the first ``{...}`` with
    something inside; None when there is none (Redis then hashes the whole key)."""
    opening = key.find("{")
    if opening < 0:
        return None
    closing = key.find("}", opening + 1)
    if closing <= opening + 1:
        return None
    return key[opening : closing + 1]


def parse_start(text: Any, where: str = "start") -> StartPosition:
    """Parse ``earliest``, a duration such as ``7d`` / ``36h``, or an ISO-8601 timestamp."""
    if isinstance(text, datetime):
        when = text if text.tzinfo else text.replace(tzinfo=UTC)
        return StartPosition("timestamp", int(when.timestamp() * 1000))
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"{where}: expected 'earliest', a duration like '7d' or an ISO timestamp, got {text!r}"
        )
    value = text.strip()
    if value == "earliest":
        return StartPosition("earliest")
    match = _DURATION.match(value)
    if match:
        amount = int(match.group(1))
        if amount <= 0:
            raise ConfigError(f"{where}: duration {value!r} must be positive")
        return StartPosition("age", amount * _UNIT_MS[match.group(2)])
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{where}: {value!r} is not 'earliest', a duration (units ms, s, m, h, d, w, e.g. '7d')"
            " or an ISO-8601 timestamp (e.g. '2026-11-01T00:00:00Z')"
        ) from None
    if when.tzinfo is None:
        raise ConfigError(f"{where}: timestamp {value!r} needs a time zone (e.g. a trailing 'Z')")
    return StartPosition("timestamp", int(when.timestamp() * 1000))


class _Fields:
    """Reads one mapping of the YAML document, remembering the dotted path for errors."""

    def __init__(self, source: str, path: str, data: Any):
        self.source, self.path = source, path
        if not isinstance(data, dict):
            raise self.error(f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def error(self, message: str, key: str | None = None) -> ConfigError:
        where = f"{self.path}.{key}" if self.path and key else (key or self.path or "(top level)")
        return ConfigError(f"{self.source}: {where}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., choices=None) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.error("is required", key)
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.error(f"expected {expected}, got {value!r}", key)
        if choices is not None and value not in choices:
            raise self.error(f"{value!r} is not one of {', '.join(choices)}", key)
        return value

    def child(self, key: str, required: bool = True) -> _Fields | None:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.error("is required", key)
            return None
        return _Fields(self.source, f"{self.path}.{key}" if self.path else key, self.data[key])

    def secret(self, key: str) -> SecretRef | None:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return None
        value = self.data[key]
        if isinstance(value, str):
            raise self.error(
                "secrets may not be written inline; use {env: VARIABLE} or {file: /path/to/secret}",
                key,
            )
        ref = _Fields(self.source, f"{self.path}.{key}", value)
        env, file = ref.get("env", str, None), ref.get("file", str, None)
        ref.finish()
        if (env is None) == (file is None):
            raise self.error("give exactly one of 'env' or 'file'", key)
        return SecretRef(env=env, file=file)

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise self.error(f"unknown field(s): {', '.join(unknown)}")


def parse_config(data: Any, source: str = "<memory>") -> StreamConfig:
    """Validate a parsed YAML document and build a StreamConfig."""
    top = _Fields(source, "", data)
    name = top.get("name", str)
    if not _NAME.match(name):
        raise top.error(
            f"{name!r} must be 1-100 letters, digits, '.', '_' or '-' (it becomes the hash tag)",
            "name",
        )
    k = top.child("kafka")
    kafka = KafkaSettings(
        bootstrap_servers=k.get("bootstrap_servers", str),
        topic=k.get("topic", str),
        client=k.get("client", str, "confluent", CLIENTS),
        transactional=k.get("transactional", bool, False),
        broker=k.get("broker", str, "auto", BROKERS),
        **_security(k),
    )
    k.finish()
    r = top.child("redis")
    tag = "{" + name + "}"
    sentinel = _sentinel(r)
    if sentinel is not None and "url" in r.data:
        raise r.error("give either url or sentinel, not both", "sentinel")
    if sentinel is not None:
        url = "sentinel"
    elif r.data.get("cluster") is not None and r.data.get("url") is None:
        url = _cluster_url(r)  # the first seed node's, so every reader of redis.url has one
    else:
        url = r.get("url", str)
    if url not in ("embedded", "sentinel"):
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise r.error(f"{url!r} must start with redis://, rediss:// or unix://", "url")
        if parts.password:
            raise r.error(
                "the URL carries a password; put it in redis.password as {env: ...} or {file: ...}",
                "url",
            )
        for param in sorted(parse_qs(parts.query, keep_blank_values=True)):
            if param.lower() in ("password", "username", "user") or param.lower().startswith(
                ("ssl", "tls")
            ):
                raise r.error(
                    f"the URL's query parameter {param!r} is refused: credentials go in "
                    "redis.username / redis.password, TLS settings in redis.tls",
                    "url",
                )
    stream = r.get("stream", str, f"{tag}:stream")
    hashed = first_hash_tag(stream)
    if hashed != tag:
        found = f"its first {{...}} is {hashed}" if hashed else "it has no {...}"
        raise r.error(
            f"{stream!r} must carry the hash tag {tag} as its first {{...}} (the part Redis "
            f"hashes), so the migration's keys share a Redis Cluster slot; {found}",
            "stream",
        )
    redis_settings = RedisSettings(
        url=url,
        stream=stream,
        layout=r.get("layout", str, "merged", LAYOUTS),
        username=r.secret("username"),
        password=r.secret("password"),
        persistence=r.get("persistence", str, "any", PERSISTENCE),
        fault_deadline_ms=parse_duration_ms(
            r.get("fault_deadline", str, "2m"), f"{source}: redis.fault_deadline"
        ),
        max_future_skew_ms=parse_duration_ms(
            r.get("max_future_skew", str, "5m"), f"{source}: redis.max_future_skew"
        ),
        tls=_tls(r, url),
        sentinel=sentinel,
        cluster=_cluster(r, url),
    )
    r.finish()
    top.used.add("start")
    start = parse_start(data.get("start", "earliest"), f"{source}: start")
    batch_size = top.get("batch_size", int, 2000)
    if not 1 <= batch_size <= 50_000:
        raise top.error(f"{batch_size} is outside 1..50000", "batch_size")
    trim = _trim(top)
    writer = _writer(top)
    top.finish()
    return StreamConfig(name, kafka, redis_settings, start, batch_size, trim, source, writer)


def _writer(top: _Fields) -> WriterSettings:
    w = top.child("writer", required=False)
    if w is None:
        return WriterSettings()
    settings = WriterSettings(
        partitioner=w.get("partitioner", str, DEFAULT_PARTITIONER, PARTITIONERS)
    )
    w.finish()
    return settings


def _addresses(s: _Fields) -> tuple[tuple[str, int], ...]:
    addresses = []
    for item in s.get("addresses", list):
        host, _, port = str(item).rpartition(":")
        if not host or not port.isdigit():
            raise s.error(f"{item!r} is not host:port", "addresses")
        addresses.append((host, int(port)))
    if not addresses:
        raise s.error("needs at least one host:port", "addresses")
    return tuple(addresses)


def url_database(url: str) -> int:
    """The database a ``redis://``, ``rediss://`` or ``unix://`` URL selects, as redis-py reads
    it: ``?db=N`` first, then the path (``/N``), else 0. ValueError when it is not a number."""
    parts = urlsplit(url)
    query = parse_qs(parts.query).get("db")
    if query:
        return int(query[0])
    path = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
    return int(path) if path else 0


def _cluster_url(r: _Fields) -> str:
    """``redis.url`` of a cluster given by its seed nodes alone: the first seed's, over TLS
    when ``redis.tls`` is given."""
    c = _Fields(r.source, f"{r.path}.cluster", r.data["cluster"])
    host, port = _addresses(c)[0]
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    scheme = "rediss" if r.data.get("tls") is not None else "redis"
    r.used.add("url")
    return f"{scheme}://{host}:{port}/0"


def _cluster(r: _Fields, url: str) -> RedisCluster | None:
    c = r.child("cluster", required=False)
    if c is None:
        return None
    addresses = _addresses(c)
    c.finish()
    if url == "sentinel":
        raise r.error("give either sentinel or cluster, not both", "cluster")
    if url == "embedded":
        raise r.error(
            "the embedded Redis is one standalone server, not a cluster; give the cluster's "
            "nodes in redis.cluster.addresses and leave out redis.url (or name one node in it)",
            "cluster",
        )
    if url.startswith("unix://"):
        raise r.error("a Redis Cluster is reached over TCP: redis.url may not be unix://", "url")
    try:
        db = url_database(url) if url != "embedded" else 0
    except ValueError:
        raise r.error(f"{url!r} names a database that is not a number", "url") from None
    if db != 0:
        raise r.error(f"a Redis Cluster has database 0 only, but redis.url selects {db}", "cluster")
    return RedisCluster(addresses)


def _sentinel(r: _Fields) -> RedisSentinel | None:
    s = r.child("sentinel", required=False)
    if s is None:
        return None
    addresses = _addresses(s)
    service = s.get("service", str)
    db = s.get("db", int, 0)
    password = s.secret("password")
    s.finish()
    return RedisSentinel(addresses, service, db, password)


def _tls(r: _Fields, url: str) -> RedisTls | None:
    t = r.child("tls", required=False)
    if t is None:
        return None
    files = {}
    for name in ("ca_file", "cert_file", "key_file"):
        value = t.get(name, str, None)
        if value is not None and not Path(value).expanduser().is_file():
            raise t.error(f"{value!r} is not a readable file", name)
        files[name] = str(Path(value).expanduser()) if value else None
    insecure = t.get("insecure_skip_verify", bool, False)
    t.finish()
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise r.error("give both cert_file and key_file (mutual TLS) or neither", "tls")
    if url != "sentinel" and not url.startswith("rediss://"):
        raise r.error(f"redis.tls needs a rediss:// URL, got {url.split('://')[0]}://", "tls")
    return RedisTls(insecure_skip_verify=insecure, **files)


def _trim(top: _Fields) -> TrimPolicy | None:
    t = top.child("trim", required=False)
    if t is None:
        return None
    age = t.get("max_age", str, None)
    length = t.get("max_len", int, None)
    t.finish()
    if (age is None) == (length is None):
        raise top.error("give exactly one of max_age (e.g. '7d') or max_len", "trim")
    if length is not None:
        if length < 0:
            raise t.error(f"{length} must be >= 0", "max_len")
        return TrimPolicy(max_len=length)
    return TrimPolicy(max_age_ms=parse_duration_ms(age, f"{t.source}: trim.max_age"))


def parse_duration_ms(text: str, where: str = "duration") -> int:
    """``90s``, ``36h``, ``7d``, ``2w`` ... as milliseconds."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"{where}: {text!r} is not a positive duration (units ms, s, m, h, d, w)")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _security(k: _Fields) -> dict[str, Any]:
    s = k.child("security", required=False)
    if s is None:
        return {}
    protocol = s.get("protocol", str, "PLAINTEXT", PROTOCOLS)
    mechanism = s.get("sasl_mechanism", str, None, MECHANISMS)
    out = dict(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        username=s.secret("username"),
        password=s.secret("password"),
        ssl_cafile=s.get("ssl_cafile", str, None),
    )
    s.finish()
    if protocol.startswith("SASL") and (mechanism is None or out["password"] is None):
        raise k.error(
            f"protocol {protocol} needs sasl_mechanism, username and password", "security"
        )
    return out


def load_config(ref: str | os.PathLike[str]) -> StreamConfig:
    """Load a stream config by path, or by name from ``runbook/streams/<name>.yaml``."""
    path = Path(ref)
    if not path.suffix and not path.exists():
        path = STREAMS_DIR / f"{ref}.yaml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        known = sorted(p.stem for p in STREAMS_DIR.glob("*.yaml")) if STREAMS_DIR.is_dir() else []
        hint = f" (known streams: {', '.join(known)})" if known else ""
        raise ConfigError(f"no stream config at {path}{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, str(path))
