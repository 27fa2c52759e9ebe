"""The optional parts of ferry and what each needs installed.

The core (mirror, validate, DualWriter, StreamConsumer, the embedded services, the CLI verbs
that drive them) needs none of the notebook stack. ``ferry run`` and ``ferry demo`` need the
``runbook`` extra; ``ferry lab`` needs ``lab``. A verb whose extra is missing says so in one
line instead of a traceback.
"""

from __future__ import annotations

import importlib.util

from ferry.errors import FerryError

# top-level modules each extra provides (its distributions' import names)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "runbook": (
        "papermill",
        "great_expectations",
        "pandas",
        "altair",
        "vl_convert",
        "nbconvert",
        "nbformat",
        "nbclient",
        "ipykernel",
        "jsonschema",
        "bs4",
    ),
    "lab": ("jupyterlab", "ipywidgets", "jupyter_server"),
}


class MissingExtra(FerryError):
    """A verb needs an optional extra that is not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` (and of the extras it includes) that cannot be imported."""
    modules = EXTRA_MODULES[extra] + (EXTRA_MODULES["runbook"] if extra == "lab" else ())
    return [m for m in modules if not _installed(m)]


def message(extra: str, verb: str | None, missing: list[str]) -> str:
    what = f"'ferry {verb}'" if verb else "this"
    return (
        f"{what} needs the {extra} extra: pip install 'ferry[{extra}]' "
        f"(not installed: {', '.join(missing)})"
    )


def require(extra: str, verb: str | None = None) -> None:
    """Raise MissingExtra (one line, naming the pip command) unless ``extra`` is installed."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(message(extra, verb, missing))


def explain(exc: ModuleNotFoundError, verb: str | None = None) -> str | None:
    """The one-line message for an import of an extra's module that failed, else None."""
    top = (exc.name or "").split(".")[0]
    for extra in ("runbook", "lab"):
        if top in EXTRA_MODULES[extra]:
            return message(extra, verb, [top])
    return None
