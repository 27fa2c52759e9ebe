"""Root conftest: the notebooks (collected by nbval with --nbval-lax) run as committed, with
their default parameters, in runbook order, against embedded services this hook starts
before the first notebook's kernel, with the demo topic seeded and live traffic flowing
through a DualWriter (steps 02 and 05 need live writers). Kernels inherit FERRY_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
_state: dict = {}


def _is_notebook_item(item) -> bool:
    return str(getattr(item, "fspath", "")).endswith(".ipynb")


def pytest_collection_modifyitems(session, config, items):
    """Notebooks run in the runbook's order (each step needs the one before it)."""
    from ferry.runbook.plan import load_steps

    order = {(ROOT / s.notebook).resolve(): n for n, s in enumerate(load_steps()) if s.notebook}
    others = [i for i in items if not _is_notebook_item(i)]
    notebooks = [i for i in items if _is_notebook_item(i)]
    notebooks.sort(key=lambda i: order.get(Path(str(i.fspath)).resolve(), len(order)))
    items[:] = others + notebooks


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not _is_notebook_item(item) or "services" in _state:
        return
    from ferry.config import load_config
    from ferry.services.seed import seed_demo_topic
    from ferry.services.servers import start_services

    home = Path(tempfile.mkdtemp(prefix="ferry-nbval-"))
    os.environ["FERRY_HOME"] = str(home)
    services = start_services(home / "services")
    _state["services"] = services
    config = load_config(ROOT / "runbook" / "streams" / "payments.yaml")
    seed_demo_topic(services.kafka_bootstrap, config.kafka.topic, 20_000, 6)
    _state["traffic"] = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", "traffic", "payments", "--rate", "300"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def pytest_sessionfinish(session, exitstatus):
    traffic = _state.pop("traffic", None)
    if traffic is not None:
        traffic.terminate()
        traffic.wait(timeout=60)
    services = _state.pop("services", None)
    if services is not None:
        from ferry.config import load_config
        from ferry.core.follower import stop_follower
        from ferry.services.servers import stop_services

        stop_follower(load_config(ROOT / "runbook" / "streams" / "payments.yaml"))
        stop_services(Path(services.folder))
