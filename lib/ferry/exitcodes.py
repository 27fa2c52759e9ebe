"""The exit status of every ``ferry`` verb, and which failure gets which: the one place the
mapping lives (README.md, *Exit status*, lists the same table; a test keeps them equal)."""

from __future__ import annotations

from enum import IntEnum

from ferry import errors
from ferry.extras import MissingExtra


class ExitCode(IntEnum):
    OK = 0  # done; a check found nothing wrong
    ERROR = 1  # any other failure: a refusal (foreign stream, mirror behind a group), Redis or
    # Kafka answering with an error (ACL denial, key of another type), a service not running
    USAGE = 2  # the command line is wrong (argparse's own status; also -p names ferry refuses)
    CONFIG = 3  # the stream config is missing or invalid, or names what does not exist; or a
    # verb's optional extra is not installed
    UNREACHABLE = 4  # Kafka or Redis could not be reached
    GATE_FAILED = 5  # a runbook step's gate failed (ferry run)
    INTEGRITY = 6  # the data does not hold: lost, doubled, misordered or altered records
    INTERRUPTED = 130  # SIGINT (128 + 2), as a shell reports it


# most specific first is not needed: the first class of the exception's MRO found here wins
_BY_CLASS: dict[type[BaseException], ExitCode] = {
    errors.UsageError: ExitCode.USAGE,
    errors.ConfigError: ExitCode.CONFIG,
    errors.TopicNotFoundError: ExitCode.CONFIG,  # the config names a topic the broker lacks
    errors.NoCommittedOffsetsError: ExitCode.CONFIG,  # a group with nothing on the topic
    errors.GroupGapError: ExitCode.ERROR,  # a refusal: committed below the start (--accept-gap)
    MissingExtra: ExitCode.CONFIG,  # pip install 'ferry[EXTRA]'
    errors.ConnectivityError: ExitCode.UNREACHABLE,
    errors.GateFailed: ExitCode.GATE_FAILED,
    errors.IntegrityError: ExitCode.INTEGRITY,
    errors.TopicMismatchError: ExitCode.INTEGRITY,  # a recreated topic, a reset broker
    errors.OffsetRangeError: ExitCode.INTEGRITY,  # records gone before they were copied
    errors.FerryError: ExitCode.ERROR,
    KeyboardInterrupt: ExitCode.INTERRUPTED,
}


def exit_code_for(exc: BaseException) -> ExitCode:
    """The status ``ferry`` exits with when ``exc`` ends a verb."""
    for cls in type(exc).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    import redis

    if isinstance(exc, redis.RedisError):  # a Redis fault outside the paths that wait them out
        from ferry.redis.faults import unavailable

        return ExitCode.UNREACHABLE if unavailable(exc) else ExitCode.ERROR
    return ExitCode.ERROR
