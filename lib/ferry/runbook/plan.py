"""The runbook as data: ordered steps, loaded from ``runbook/steps.yaml`` and planned
without touching Kafka or Redis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ferry.errors import ConfigError

STEPS_FILE = Path("runbook/steps.yaml")


@dataclass(frozen=True)
class Step:
    id: str
    name: str
    notebook: str | None
    proves: str
    on_demand: bool = False

    @property
    def label(self) -> str:
        return f"{self.id}-{self.name}"


def load_steps(path: Path | None = None) -> list[Step]:
    """The steps in runbook order (the list's order; ids name the steps, as in DESIGN.md,
    and must be unique)."""
    path = path or project_root() / STEPS_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the runbook: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'steps' list")
    steps = []
    for i, raw in enumerate(data["steps"]):
        unknown = set(raw) - {"id", "name", "notebook", "proves", "on_demand"}
        if unknown or not {"id", "name", "proves"} <= set(raw):
            raise ConfigError(
                f"{path}: steps[{i}]: needs id, name, proves; unknown {sorted(unknown)}"
            )
        steps.append(
            Step(
                str(raw["id"]),
                raw["name"],
                raw.get("notebook"),
                raw["proves"],
                bool(raw.get("on_demand")),
            )
        )
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: step ids must be unique, got {ids}")
    return steps


def plan_run(steps: list[Step], start: str | None = None, only: str | None = None) -> list[Step]:
    """The steps a run executes: all regular steps in order, from ``start``, or ``only`` one.

    On-demand steps (rollback) run only when named with ``only``. Steps without a notebook
    yet stay in the plan: the runner records and prints them as not available, so the
    archive shows the hole instead of hiding it.
    """
    by_id = {s.id: s for s in steps}
    by_name = {s.name: s for s in steps}

    def find(ref: str) -> Step:
        step = by_id.get(ref) or by_name.get(ref)
        if step is None:
            raise ConfigError(f"no step {ref!r}; steps are {', '.join(s.label for s in steps)}")
        return step

    if only is not None:
        chosen = [find(only)]
    else:
        first = steps.index(find(start)) if start is not None else 0
        chosen = [s for s in steps[first:] if not s.on_demand]
    return chosen


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``runbook/`` (the working directory or one of its parents)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "runbook").is_dir():
            return folder
    return here


def ferry_home() -> Path:
    """Where ferry keeps its working state: ``$FERRY_HOME``, else ``.ferry`` in the project."""
    import os

    home = os.environ.get("FERRY_HOME")
    return Path(home).resolve() if home else project_root() / ".ferry"


def audit_home() -> Path:
    """The default archive root: ``$FERRY_HOME/audit`` when FERRY_HOME is set, else
    ``audit/`` in the project (an explicit ``--audit`` wins over both)."""
    import os

    return ferry_home() / "audit" if os.environ.get("FERRY_HOME") else project_root() / "audit"
