"""Redis faults: which ones to wait out, which ones to report, and the waiting itself.

A transient fault (the server restarting or loading its data, a replica that is read-only
during a failover, a timeout, ``OOM`` under ``noeviction``) is waited out with capped
exponential backoff (tenacity): one log line when the wait starts or its cause changes, one
when Redis is back, and a gauge while it lasts. Everything ferry writes goes through the
idempotent ingest script, so the call that failed is simply made again. A permanent fault (an
ACL denial, a key of the wrong type, a script refusal) is one line naming what to fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import redis
import tenacity

from ferry.errors import FerryError, RedisTargetError, RedisUnreachableError

log = logging.getLogger("ferry.redis")

T = TypeVar("T")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def transient_cause(exc: BaseException) -> str | None:
    """What a transient fault waits for, or None when waiting will not help."""
    if isinstance(exc, RedisTargetError):  # connect_redis's one line for what lies below it
        return transient_cause(exc.__cause__) if exc.__cause__ is not None else None
    if isinstance(exc, redis.AuthenticationError):
        return None  # a subclass of ConnectionError, but no wait fixes a wrong password
    if isinstance(exc, redis.ConnectionError) and tls_refused(exc):
        return None
    if isinstance(exc, redis.BusyLoadingError):
        return "Redis is loading its data set into memory"
    if isinstance(exc, redis.TimeoutError):
        return "Redis did not answer in time"
    if isinstance(exc, redis.ConnectionError):
        return "Redis is unreachable (connection lost or refused)"
    if isinstance(exc, redis.ReadOnlyError):
        return "Redis is a read-only replica (a failover in progress?)"
    if isinstance(exc, redis.OutOfMemoryError):
        return "Redis is out of memory (maxmemory reached under noeviction)"
    # redis-py strips the code word from these replies: tell them by their classes
    for kind, cause in (
        (redis.exceptions.TryAgainError, "Redis asked to try again (a slot migrating)"),
        (redis.exceptions.MasterDownError, "the replica lost its primary"),
        (redis.exceptions.ClusterDownError, "the Redis cluster is down"),
    ):
        if isinstance(exc, kind):
            return cause
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        for prefix, cause in (
            ("TRYAGAIN", "Redis asked to try again (a slot migrating)"),
            ("MASTERDOWN", "the replica lost its primary"),
            ("CLUSTERDOWN", "the Redis cluster is down"),
        ):
            if text.startswith(prefix):
                return cause
    return None


def unavailable(exc: BaseException) -> bool:
    """A transient fault that means Redis cannot serve at all (down, unreachable, loading, in
    a failover), as against one it answers (out of memory)."""
    while isinstance(exc, RedisTargetError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return transient_cause(exc) is not None and not isinstance(exc, redis.OutOfMemoryError)


def tls_refused(exc: BaseException) -> bool:
    """A certificate problem, which no retry fixes."""
    text = str(exc).lower()
    return any(
        needle in text
        for needle in (
            "certificate verify failed",
            "certificate_verify_failed",
            "alert",
            "hostname",
        )
    )


def redact_url(url: str) -> str:
    """The URL without its password (and without query parameters, which may carry one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name = user.split(":", 1)[0]
        netloc = f"{name}:***@{host}" if name else f"***@{host}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def describe_permanent(exc: BaseException, user: str | None) -> str:
    """One line for a Redis error that waiting will not fix, naming what to change."""
    text = " ".join(str(exc).split())
    who = f"ACL user {user!r}" if user else "the configured ACL user"
    if isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith("NOPERM"):
        return (
            f"Redis refused {who}: {text}; grant it with ACL SETUSER (see README, least privilege)"
        )
    if isinstance(exc, redis.AuthenticationError):
        return f"Redis refused the credentials of {who} (redis.username / redis.password): {text}"
    if text.startswith("WRONGTYPE"):
        return f"a key ferry uses holds another type: {text}; the migration's keys were changed by hand"
    return f"Redis answered with an error: {text}"


@dataclass
class FaultState:
    """What a run waited for: the current cause (None when healthy) and how often it waited."""

    cause: str | None = None
    since: float = 0.0
    waits: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def ride_out(
    call: Callable[[], T],
    *,
    deadline_s: float | None,
    state: FaultState,
    on_state: Callable[[FaultState], None] | None = None,
    user: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> T:
    """``call()``, with transient Redis faults waited out (for ever when ``deadline_s`` is
    None) or until ``should_stop()``; a permanent fault, a transient one that outlasts the
    deadline, or a stop while waiting raises a :class:`RedisTargetError` of one line.
    ``call`` must be safe to repeat."""

    def give_up(retry_state: tenacity.RetryCallState) -> bool:
        if should_stop():
            return True
        return deadline_s is not None and retry_state.seconds_since_start >= deadline_s

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception()
        cause = transient_cause(exc)
        state.errors[type(exc).__name__] = state.errors.get(type(exc).__name__, 0) + 1
        state.waits += 1
        if cause != state.cause:
            if state.cause is None:
                state.since = time.monotonic()
            state.cause = cause
            log.warning("waiting for Redis: %s (%s)", cause, " ".join(str(exc).split())[:200])
            if on_state is not None:
                on_state(state)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: transient_cause(e) is not None),
        wait=tenacity.wait_exponential(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S)
        + tenacity.wait_random(0, BACKOFF_FIRST_S),
        stop=give_up,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        result = retrying(call)
    except (FerryError, redis.RedisError) as exc:
        cause = transient_cause(exc)
        if cause is None:
            if isinstance(exc, FerryError):
                raise
            raise RedisTargetError(describe_permanent(exc, user)) from exc
        detail = " ".join(str(exc).split())[:200]
        error = RedisUnreachableError if unavailable(exc) else RedisTargetError
        if should_stop():
            raise error(
                f"stopped while waiting for Redis ({cause}): {detail}; what was written is "
                "consistent and a rerun resumes from the frontier"
            ) from exc
        raise error(
            f"gave up after {deadline_s:.0f}s (redis.fault_deadline): {cause}: {detail}"
        ) from exc
    if state.cause is not None:
        log.warning("Redis is back after %.1fs (%s)", time.monotonic() - state.since, state.cause)
        state.cause = None
        if on_state is not None:
            on_state(state)
    return result
