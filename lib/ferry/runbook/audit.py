"""The audit archive's manifest: every artifact's sha256, chained entry to entry.

The first link hashes the run's metadata (stream, parameters, versions, step outcomes);
each artifact entry then hashes its own fields together with the previous link's hash.
Altering a file breaks its sha256; altering the manifest breaks the chain from that entry on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # written after the manifest: the signed anchor (audit_anchor)
GENESIS = "0" * 64


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_hash(prev: str, body: dict[str, Any]) -> str:
    """sha256 of the previous link and this entry's canonical JSON (without its own hash)."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "hash"}, sort_keys=True)
    return hashlib.sha256((prev + canonical).encode()).hexdigest()


def list_artifacts(run_dir: Path) -> list[str]:
    """Every file of the archive except the manifest, as sorted relative POSIX paths."""
    return sorted(
        p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    )


def build_manifest(run_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Hash every artifact and chain the entries; returns the manifest (also written)."""
    meta = {"kind": "metadata", **metadata, "prev": GENESIS}
    meta["hash"] = link_hash(GENESIS, meta)
    prev = meta["hash"]
    entries = []
    for rel in list_artifacts(run_dir):
        path = run_dir / rel
        entry = {
            "path": rel,
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "prev": prev,
        }
        entry["hash"] = link_hash(prev, entry)
        prev = entry["hash"]
        entries.append(entry)
    manifest = {"metadata": meta, "artifacts": entries, "head": prev}
    (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_archive(run_dir: Path) -> list[str]:
    """Problems found, each naming what was altered; an empty list means the archive is intact."""
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        meta, entries, head = manifest["metadata"], manifest["artifacts"], manifest["head"]
    except FileNotFoundError:
        return [f"{path}: no manifest"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{path}: not a ferry manifest ({exc})"]
    problems = []
    prev = GENESIS
    if meta.get("prev") != prev or meta.get("hash") != link_hash(prev, meta):
        problems.append(
            "manifest.json: the metadata (parameters, versions or step outcomes) was altered"
        )
    prev = meta.get("hash", "")
    listed = set()
    for entry in entries:
        rel = entry.get("path", "?")
        listed.add(rel)
        if entry.get("prev") != prev or entry.get("hash") != link_hash(prev, entry):
            problems.append(f"manifest.json: the entry for {rel} was altered (hash chain broken)")
        prev = entry.get("hash", "")
        file = run_dir / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(file) != entry.get("sha256"):
            problems.append(f"{rel}: altered (sha256 differs from the manifest)")
    if head != prev:
        problems.append(
            "manifest.json: head does not match the last link (entries removed or added)"
        )
    for rel in sorted(set(list_artifacts(run_dir)) - listed):
        problems.append(f"{rel}: not in the manifest (added after the run)")
    return problems
