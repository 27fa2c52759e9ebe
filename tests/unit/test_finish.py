"""ferry finish without servers: the verb's options and how its refusal exits."""

from ferry.cli import build_parser
from ferry.errors import GateFailed
from ferry.exitcodes import ExitCode, exit_code_for
from ferry.live.finish import FinishRefused


def test_finish_refused_is_a_failed_gate():
    refused = FinishRefused("finish refused, still redis-primary: mirror lag is 0 (lag {0: 1})")
    assert isinstance(refused, GateFailed)
    assert exit_code_for(refused) == ExitCode.GATE_FAILED


def test_the_finish_verb_takes_a_quiet_window_and_fencing():
    args = build_parser().parse_args(["finish", "payments"])
    assert (args.stream, args.quiet_window, args.fence_kafka) == ("payments", 60.0, False)
    args = build_parser().parse_args(["finish", "payments", "--quiet-window", "5", "--fence-kafka"])
    assert (args.quiet_window, args.fence_kafka) == (5.0, True)


def test_phase_set_takes_force():
    args = build_parser().parse_args(["phase", "payments", "--set", "redis-only", "--force"])
    assert (args.set, args.force) == ("redis-only", True)
    assert build_parser().parse_args(["phase", "payments"]).force is False
