"""The archive's head against the anchor recorded for its run, signed and unsigned."""

from __future__ import annotations

import pytest

from ferry.errors import ConfigError
from ferry.runbook.audit_anchor import Anchor, check_anchor, generate_key_pair, make_anchor

HEAD = "ab" * 32


def test_unsigned_anchor_catches_a_rebuilt_manifest(monkeypatch):
    monkeypatch.delenv("FERRY_AUDIT_SIGNING_KEY", raising=False)
    monkeypatch.delenv("FERRY_AUDIT_PUBLIC_KEY", raising=False)
    anchor = make_anchor("run-1", HEAD)
    assert anchor.signature == ""
    assert check_anchor(HEAD, "run-1", anchor) == []
    assert "rebuilt" in check_anchor("cd" * 32, "run-1", anchor)[0]
    assert "no anchor recorded" in check_anchor(HEAD, "run-1", None)[0]


def test_signed_anchor_verifies_with_the_operators_key_only(tmp_path, monkeypatch):
    private, public = generate_key_pair(tmp_path, "operator")
    _, other = generate_key_pair(tmp_path, "other")
    monkeypatch.setenv("FERRY_AUDIT_SIGNING_KEY", str(private))
    anchor = make_anchor("run-1", HEAD)
    monkeypatch.setenv("FERRY_AUDIT_PUBLIC_KEY", str(public))
    assert check_anchor(HEAD, "run-1", anchor) == []
    forged = Anchor("run-1", HEAD, "00" * 64, anchor.key_id)
    assert "not signed by that key" in check_anchor(HEAD, "run-1", forged)[0]
    replayed = Anchor("run-2", HEAD, anchor.signature, anchor.key_id)  # another run's signature
    assert "not signed by that key" in check_anchor(HEAD, "run-2", replayed)[0]
    monkeypatch.setenv("FERRY_AUDIT_PUBLIC_KEY", str(other))
    assert "not this one" in check_anchor(HEAD, "run-1", anchor)[0]


def test_a_key_that_is_not_ed25519_is_named(tmp_path, monkeypatch):
    (tmp_path / "junk.pem").write_text("not a key")
    monkeypatch.setenv("FERRY_AUDIT_SIGNING_KEY", str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match="FERRY_AUDIT_SIGNING_KEY=.*junk.pem"):
        make_anchor("run-1", HEAD)


def test_the_private_key_is_readable_by_its_owner_only(tmp_path):
    private, _ = generate_key_pair(tmp_path / "keys")
    assert private.stat().st_mode & 0o077 == 0
