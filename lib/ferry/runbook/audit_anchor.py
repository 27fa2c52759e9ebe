"""The audit archive's anchor: its manifest head recorded outside the archive.

A manifest only proves the files match the manifest; whoever edits evidence can rebuild it.
So each run's head hash also goes into the migration's events stream in Redis (type
``audit``), and, when an operator key is configured, an Ed25519 signature of it (with the
``cryptography`` library) goes beside it, in Redis and in ``manifest.sig`` in the archive.
``ferry audit verify`` compares the archive's head with the recorded one and checks the
signature against the operator's public key.

Keys are files named by environment variables, never parameters:
``FERRY_AUDIT_SIGNING_KEY`` (PEM private key, when signing) and ``FERRY_AUDIT_PUBLIC_KEY``
(PEM public key, when verifying).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ferry.errors import ConfigError
from ferry.runbook.audit import SIGNATURE as SIGNATURE_FILE

SIGNING_KEY_ENV = "FERRY_AUDIT_SIGNING_KEY"
PUBLIC_KEY_ENV = "FERRY_AUDIT_PUBLIC_KEY"


@dataclass(frozen=True)
class Anchor:
    run_id: str
    head: str
    signature: str  # hex, "" when unsigned
    key_id: str  # sha256 of the raw public key, "" when unsigned


def _load(path_env: str, kind: str):
    path = os.environ.get(path_env)
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
        if kind == "private":
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path_env}={path}: not a readable PEM {kind} key ({exc})") from exc
    wanted = Ed25519PrivateKey if kind == "private" else Ed25519PublicKey
    if not isinstance(key, wanted):
        raise ConfigError(f"{path_env}={path}: an Ed25519 {kind} key is needed")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(folder: Path, name: str = "operator") -> tuple[Path, Path]:
    """An Ed25519 key pair as ``folder/<name>.pem`` (private, mode 0600) and ``<name>.pub``."""
    key = Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.touch(mode=0o600)
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def make_anchor(run_id: str, head: str) -> Anchor:
    """The anchor of a run, signed when ``FERRY_AUDIT_SIGNING_KEY`` names a key."""
    private = _load(SIGNING_KEY_ENV, "private")
    if private is None:
        return Anchor(run_id, head, "", "")
    signature = private.sign(f"ferry-audit:{run_id}:{head}".encode()).hex()
    return Anchor(run_id, head, signature, key_id(private.public_key()))


def write_signature(run_dir: Path, anchor: Anchor) -> None:
    if anchor.signature:
        (run_dir / SIGNATURE_FILE).write_text(json.dumps(anchor.__dict__, indent=2) + "\n")


def check_anchor(archive_head: str, run_id: str, recorded: Anchor | None) -> list[str]:
    """Problems with the archive's head against the anchor recorded for its run (pure but
    for the public key, read from ``FERRY_AUDIT_PUBLIC_KEY``)."""
    if recorded is None:
        return [f"no anchor recorded for run {run_id}: the archive cannot be checked against it"]
    problems = []
    if recorded.head != archive_head:
        problems.append(
            "manifest.json: its head differs from the one recorded when the run ended "
            "(the manifest was rebuilt after the evidence changed)"
        )
    public = _load(PUBLIC_KEY_ENV, "public")
    if public is None:
        return problems
    if not recorded.signature:
        return [*problems, f"run {run_id} was not signed, but a public key was given"]
    if key_id(public) != recorded.key_id:
        return [*problems, f"run {run_id} was signed with key {recorded.key_id}, not this one"]
    try:
        public.verify(
            bytes.fromhex(recorded.signature), f"ferry-audit:{run_id}:{recorded.head}".encode()
        )
    except (InvalidSignature, ValueError):
        problems.append(f"the recorded anchor of run {run_id} is not signed by that key")
    return problems


def record_anchor(config, anchor: Anchor) -> None:
    """Into the migration's events stream, beside its phase changes."""
    from ferry.core.ingest import migration_keys
    from ferry.live.phases import log_event
    from ferry.redis.target import connect_redis

    log_event(connect_redis(config), migration_keys(config), "audit", **anchor.__dict__)


def read_anchor(config, run_id: str) -> Anchor | None:
    from ferry.core.ingest import migration_keys
    from ferry.live.phases import read_events
    from ferry.redis.target import connect_redis

    found = [
        e
        for e in read_events(connect_redis(config), migration_keys(config))
        if e.get("type") == "audit" and e.get("run_id") == run_id
    ]
    if not found:
        return None
    e = found[-1]
    return Anchor(run_id, e.get("head", ""), e.get("signature", ""), e.get("key_id", ""))


def verify_anchor(run_dir: Path) -> list[str]:
    """The archive's head against the anchor its migration recorded (reads Redis through
    the config the run used)."""
    from ferry.config import load_config

    manifest = json.loads((run_dir / "manifest.json").read_text())
    meta = manifest["metadata"]
    source = meta.get("parameters", {}).get("config_file") or meta["stream"]
    config = load_config(source if Path(str(source)).is_file() else meta["stream"])
    return check_anchor(manifest["head"], meta["run_id"], read_anchor(config, meta["run_id"]))
