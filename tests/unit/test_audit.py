import json

import pytest

from ferry.runbook.audit import build_manifest, verify_archive


@pytest.fixture
def archive(tmp_path):
    (tmp_path / "00-capacity-sizing.ipynb").write_text('{"cells": []}')
    (tmp_path / "00-capacity-sizing.html").write_text("<html>chart</html>")
    (tmp_path / "data-docs").mkdir()
    (tmp_path / "data-docs" / "index.html").write_bytes(b"\x00docs")
    build_manifest(tmp_path, {"stream": "payments", "steps": [{"id": "00", "outcome": "passed"}]})
    return tmp_path


def test_fresh_archive_verifies(archive):
    assert verify_archive(archive) == []
    manifest = json.loads((archive / "manifest.json").read_text())
    paths = [e["path"] for e in manifest["artifacts"]]
    assert paths == ["00-capacity-sizing.html", "00-capacity-sizing.ipynb", "data-docs/index.html"]
    assert manifest["artifacts"][0]["prev"] == manifest["metadata"]["hash"]
    assert manifest["head"] == manifest["artifacts"][-1]["hash"]


def test_one_altered_byte_is_named(archive):
    target = archive / "data-docs" / "index.html"
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    assert verify_archive(archive) == [
        "data-docs/index.html: altered (sha256 differs from the manifest)"
    ]


def test_altered_outcome_in_the_manifest_is_found(archive):
    path = archive / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metadata"]["steps"][0]["outcome"] = "failed"
    path.write_text(json.dumps(manifest))
    assert verify_archive(archive) == [
        "manifest.json: the metadata (parameters, versions or step outcomes) was altered"
    ]


def test_rehashed_file_breaks_the_chain(archive):
    # someone edits a notebook and updates its sha256 in the manifest: the chain tells
    path = archive / "manifest.json"
    (archive / "00-capacity-sizing.ipynb").write_text('{"cells": [1]}')
    manifest = json.loads(path.read_text())
    from ferry.runbook.audit import sha256_file

    entry = next(e for e in manifest["artifacts"] if e["path"] == "00-capacity-sizing.ipynb")
    entry["sha256"] = sha256_file(archive / "00-capacity-sizing.ipynb")
    path.write_text(json.dumps(manifest))
    problems = verify_archive(archive)
    assert (
        "manifest.json: the entry for 00-capacity-sizing.ipynb was altered (hash chain broken)"
        in problems
    )


def test_missing_and_added_files(archive):
    (archive / "00-capacity-sizing.html").unlink()
    (archive / "later.txt").write_text("x")
    assert verify_archive(archive) == [
        "00-capacity-sizing.html: missing",
        "later.txt: not in the manifest (added after the run)",
    ]


def test_no_manifest(tmp_path):
    assert verify_archive(tmp_path) == [f"{tmp_path}/manifest.json: no manifest"]
