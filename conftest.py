"""Root conftest: the notebooks (collected by nbval with --nbval-lax) run as committed, with
their default parameters, against embedded services this hook starts before the first
notebook's kernel, with the demo topic seeded. Their kernels inherit FERRY_HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_state: dict = {}


def _is_notebook_item(item) -> bool:
    return str(getattr(item, "fspath", "")).endswith(".ipynb")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not _is_notebook_item(item) or "services" in _state:
        return
    from ferry.config import load_config
    from ferry.seed import seed_demo_topic
    from ferry.services import start_services

    home = Path(tempfile.mkdtemp(prefix="ferry-nbval-"))
    os.environ["FERRY_HOME"] = str(home)
    services = start_services(home / "services")
    _state["services"] = services
    config = load_config(Path(__file__).parent / "runbook" / "streams" / "payments.yaml")
    seed_demo_topic(services.kafka_bootstrap, config.kafka.topic, 20_000, 6)


def pytest_sessionfinish(session, exitstatus):
    services = _state.pop("services", None)
    if services is not None:
        from ferry.services import stop_services

        stop_services(Path(services.folder))
