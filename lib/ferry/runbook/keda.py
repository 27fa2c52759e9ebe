"""KEDA objects for the consumers of a migrated stream, and their check against KEDA's CRDs.

:func:`render_scaled_object` writes a ScaledObject with one lag trigger per consumer group
handed over in step 05 and stream it reads (the stream, or in the per-partition and spread
layouts each partition's), reaching Redis the way a pod must: host:port (never a Unix
socket), the database, TLS, Sentinel or Cluster as the stream's config says, and the ACL user
and password through a TriggerAuthentication that references Kubernetes Secrets (never
values).

:func:`validate_keda_objects` checks rendered objects against the ``openAPIV3Schema`` of
KEDA's own CustomResourceDefinitions, which :func:`fetch_keda_crds` takes from the KEDA
module on the Go module proxy once and caches under ``$FERRY_KEDA_CACHE`` (default
``~/.cache/ferry/keda``, following ``XDG_CACHE_HOME``).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import math
import os
import re
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from ferry.config import StreamConfig, url_database
from ferry.errors import ConfigError, FerryError

KEDA_VERSION = "v2.16.1"
KEDA_MODULE_ZIP = "https://proxy.golang.org/github.com/kedacore/keda/v2/@v/{version}.zip"
# the CRDs the rendered objects are checked against, with the sha256 of each file as
# KEDA v2.16.1 ships it (a module zip's content never changes once published)
KEDA_CRDS = {
    "keda.sh_scaledobjects.yaml": (
        "3c91c5423e809a456e67fc47a85a095a2ade29dd00dfc96e92a3aa6d8e6a5526"
    ),
    "keda.sh_triggerauthentications.yaml": (
        "a7611dd4c412a2f84719cc804c5f13a10b62dbd172bc54a2164834aab27046d1"
    ),
}
API_VERSION = "keda.sh/v1alpha1"
# the Secret keys the TriggerAuthentication reads: a kubernetes.io/tls Secret's names for TLS
TLS_KEYS = {"ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class KedaError(FerryError):
    """The KEDA objects cannot be rendered as asked, or KEDA's CRDs cannot be had."""


def lag_threshold(event_rate: float, drain_seconds: float = 10.0, floor: int = 100) -> int:
    """Pending entries per replica before KEDA adds one: ``drain_seconds`` of traffic."""
    return max(floor, math.ceil(event_rate * drain_seconds))


def kubernetes_name(text: str) -> str:
    """A stream name as a Kubernetes object name: lower case, ``_`` as ``-``."""
    name = re.sub(r"[^a-z0-9.-]", "-", text.lower()).strip("-.")
    return name or "ferry"


