"""What writers were told, and the checks of what the two sides hold against it.

A test writer tags each value with its writer id and a per-writer sequence number
(:func:`tag`), and can keep an *acknowledgement log* (:class:`AckLog`): one JSON line per
send attempt, written before ``send()``, and one per fate, written when the fate is known.
A line reaches the kernel before the call returns, so a writer killed with SIGKILL keeps
every line it wrote.

The checks are pure functions over what was sent, what was acknowledged and what a side
holds:

- :func:`account`: every acknowledged record is there exactly once, nothing is there twice,
  nothing is there that was never sent, and a record whose failure said it is nowhere
  (``known=True``) is not there.
- :func:`order_violations`: the order rule across writers. Per writer and partition, the
  order of the writer's sends is the order of the partition (the Redis stream filtered to
  the partition, or the Kafka partition, shadows included). Across writers there is no
  promise, as with several Kafka producers on one partition.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SEP = b"|"


def tag(writer: str, seq: int, payload: bytes = b"") -> bytes:
    """The value a test writer sends: ``writer|seq|payload`` (the writer id has no ``|``)."""
    if "|" in writer:
        raise ValueError(f"writer id {writer!r} has a '|'")
    return writer.encode() + SEP + str(seq).encode() + SEP + payload


def parse_tag(value: bytes | None) -> tuple[str, int] | None:
    """(writer, seq) of a tagged value; None for a value that is not tagged (seeded history)."""
    if not value:
        return None
    parts = value.split(SEP, 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0].decode(errors="replace"), int(parts[1])


def order_violations(records: Iterable[tuple[int, bytes | None]]) -> list[str]:
    """The order rule, over one side's records in its order (``(partition, value)``: the
    Redis stream in ID order, or each Kafka partition in offset order): per writer and
    partition the sequence numbers must strictly increase. A value seen twice breaks it
    too. Untagged values are ignored; nothing is said about the order across writers."""
    last: dict[tuple[str, int], int] = {}
    problems = []
    for partition, value in records:
        tagged = parse_tag(value)
        if tagged is None:
            continue
        writer, seq = tagged
        before = last.get((writer, partition))
        if before is not None and seq <= before:
            problems.append(
                f"writer {writer}, partition {partition}: send {seq} comes after send {before}"
            )
        last[(writer, partition)] = seq
    return problems


@dataclass
class Accounting:
    lost: list[bytes] = field(default_factory=list)  # acknowledged, not there
    doubled: list[bytes] = field(default_factory=list)  # there more than once
    unknown: list[bytes] = field(default_factory=list)  # there, never sent
    failed_but_there: list[bytes] = field(default_factory=list)  # "nowhere", yet there
    found: int = 0  # tagged values there

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.unknown or self.failed_but_there)


def account(
    found: Iterable[bytes | None],
    *,
    sent: Iterable[bytes],
    acked: Iterable[bytes],
    nowhere: Iterable[bytes] = (),
) -> Accounting:
    """Check one side: ``found`` its values (untagged ones are ignored), ``sent`` every value
    a writer tried to send, ``acked`` those whose send was acknowledged (they must be there
    exactly once), ``nowhere`` those whose failure said they are on no side."""
    counts = Counter(v for v in found if parse_tag(v) is not None)
    sent = set(sent)
    out = Accounting(found=sum(counts.values()))
    out.lost = sorted(v for v in set(acked) if counts[v] == 0)
    out.doubled = sorted(v for v, n in counts.items() if n > 1)
    out.unknown = sorted(v for v in counts if v not in sent)
    out.failed_but_there = sorted(v for v in set(nowhere) if counts[v])
    return out


def may_be_somewhere(error: BaseException) -> bool:
    """Whether a failed send's record may be on a side: a Redis-first record whose shadow
    failed is in Redis; a Redis write whose reply was lost (``known=False``) may be."""
    from ferry.live.delivery import ShadowNotDelivered

    return isinstance(error, ShadowNotDelivered) or getattr(error, "known", True) is False


# --- the acknowledgement log of a writer process ------------------------------------------


class AckLog:
    """Append-only JSON lines, one ``write`` per line on an ``O_APPEND`` descriptor:
    ``{"s": value}`` before a send, ``{"r": value, "why": ...}`` when send() refused it at
    once (nothing sent), ``{"a": value, "p", "o", "e", "ph"}`` when acknowledged, ``{"f":
    value, "known": bool, "why": ...}`` when its fate is a failure (``known``: False when
    the record may be somewhere)."""

    def __init__(self, path: Path | str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _line(self, doc: dict) -> None:
        os.write(self.fd, json.dumps(doc).encode() + b"\n")

    def attempt(self, value: bytes) -> None:
        self._line({"s": value.decode()})

    def refused(self, value: bytes, why: str) -> None:
        self._line({"r": value.decode(), "why": why})

    def fate(self, value: bytes, error: BaseException | None, delivery) -> None:
        if error is None:
            self._line(
                {
                    "a": value.decode(),
                    "p": delivery.partition,
                    "o": delivery.offset,
                    "e": delivery.entry_id,
                    "ph": delivery.phase,
                }
            )
        else:
            known = may_be_somewhere(error) is False
            self._line({"f": value.decode(), "known": known, "why": str(error)[:300]})

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Acks:
    """What the logs say: values sent, refused at once, acknowledged (with their Delivery as
    a dict), failed (with whether the record may be somewhere)."""

    sent: list[bytes] = field(default_factory=list)
    refused: set[bytes] = field(default_factory=set)
    acked: dict[bytes, dict] = field(default_factory=dict)
    failed: dict[bytes, bool] = field(default_factory=dict)  # value -> may be somewhere

    @property
    def nowhere(self) -> set[bytes]:
        return self.refused | {v for v, maybe in self.failed.items() if not maybe}

    def by_writer(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = defaultdict(list)
        for v in self.sent:
            out[parse_tag(v)[0]].append(v)
        return dict(out)


def read_ack_logs(paths: Iterable[Path]) -> Acks:
    """Merge acknowledgement logs; a last line cut short by a kill is skipped."""
    acks = Acks()
    for path in paths:
        for line in Path(path).read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # the writer died in the middle of this line
            if "s" in doc:
                acks.sent.append(doc["s"].encode())
            elif "r" in doc:
                acks.refused.add(doc["r"].encode())
            elif "a" in doc:
                acks.acked[doc["a"].encode()] = doc
            elif "f" in doc:
                acks.failed[doc["f"].encode()] = not doc["known"]
    return acks
