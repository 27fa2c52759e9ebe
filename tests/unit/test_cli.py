"""The command line as a shell user meets it: help on every argument, --version, one
documented exit status per kind of failure, notebook parameters for ``ferry run``. Every call
runs in-process through ``ferry.cli.main``; none needs a running Kafka or Redis."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from ferry import cli
from ferry.cli import build_parser, main
from ferry.services.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def walk(parser: argparse.ArgumentParser, path: str = "ferry"):
    """Every (command path, action) of the parser and of its sub-parsers."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_argument_of_every_verb_has_help():
    missing = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in walk(build_parser())
        if not isinstance(action, argparse._HelpAction)
        and not (action.help and action.help.strip() and action.help != argparse.SUPPRESS)
    ]
    assert missing == []


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["traffic", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 2000.0)" in out


def test_version_is_the_installed_distribution(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"ferry {version('ferry')}"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ferry: error: "), err
    return lines[0]


def write_config(tmp_path: Path, **overrides) -> Path:
    doc = {
        "name": "exitcodes",
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "exitcodes"},
        "redis": {"url": f"redis://127.0.0.1:{free_port()}/0", "fault_deadline": "1s"},
        **overrides,
    }
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_usage_error_is_argparse_status_2(capsys):
    with pytest.raises(SystemExit) as done:
        main(["validate"])
    assert done.value.code == 2 == cli.ExitCode.USAGE


def test_a_missing_config_file_is_a_configuration_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nowhere.yaml")]) == 3 == cli.ExitCode.CONFIG
    assert "nowhere.yaml" in one_error_line(capsys)


def test_an_invalid_config_file_is_a_configuration_error(tmp_path, capsys):
    config = write_config(tmp_path, start="yesterday-ish")
    assert main(["phase", str(config)]) == cli.ExitCode.CONFIG
    assert "start" in one_error_line(capsys)


def test_redis_on_a_closed_port_is_unreachable(tmp_path, capsys):
    assert main(["phase", str(write_config(tmp_path))]) == 4 == cli.ExitCode.UNREACHABLE
    assert "redis" in one_error_line(capsys).lower()


