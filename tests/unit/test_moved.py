"""The flat layout's module names still import, as the very module they moved to."""

import importlib

import pytest

from ferry._moved import MOVES


@pytest.mark.parametrize("old", sorted(MOVES))
def test_old_module_name_is_the_moved_module(old):
    assert importlib.import_module(f"ferry.{old}") is importlib.import_module(f"ferry.{MOVES[old]}")


def test_public_api_is_at_the_top():
    import ferry
    from ferry.errors import FerryError
    from ferry.live.dualwriter import DualWriter

    assert ferry.DualWriter is DualWriter
    assert ferry.FerryError is FerryError


def test_every_module_is_in_a_subpackage():
    from pathlib import Path

    top = Path(importlib.import_module("ferry").__file__).parent
    flat = sorted(p.stem for p in top.glob("*.py"))
    assert set(flat) <= {
        "__init__",
        "_moved",
        "cli",
        "config",
        "errors",
        "exitcodes",
        "extras",
        "logs",
        "metrics",
    }
