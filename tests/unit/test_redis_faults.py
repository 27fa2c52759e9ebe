"""Which Redis errors are waited out, how the waiting reports itself, and when it gives up:
no server; the calls are plain functions that raise what redis-py raises."""

from __future__ import annotations

import logging

import pytest
import redis

from ferry.errors import FerryError, RedisTargetError
from ferry.redis.faults import (
    FaultState,
    describe_permanent,
    redact_url,
    ride_out,
    transient_cause,
)


@pytest.mark.parametrize(
    "exc, needle",
    [
        (redis.ConnectionError("Connection refused"), "unreachable"),
        (redis.BusyLoadingError("LOADING"), "loading"),
        (redis.TimeoutError("Timeout reading"), "in time"),
        (redis.ReadOnlyError("READONLY You can't write against a read only replica."), "replica"),
        (redis.OutOfMemoryError("OOM command not allowed"), "out of memory"),
        (redis.ResponseError("TRYAGAIN Multiple keys request during rehashing"), "try again"),
        (redis.ResponseError("MASTERDOWN Link with MASTER is down"), "primary"),
        (RedisTargetError("cannot reach Redis"), None),  # no cause below it: permanent
    ],
)
def test_transient_faults_name_what_they_wait_for(exc, needle):
    cause = transient_cause(exc)
    assert (cause is None) if needle is None else (needle in cause.lower())


@pytest.mark.parametrize(
    "exc",
    [
        redis.AuthenticationError("WRONGPASS invalid username-password pair"),
        redis.exceptions.NoPermissionError(
            "this user has no permissions to run the 'xadd' command"
        ),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis.ResponseError("ERR Error running script"),
    ],
)
def test_permanent_faults_are_not_waited_for(exc):
    assert transient_cause(exc) is None


def test_a_connect_error_is_as_transient_as_its_cause():
    try:
        raise RedisTargetError("cannot reach Redis") from redis.ConnectionError("refused")
    except RedisTargetError as exc:
        assert "unreachable" in transient_cause(exc)


def test_acl_denial_names_user_and_command():
    text = describe_permanent(
        redis.exceptions.NoPermissionError(
            "this user has no permissions to run the 'evalsha' command"
        ),
        "mirror",
    )
    assert "'mirror'" in text and "evalsha" in text and "ACL SETUSER" in text


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://u:secret@host:6379/0", "redis://u:***@host:6379/0"),
        ("redis://:secret@host:6379", "redis://***@host:6379"),
        ("rediss://host:6380/1?password=secret", "rediss://host:6380/1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_urls_are_redacted(url, shown):
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)


def failing(times: int, exc: Exception):
    calls = {"n": 0}

    def call():
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return "done"

    return call, calls


def test_waits_out_a_transient_fault_and_logs_each_change_once(caplog, monkeypatch):
    monkeypatch.setattr("ferry.redis.faults.BACKOFF_FIRST_S", 0.001)
    monkeypatch.setattr("ferry.redis.faults.BACKOFF_MAX_S", 0.002)
    caplog.set_level(logging.WARNING, logger="ferry.redis")
    call, calls = failing(4, redis.ConnectionError("refused"))
    state, seen = FaultState(), []
    assert (
        ride_out(call, deadline_s=None, state=state, on_state=lambda s: seen.append(s.cause))
        == "done"
    )
    assert calls["n"] == 5 and state.waits == 4 and state.cause is None
    assert seen == [transient_cause(redis.ConnectionError()), None]  # started, ended
    waits = [r for r in caplog.records if "waiting for Redis" in r.getMessage()]
    assert len(waits) == 1 and "Redis is back" in caplog.text


def test_gives_up_after_the_deadline_with_one_line():
    call, calls = failing(10**9, redis.BusyLoadingError("LOADING Redis is loading"))
    with pytest.raises(RedisTargetError, match=r"gave up after 0s .*loading") as info:
        ride_out(call, deadline_s=0.2, state=FaultState())
    assert "\n" not in str(info.value) and calls["n"] >= 2


def test_stops_waiting_when_told_to():
    call, calls = failing(10**9, redis.ConnectionError("refused"))
    with pytest.raises(RedisTargetError, match="stopped while waiting"):
        ride_out(call, deadline_s=None, state=FaultState(), should_stop=lambda: calls["n"] >= 3)
    assert calls["n"] == 3


def test_a_permanent_fault_is_one_line_at_once():
    call, calls = failing(1, redis.exceptions.NoPermissionError("no permissions to run 'xadd'"))
    with pytest.raises(RedisTargetError, match="refused ACL user 'app'"):
        ride_out(call, deadline_s=None, state=FaultState(), user="app")
    assert calls["n"] == 1


def test_ferry_errors_pass_through_untouched():
    call, calls = failing(1, FerryError("the topic was recreated"))
    with pytest.raises(FerryError, match="recreated"):
        ride_out(call, deadline_s=None, state=FaultState())
    assert calls["n"] == 1


def test_cluster_replies_are_passing_faults_by_their_class():
    """redis-py drops the code word (TRYAGAIN, CLUSTERDOWN, MASTERDOWN) from the text."""
    import redis

    from ferry.redis.faults import transient_cause

    for exc in (
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
    ):
        assert transient_cause(exc), exc
    # a MOVED reaching ferry means a plain client on a cluster node: no wait fixes that
    assert transient_cause(redis.exceptions.MovedError("11579 127.0.0.1:7001")) is None