def test_kafka_on_a_closed_port_is_unreachable(tmp_path, capsys):
    # translate-group asks Kafka for the group's offsets before it touches Redis
    argv = ["translate-group", str(write_config(tmp_path)), "g"]
    assert main(argv) == cli.ExitCode.UNREACHABLE
    err = capsys.readouterr().err  # with the Kafka client's own (throttled) log lines, if any
    errors = [line for line in err.splitlines() if line.startswith("ferry: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "cannot reach kafka" in errors[0].lower()


def test_each_error_class_has_its_status():
    from ferry import errors
    from ferry.exitcodes import ExitCode, exit_code_for
    from ferry.extras import MissingExtra
    from ferry.live.handover import HandoverError

    expect = {
        errors.ConfigError("x"): ExitCode.CONFIG,
        errors.TopicNotFoundError("x"): ExitCode.CONFIG,
        errors.NoCommittedOffsetsError("x"): ExitCode.CONFIG,
        errors.KafkaUnreachableError("x"): ExitCode.UNREACHABLE,
        errors.RedisUnreachableError("x"): ExitCode.UNREACHABLE,
        errors.GateFailed("x"): ExitCode.GATE_FAILED,
        errors.IntegrityError("x"): ExitCode.INTEGRITY,
        errors.TopicMismatchError("x"): ExitCode.INTEGRITY,
        errors.OffsetRangeError("x"): ExitCode.INTEGRITY,
        errors.UsageError("x"): ExitCode.USAGE,
        errors.KafkaError("x"): ExitCode.ERROR,
        errors.RedisTargetError("x"): ExitCode.ERROR,
        errors.ForeignStreamError("x"): ExitCode.ERROR,
        HandoverError("x"): ExitCode.ERROR,
        MissingExtra("x"): ExitCode.CONFIG,
        KeyboardInterrupt(): ExitCode.INTERRUPTED,
    }
    assert {type(e).__name__: exit_code_for(e) for e in expect} == {
        type(e).__name__: code for e, code in expect.items()
    }
    # the new classes keep the old ones' except sites working
    assert issubclass(errors.KafkaUnreachableError, errors.KafkaError)
    assert issubclass(errors.RedisUnreachableError, errors.RedisTargetError)
    assert issubclass(errors.NoCommittedOffsetsError, HandoverError)


def test_a_redis_connection_error_escaping_a_verb_is_unreachable():
    import redis

    from ferry.exitcodes import ExitCode, exit_code_for

    assert exit_code_for(redis.ConnectionError("refused")) == ExitCode.UNREACHABLE
    assert exit_code_for(redis.ResponseError("WRONGTYPE x")) == ExitCode.ERROR


def test_readme_lists_every_exit_status():
    from ferry.exitcodes import ExitCode

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Exit status") :]
    rows = re.findall(r"^\| `?(\d+)`? \| `?([A-Z_]+)`? \|", section, re.MULTILINE)
    assert {int(code): name for code, name in rows} == {c.value: c.name for c in ExitCode}


# ferry run -p NAME=VALUE


def test_parameters_are_yaml_scalars():
    from ferry.cli import parse_parameters

    assert parse_parameters(
        ["lag_threshold=500", "pause_bound_s=2.5", "start_mirror=false", "client=kafka-python"]
    ) == {
        "lag_threshold": 500,
        "pause_bound_s": 2.5,
        "start_mirror": False,
        "client": "kafka-python",
    }
    assert parse_parameters(["retention=''"]) == {"retention": ""}
    assert parse_parameters(None) == {}


@pytest.mark.parametrize("raw", ["novalue", "=5", "a=[1, 2]", "x={a: 1}", "bad name=1"])
def test_a_malformed_parameter_is_refused(raw):
    from ferry.cli import parse_parameters
    from ferry.errors import UsageError

    with pytest.raises(UsageError):
        parse_parameters([raw])


@pytest.mark.parametrize("name", ["redis_password", "api_token", "secret", "signing_key"])
def test_a_parameter_named_like_a_secret_is_refused(name, capsys):
    assert main(["run", "payments", "-p", f"{name}=x"]) == cli.ExitCode.USAGE
    line = one_error_line(capsys)
    assert name in line and "environment" in line


def test_a_parameter_no_step_declares_is_refused_before_anything_runs(capsys, tmp_path):
    argv = ["run", "payments", "-p", "lag_treshold=5", "--audit", str(tmp_path)]
    assert main(argv) == cli.ExitCode.USAGE
    line = one_error_line(capsys)
    assert "'lag_treshold'" in line and "lag_threshold" in line  # what the steps do declare
    assert list(tmp_path.iterdir()) == []  # no archive was started


def test_a_parameter_of_a_step_outside_the_run_is_refused(capsys):
    assert main(["run", "payments", "--only", "00", "-p", "lag_threshold=5"]) == 2
    assert "'lag_threshold'" in one_error_line(capsys)


def test_parameters_go_to_the_steps_that_declare_them(monkeypatch, capsys):
    from ferry.runbook import runner

    seen = {}

    def fake_run(stream, **kwargs):  # the runner's own behaviour is tested in integration
        seen.update(kwargs)
        return runner.RunResult("payments", "r", Path("/nowhere"))

    monkeypatch.setattr(runner, "run_runbook", fake_run)
    argv = ["run", "payments", "-p", "lag_threshold=5", "-p", "sample_size=50"]
    assert main(argv) == 0
    assert seen["parameters"] == {"05": {"lag_threshold": 5}, "04": {"sample_size": 50}}


def test_demo_takes_a_rate(monkeypatch):
    from ferry.services import demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: seen.update(kw) or 0)
    assert main(["demo", "--rate", "500", "--records", "1000"]) == 0
    assert seen == {"records": 1000, "partitions": 6, "rate": 500.0}


def test_a_verb_option_is_never_taken_for_an_abbreviated_global_one():
    args = build_parser().parse_args(["group-consumer", "s", "g", "--log", "out.jsonl"])
    assert args.log == "out.jsonl"
