import json
from pathlib import Path

import pytest

from ferry.errors import ConfigError
from ferry.runbook.plan import Step, load_steps, plan_run, project_root

ROOT = Path(__file__).resolve().parents[2]


def steps():
    return load_steps(ROOT / "runbook" / "steps.yaml")


def test_steps_are_unique_and_backfill_comes_before_dual_write():
    ids = [s.id for s in steps()]
    assert len(ids) == len(set(ids))
    assert ids == ["00", "01", "03", "02", "04", "05", "06", "99"]


def test_every_notebook_is_in_the_step_list_exactly_once():
    listed = [s.notebook for s in steps() if s.notebook]
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))


def test_a_folder_listing_shows_the_notebooks_in_runbook_order():
    listed = [s.notebook for s in steps() if s.notebook]
    assert sorted(listed) == listed
    for step in steps():
        assert step.notebook is None or f"_{step.id}_" in step.notebook


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
            path.name
        )
        assert "parameters" in code[0]["metadata"].get("tags", []), f"{path.name}: first code cell"


def test_plan_full_from_and_only():
    all_steps = steps()
    full = [s.id for s in plan_run(all_steps)]
    assert "99" not in full and full[0] == "00"
    assert [s.id for s in plan_run(all_steps, start="03")] == full[full.index("03") :]
    assert [s.id for s in plan_run(all_steps, start="02")] == ["02", "04", "05", "06"]
    assert [s.id for s in plan_run(all_steps, start="validation")][0] == "04"
    assert [s.id for s in plan_run(all_steps, only="99")] == ["99"]


def test_unknown_step_names_the_choices():
    with pytest.raises(
        ConfigError, match="no step '42'; steps are 00-capacity-sizing, 01-preflight, 03-backfill"
    ):
        plan_run(steps(), start="42")


def test_bad_step_file(tmp_path):
    bad = tmp_path / "steps.yaml"
    bad.write_text(
        "steps:\n  - {id: '01', name: a, proves: x}\n  - {id: '01', name: b, proves: y}\n"
    )
    with pytest.raises(ConfigError, match="must be unique"):
        load_steps(bad)


def test_project_root_is_found_from_a_subfolder():
    assert project_root(ROOT / "notebooks") == ROOT
    assert Step("00", "x", None, "p").label == "00-x"
