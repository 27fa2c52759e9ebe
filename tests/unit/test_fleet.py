"""``ferry run --all`` without servers: the plan, the refusals, reading a child's outcome, the
table and the exit status rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ferry.cli import main
from ferry.errors import UsageError
from ferry.exitcodes import ExitCode
from ferry.runbook.fleet import (
    StreamFile,
    StreamOutcome,
    build_child_command,
    check_run_options,
    choose_exit_status,
    discover_streams,
    format_table,
    plan_fleet,
    read_outcome,
)
from ferry.runbook.plan import load_steps

ROOT = Path(__file__).resolve().parents[2]


def ok(name: str, file: str | None = None) -> StreamFile:
    return StreamFile(Path(f"/s/{file or name}.yaml"), name)


def test_the_plan_runs_streams_in_name_order_at_most_n_at_once():
    plan = plan_fleet([ok("orders"), ok("audit-log"), ok("payments")], parallel=2)
    assert [f.name for f in plan.runs] == ["audit-log", "orders", "payments"]
    assert plan.refused == () and plan.parallel == 2


def test_the_plan_never_starts_more_workers_than_streams():
    assert plan_fleet([ok("a")], parallel=8).parallel == 1
    assert plan_fleet([StreamFile(Path("/s/x.yaml"), None, "bad")], parallel=4).parallel == 1


def test_a_config_that_does_not_parse_is_refused_and_the_others_still_run():
    broken = StreamFile(Path("/s/broken.yaml"), None, "/s/broken.yaml: kafka.topic: required")
    plan = plan_fleet([ok("b"), broken, ok("a")], parallel=2)
    assert [f.name for f in plan.runs] == ["a", "b"]
    assert plan.refused == (broken,)


def test_two_configs_of_one_stream_name_are_both_refused():
    plan = plan_fleet([ok("pay", "one"), ok("pay", "two"), ok("x")], parallel=2)
    assert [f.name for f in plan.runs] == ["x"]
    assert [f.path.name for f in plan.refused] == ["one.yaml", "two.yaml"]
    assert "is also the name in two.yaml" in plan.refused[0].error


@pytest.mark.parametrize("parallel", [0, -1])
def test_fewer_than_one_at_a_time_is_a_usage_error(parallel):
    with pytest.raises(UsageError, match="at least 1"):
        plan_fleet([ok("a")], parallel)


def test_discovery_loads_every_yaml_and_names_the_field_at_fault(tmp_path):
    good = {"name": "good", "kafka": {"bootstrap_servers": "h:1", "topic": "t"}, "redis": {}}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump({**good, "redis": {"url": "redis://h"}}))
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({**good, "name": "bad", "kafka": {}}))
    (tmp_path / "notes.txt").write_text("not a config")
    found = discover_streams(tmp_path)
    assert [(f.path.name, f.name) for f in found] == [("bad.yml", None), ("good.yaml", "good")]
    assert str(tmp_path / "bad.yml") in found[0].error and "kafka" in found[0].error


STEPS = load_steps(ROOT / "runbook" / "steps.yaml")


@pytest.mark.parametrize(
    "stream, run_all, parallel, streams, only, refused",
    [
        ("payments", True, None, None, None, "not both"),
        (None, False, None, None, None, "give a STREAM"),
        ("payments", False, 2, None, None, "--parallel goes with --all"),
        ("payments", False, None, "dir", None, "--streams goes with --all"),
        (None, True, 0, None, None, "at least 1"),
        (None, True, None, None, "99", "--only 99"),
        (None, True, None, None, "rollback", "ferry run STREAM --only rollback"),
    ],
)
def test_meaningless_option_combinations_are_refused(
    stream, run_all, parallel, streams, only, refused
):
    with pytest.raises(UsageError, match=refused.replace("-", r"\-")):
        check_run_options(stream, run_all, parallel, streams, None, only, STEPS)


def test_sensible_combinations_pass():
    check_run_options(None, True, 3, "dir", "04", None, STEPS)
    check_run_options(None, True, None, None, None, "01", STEPS)
    check_run_options("payments", False, None, None, None, "99", STEPS)


def test_the_cli_refuses_a_stream_with_all_in_one_line(capsys):
    assert main(["run", "payments", "--all"]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert err == "ferry: error: run: give a STREAM (payments) or --all, not both"


def test_the_child_is_the_same_ferry_run_with_the_options_passed_on():
    argv = build_child_command(Path("s/a.yaml"), "04", None, "/tmp/audit", ["sample_size=5"])
    assert argv == [
        sys.executable, "-m", "ferry.cli", "run", "s/a.yaml",
        "--from", "04", "--audit", "/tmp/audit", "-p", "sample_size=5",
    ]  # fmt: skip


MANIFEST = {
    "metadata": {
        "steps": [
            {"id": "01", "name": "preflight", "outcome": "passed", "message": ""},
            {"id": "03", "name": "backfill", "outcome": "failed", "message": "GateFailed: lag 5"},
            {"id": "02", "name": "dual-write", "outcome": "not-run", "message": ""},
        ]
    }
}


def test_a_failed_gate_names_its_step_cause_and_archive():
    out = "  01 preflight ...\narchive: /a/orders/r1\n"
    o = read_outcome("orders", 5, out, "ferry: error: run r1 stopped ...", MANIFEST, 12.34)
    assert o == StreamOutcome(
        "orders", "failed", 5, 12.3, "03-backfill", "GateFailed: lag 5", "/a/orders/r1"
    )


def test_a_run_that_never_archived_reports_its_error_line_or_signal():
    o = read_outcome("x", 4, "", "warning\nferry: error: Redis unreachable\n", None, 1.0)
    assert (o.result, o.status, o.step, o.cause) == ("failed", 4, "", "Redis unreachable")
    killed = read_outcome("x", -9, "", "", None, 1.0)
    assert (killed.result, killed.status, killed.cause) == ("failed", 1, "killed by SIGKILL")


def test_a_stopped_run_is_interrupted_unless_it_had_passed():
    o = read_outcome("x", 130, "archive: /a/x/r\n", "", MANIFEST, 2.0, stopped=True)
    assert (o.result, o.status, o.archive) == ("interrupted", 130, "/a/x/r")
    assert read_outcome("x", 0, "archive: /a\n", "", None, 2.0, stopped=True).result == "passed"


def row(result: str, status: int = 0) -> StreamOutcome:
    return StreamOutcome("s", result, status)


def test_exit_status_is_zero_only_when_every_stream_passed():
    assert choose_exit_status([row("passed"), row("passed")]) == 0
    assert choose_exit_status([row("passed"), row("failed", 5)]) == 5


def test_exit_status_is_the_most_severe_failure():
    assert choose_exit_status([row("failed", 3), row("failed", 5), row("failed", 1)]) == 5
    assert choose_exit_status([row("failed", 6), row("failed", 5)]) == 6
    assert choose_exit_status([row("failed", 1), row("failed", 4)]) == 4


def test_exit_status_is_130_when_the_run_was_interrupted():
    assert choose_exit_status([row("failed", 6), row("not-run", 130)]) == 130
    assert choose_exit_status([row("passed"), row("interrupted", 130)]) == 130


def test_the_table_has_one_aligned_row_per_stream_with_the_cause_last():
    table = format_table(
        [
            StreamOutcome("a", "passed", 0, 41.25, archive="/audit/a/r1"),
            StreamOutcome("broken", "failed", 3, 0.0, "config", "broken.yaml: name: required"),
            StreamOutcome("c", "not-run", 130),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["stream", "result", "seconds", "step", "archive", "cause"]
    assert lines[1].split() == ["a", "passed", "41.2", "-", "/audit/a/r1", "-"]
    assert lines[2].endswith("broken.yaml: name: required")
    assert lines[3].split() == ["c", "not-run", "-", "-", "-", "-"]
    assert lines[1].index("passed") == lines[2].index("failed") == lines[0].index("result")