def join_host_port(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{host}:{port}"


def pod_address(config: StreamConfig, override: str | None = None) -> str:
    """host:port of the Redis primary as a pod reaches it: ``override`` when given, else from
    ``redis.url``. A Unix socket is refused: it is a file on ferry's machine, not an address."""
    if override:
        host, _, port = override.rpartition(":")
        if not host or not port.isdigit():
            raise KedaError(f"the KEDA address {override!r} is not host:port (keda_address)")
        return override
    url = config.redis.url
    if url == "embedded":  # the demo's own server on loopback
        from ferry.redis.target import resolve_url

        url = resolve_url(config.redis)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raise ConfigError(
            f"{config.source}: redis.url: {url!r} is a unix socket, which a pod cannot reach; "
            "KEDA needs the host:port pods use for this Redis: give it as keda_address (step 06's "
            "parameter) or use a redis:// or rediss:// URL"
        )
    if not parts.hostname:
        raise ConfigError(f"{config.source}: redis.url: {url!r} names no host for KEDA to reach")
    return join_host_port(parts.hostname, parts.port or 6379)


def _database(config: StreamConfig) -> int:
    if config.redis.sentinel is not None:
        return config.redis.sentinel.db
    if config.redis.url == "embedded":
        return 0
    try:
        return url_database(config.redis.url)
    except ValueError:
        raise ConfigError(
            f"{config.source}: redis.url: the database in {config.redis.url!r} is not a number"
        ) from None


def _check_name(value: str, parameter: str, pattern: re.Pattern, what: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise KedaError(
            f"{parameter} {value!r} is not a valid Kubernetes {what} "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
        )


def render_scaled_object(
    config: StreamConfig,
    *,
    groups: Sequence[str],
    deployment: str,
    namespace: str,
    lag_count: int,
    min_replicas: int = 1,
    max_replicas: int = 10,
    auth_secret: str = "redis-auth",
    tls_secret: str = "redis-tls",
    address: str | None = None,
    partitions: Sequence[int] | None = None,
) -> str:
    """The ScaledObject (one lag trigger per handed-over consumer ``groups`` and stream) and,
    when Redis needs credentials or client TLS files, the TriggerAuthentication it references.

    In the ``merged`` layout a group reads one stream, ``redis.stream``: one trigger per
    group. In the ``per-partition`` and ``spread`` layouts a group is a Redis consumer group
    on each partition's stream, so each group has a trigger per stream of ``partitions`` (the
    migration's armed partitions, :func:`stream_partitions`), all with the same consumerGroup.
    KEDA scales by the largest trigger, so each stream's ``lagCount`` is ``lag_count`` shared
    out over the streams: lag spread evenly over N streams scales as the same lag on one.

    Secrets: ``auth_secret`` holds the keys ``username``, ``password`` (and
    ``sentinel-password`` when the Sentinels have one); ``tls_secret`` holds ``ca.crt``,
    ``tls.crt`` and ``tls.key``, as a kubernetes.io/tls Secret names them."""
    if not groups:
        raise KedaError(
            "no consumer group was handed over (step 05): a lag trigger needs the Redis "
            "consumer group the deployment reads with"
        )
    from ferry.core.ingest import migration_keys

    keys = migration_keys(config)
    if keys.layout == "merged":
        streams = [keys.stream]
    elif partitions:
        streams = keys.streams(sorted(partitions))
    else:
        raise KedaError(
            f"{config.name!r} has redis.layout {keys.layout!r}: a handed-over group reads every "
            "partition's stream, so the partitions are needed for its triggers (partitions=; "
            "stream_partitions(client, config) reads the armed ones)"
        )
    _check_name(namespace, "keda_namespace", _DNS_LABEL, "namespace")
    _check_name(deployment, "keda_deployment", _DNS_SUBDOMAIN, "Deployment name")
    redis_settings = config.redis
    sentinel, cluster = redis_settings.sentinel, redis_settings.cluster
    if sentinel is not None:
        scaler = "redis-sentinel-streams"
        where = {
            "addresses": ",".join(join_host_port(h, p) for h, p in sentinel.addresses),
            "sentinelMaster": sentinel.service,
            "databaseIndex": str(sentinel.db),
        }
    elif cluster is not None:
        scaler = "redis-cluster-streams"  # a cluster has database 0 only
        where = {"addresses": ",".join(join_host_port(h, p) for h, p in cluster.addresses)}
    else:
        scaler = "redis-streams"
        where = {"address": pod_address(config, address), "databaseIndex": str(_database(config))}
    tls = redis_settings.tls
    secure = tls is not None or redis_settings.url.startswith("rediss://")
    connection = {**where, "enableTLS": "true" if secure else "false"}
    if tls is not None and tls.insecure_skip_verify:
        connection["unsafeSsl"] = "true"

    refs = []
    if redis_settings.username is not None:
        refs.append(("username", auth_secret, "username"))
    if redis_settings.password is not None:
        refs.append(("password", auth_secret, "password"))
    if sentinel is not None and sentinel.password is not None:
        refs.append(("sentinelPassword", auth_secret, "sentinel-password"))
    if tls is not None:
        # TLS is switched on by the trigger's enableTLS; KEDA refuses it in both places, so
        # the TriggerAuthentication carries only the files (no `tls` parameter)
        for parameter, present in (
            ("ca", tls.ca_file),
            ("cert", tls.cert_file),
            ("key", tls.key_file),
        ):
            if present:
                refs.append((parameter, tls_secret, TLS_KEYS[parameter]))

    # KEDA scales to the largest trigger's lag / lagCount: each partition stream's trigger
    # gets the group's threshold shared out, so evenly spread lag scales as one stream would
    per_stream = max(1, lag_count // len(streams))
    name = f"{kubernetes_name(config.name)}-consumer"
    auth_name = f"{name}-redis-auth"
    triggers = []
    for group in groups:
        for stream in streams:
            trigger: dict = {
                "type": scaler,
                "metadata": {
                    **connection,
                    "stream": stream,
                    "consumerGroup": group,
                    "lagCount": str(per_stream),
                },
            }
            if refs:
                trigger["authenticationRef"] = {"name": auth_name}
            triggers.append(trigger)
    scaled = {
        "apiVersion": API_VERSION,
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": deployment},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "triggers": triggers,
        },
    }
    documents = [scaled]
    if refs:
        documents.append(
            {
                "apiVersion": API_VERSION,
                "kind": "TriggerAuthentication",
                "metadata": {"name": auth_name, "namespace": namespace},
                "spec": {
                    "secretTargetRef": [
                        {"parameter": p, "name": secret, "key": key} for p, secret, key in refs
                    ]
                },
            }
        )
    return yaml.safe_dump_all(documents, sort_keys=False)


def triggered_groups(yaml_text: str) -> set[str]:
    """The consumer groups the ScaledObjects in ``yaml_text`` have a trigger for."""
    return {
        trigger.get("metadata", {}).get("consumerGroup")
        for obj in yaml.safe_load_all(yaml_text)
        if isinstance(obj, dict) and obj.get("kind") == "ScaledObject"
        for trigger in obj.get("spec", {}).get("triggers") or []
    } - {None}


def handed_over_groups(client, config: StreamConfig) -> list[str]:
    """The consumer groups step 05 handed over to Redis, sorted: those whose hand-over record
    (``{tag}:ferry:group:GROUP:handover``) says ``done``, in any layout (the record is written
    last, once the group exists on every stream it reads)."""
    from ferry.core.ingest import migration_keys
    from ferry.live.group_keys import recorded_groups

    return recorded_groups(client, migration_keys(config))


def stream_partitions(client, config: StreamConfig) -> list[int] | None:
    """The partitions whose streams a handed-over group reads (``render_scaled_object``'s
    ``partitions``): None in the merged layout (one stream), else the armed partitions."""
    from ferry.core.ingest import migration_keys
    from ferry.live.finish import handed_over_partitions

    if config.redis.layout == "merged":
        return None
    return handed_over_partitions(client, migration_keys(config))


def groups_on_streams(client, config: StreamConfig, partitions: Sequence[int] | None) -> set[str]:
    """The consumer groups that exist on every stream a handed-over group reads (the stream,
    or each of ``partitions``' streams); a stream that does not exist has none."""
    from ferry.core.ingest import migration_keys
    from ferry.live.group_keys import group_targets, groups_on

    found: set[str] | None = None
    for target in group_targets(migration_keys(config), "", list(partitions or [])):
        here = groups_on(client, target.stream)
        found = here if found is None else found & here
    return found or set()


# ---- KEDA's CRDs


def keda_cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferry" / "keda"
    return Path(os.environ.get("FERRY_KEDA_CACHE", default))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached(folder: Path, version: str) -> bool:
    """The CRDs are in ``folder`` (and, for the pinned version, are the files KEDA ships)."""
    return all(
        (folder / name).is_file()
        and (version != KEDA_VERSION or _sha256((folder / name).read_bytes()) == expected)
        for name, expected in KEDA_CRDS.items()
    )


def fetch_keda_crds(version: str = KEDA_VERSION, timeout_s: float = 60.0) -> Path:
    """The folder holding KEDA's ScaledObject and TriggerAuthentication CRDs, taken from the
    KEDA module's zip on the Go module proxy when not cached yet (checked by sha256)."""
    folder = keda_cache() / version
    if _cached(folder, version):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs fetching at once share one download
        if _cached(folder, version):
            return folder
        url = KEDA_MODULE_ZIP.format(version=version)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
                archive = zipfile.ZipFile(io.BytesIO(response.read()))
        except (OSError, zipfile.BadZipFile) as exc:
            raise KedaError(
                f"cannot fetch KEDA {version}'s CRDs from {url}: {exc}; with no network, put "
                f"{' and '.join(KEDA_CRDS)} (from KEDA's config/crd/bases) in {folder}"
            ) from exc
        prefix = f"github.com/kedacore/keda/v2@{version}/config/crd/bases/"
        folder.mkdir(parents=True, exist_ok=True)
        for name, expected in KEDA_CRDS.items():
            try:
                data = archive.read(prefix + name)
            except KeyError:
                raise KedaError(f"{url} holds no {prefix}{name}") from None
            if version == KEDA_VERSION and _sha256(data) != expected:
                raise KedaError(
                    f"{name} from {url} has sha256 {_sha256(data)}, not the {expected} "
                    f"KEDA {version} ships: refusing it"
                )
            staging = folder / f".{name}.partial"
            staging.write_bytes(data)
            staging.replace(folder / name)
    return folder


def _load_crds(crd_dir: Path) -> dict[str, dict]:
    """kind -> {version name: openAPIV3Schema} of every CRD file in ``crd_dir``."""
    schemas: dict[str, dict] = {}
    for name in KEDA_CRDS:
        path = Path(crd_dir) / name
        try:
            crd = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KedaError(f"cannot read the KEDA CRD {path}: {exc}") from exc
        group = crd["spec"]["group"]
        schemas[crd["spec"]["names"]["kind"]] = {
            f"{group}/{v['name']}": v["schema"]["openAPIV3Schema"]
            for v in crd["spec"]["versions"]
            if v.get("served", True)
        }
    return schemas


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(object)"


def validate_keda_objects(
    yaml_text: str, crd_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """What is wrong with the KEDA objects in ``yaml_text``, checked against the CRDs'
    ``openAPIV3Schema`` (and the names Kubernetes accepts, and that each trigger's
    authenticationRef names a TriggerAuthentication beside it). Empty when all are valid."""
    from jsonschema import Draft4Validator  # the runbook extra: OpenAPI v3 is draft 4's kin

    schemas = _load_crds(Path(crd_dir) if crd_dir is not None else fetch_keda_crds())
    try:
        documents = [d for d in yaml.safe_load_all(yaml_text) if d is not None]
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    if not documents:
        return ["no object to validate"]
    problems: list[str] = []
    auths = set()
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "TriggerAuthentication":
            meta = doc.get("metadata") or {}
            auths.add((meta.get("namespace"), meta.get("name")))
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            problems.append(f"document {index}: not a mapping")
            continue
        kind, api = doc.get("kind"), doc.get("apiVersion")
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        label = f"{kind} {meta.get('name', f'(document {index})')}"
        if kind not in schemas:
            problems.append(f"{label}: kind {kind!r} is not one of {', '.join(sorted(schemas))}")
            continue
        if api not in schemas[kind]:
            problems.append(f"{label}: apiVersion {api!r} is not one of {', '.join(schemas[kind])}")
            continue
        validator = Draft4Validator(schemas[kind][api])
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            problems.append(f"{label}: {_path(error)}: {error.message}")
        name, namespace = meta.get("name"), meta.get("namespace")
        if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
            problems.append(f"{label}: metadata.name {name!r} is not a valid Kubernetes name")
        if namespace is not None and (
            not isinstance(namespace, str) or not _DNS_LABEL.match(namespace)
        ):
            problems.append(f"{label}: metadata.namespace {namespace!r} is not a valid namespace")
        if kind == "ScaledObject":
            triggers = (doc.get("spec") or {}).get("triggers") or []
            for i, trigger in enumerate(triggers if isinstance(triggers, list) else []):
                ref = trigger.get("authenticationRef") if isinstance(trigger, dict) else None
                if (
                    isinstance(ref, dict)
                    and ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
                    and (namespace, ref.get("name")) not in auths
                ):
                    problems.append(
                        f"{label}: spec.triggers.{i}.authenticationRef names "
                        f"TriggerAuthentication {ref.get('name')!r}, which is not rendered beside it"
                    )
    return problems
