"""One error hierarchy: every failure ferry reports is a FerryError with a message a user can act on."""

from __future__ import annotations


class FerryError(Exception):
    """Base class of every error ferry raises on purpose."""


class ConfigError(FerryError):
    """A stream config file is missing, unreadable or invalid; the message names file and field."""


class ServiceError(FerryError):
    """An embedded service could not be started, found or stopped."""


class UsageError(FerryError):
    """The command line asks for something ferry cannot do (exit status 2, as argparse's)."""


class ConnectivityError(FerryError):
    """Kafka or Redis could not be reached (refused, timed out, away beyond the deadline)."""


class KafkaError(FerryError):
    """Kafka could not be reached or answered with an error."""


class KafkaUnreachableError(ConnectivityError, KafkaError):
    """No broker of ``kafka.bootstrap_servers`` answered in time."""


class TopicNotFoundError(KafkaError):
    """The configured topic does not exist on the broker."""


class TopicMismatchError(KafkaError):
    """The topic under the configured name is not the one the migration was armed on, or a
    position lies beyond a partition's end (a recreated topic, a reset broker)."""


class OffsetRangeError(KafkaError):
    """A requested offset is no longer (or not yet) held by Kafka; ferry never auto-resets."""


class RedisTargetError(FerryError):
    """Redis could not be reached, refused the credentials, or is unsafe for streams."""


class RedisUnreachableError(ConnectivityError, RedisTargetError):
    """Redis did not answer: connection refused or lost, or away beyond ``redis.fault_deadline``."""


class ForeignStreamError(RedisTargetError):
    """The target stream key already holds data that ferry did not write."""


class NotArmedError(FerryError):
    """A batch was offered for a migration whose start positions were never chosen."""


class ReplicationError(RedisTargetError):
    """A write that must survive a failover was not acknowledged by every attached replica."""


class RecordTooLargeError(RedisTargetError):
    """A record is larger than the Redis server takes in one argument or one query; the
    message names its partition and offset."""


class IntegrityError(FerryError):
    """Something would break an invariant (a hole, a double, an out-of-order write); ferry stopped."""


class GateFailed(FerryError):
    """A runbook step did not achieve what it must; the message names the step's failed checks."""


class HandoverError(FerryError):
    """The group cannot be translated faithfully (say, the mirror is behind it)."""


class NoCommittedOffsetsError(HandoverError):
    """The Kafka group has committed no offset on the topic (a misspelt or unrelated group)."""


class GroupGapError(HandoverError):
    """A Kafka group's committed offset lies below the migration's start on some partition: the
    records in between are not in the stream. ``gaps`` maps partition -> (committed, start)."""

    def __init__(self, message: str, gaps: dict[int, tuple[int, int]]):
        super().__init__(message)
        self.gaps = dict(gaps)
