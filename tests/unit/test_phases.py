import pytest

from ferry.live.phases import PHASES, TRANSITIONS, IllegalTransition, WriterInfo, check_transition


def test_the_happy_path_is_legal_in_order():
    path = ["kafka-only", "dual-write", "draining", "redis-primary", "redis-only"]
    for frm, to in zip(path, path[1:], strict=False):
        assert check_transition(frm, to)


@pytest.mark.parametrize("frm", PHASES)
@pytest.mark.parametrize("to", PHASES)
def test_every_pair_is_either_a_named_transition_or_refused(frm, to):
    if (frm, to) in TRANSITIONS:
        assert check_transition(frm, to) == TRANSITIONS[(frm, to)]
    else:
        with pytest.raises(IllegalTransition, match=f"cannot go from {frm} to {to}"):
            check_transition(frm, to)


def test_refusal_names_the_legal_moves_and_redis_only_is_final():
    with pytest.raises(IllegalTransition, match="from kafka-only ferry can go to dual-write"):
        check_transition("kafka-only", "redis-primary")
    with pytest.raises(IllegalTransition, match="none: the migration is finished"):
        check_transition("redis-only", "dual-write")


def test_rollback_is_possible_until_redis_only():
    assert ("redis-primary", "dual-write") in TRANSITIONS
    assert not any(frm == "redis-only" for frm, _ in TRANSITIONS)


def test_writer_liveness():
    w = WriterInfo("w1", heartbeat_ms=10_000, acked_epoch=3, phase="dual-write")
    assert w.live(now_ms=14_000) and not w.live(now_ms=15_001)


def test_phase_set_makes_only_the_start_and_aborts_without_force():
    from ferry.errors import UsageError
    from ferry.exitcodes import ExitCode, exit_code_for
    from ferry.live.phases import FORCE_RISKS, UngatedPhaseChange, check_manual_move

    assert check_manual_move("kafka-only", "dual-write", force=False) == ""
    assert check_manual_move("draining", "dual-write", force=False) == ""
    for frm, to in set(TRANSITIONS) - {("kafka-only", "dual-write"), ("draining", "dual-write")}:
        with pytest.raises(UngatedPhaseChange, match="ferry cutover .* ferry finish") as refused:
            check_manual_move(frm, to, force=False)
        assert "\n" not in str(refused.value) and "--force" in str(refused.value)
        assert isinstance(refused.value, UsageError)
        assert exit_code_for(refused.value) == ExitCode.USAGE
        assert check_manual_move(frm, to, force=True) == FORCE_RISKS[(frm, to)]
    with pytest.raises(IllegalTransition):  # forcing skips gates, never the phase order
        check_manual_move("kafka-only", "redis-only", force=True)


def test_the_draining_lease_outlasts_the_pause_bound():
    from ferry.live.cutover import lease_for

    assert lease_for(1.0) == 3.0 and lease_for(3.0) == 6.0
    for bound in (0.1, 0.5, 1.0, 2.0, 5.0, 30.0):
        assert lease_for(bound) >= bound + 2.0
