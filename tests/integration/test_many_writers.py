"""Several writers on every partition through cutover, redis-primary, rollback and a second
cutover: each send's fate is the truth (exactly once where it says, nowhere where it says
nowhere), and per writer and partition the writer's order is the partition's order."""

import threading
import time

import ferry
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.live.ack_log import account, may_be_somewhere, order_violations, parse_tag, tag
from ferry.live.cutover import run_cutover
from ferry.live.delivery import WriterFenced
from ferry.live.dualwriter import WriterHoldTimeout
from ferry.live.phases import DUAL_WRITE, REDIS_PRIMARY, start_dual_write
from ferry.live.rollback import plan_rollback, roll_back
from ferry.services.seed import payment_events

from .helpers import Mirror, read_kafka_raw, read_redis_records, wait_for_mirror, wait_until

WRITERS = 3
PARTITIONS = 3
KEYS = 12  # keys cycled by every writer: each partition gets records of each writer
PACE_S = 0.02  # between two sends of one writer (~50/s each): Tansu reads back small batches


# --- the checks themselves (pure) --------------------------------------------------------


def test_order_rule_holds_per_writer_and_partition_not_across_writers():
    stream = [
        (0, tag("a", 1)),
        (1, tag("a", 2)),
        (0, tag("b", 7)),  # another writer interleaves: no promise across writers
        (0, tag("a", 3)),
        (1, tag("b", 1)),  # b's order on partition 1 is its own
        (0, b"seeded history"),  # untagged: ignored
    ]
    assert order_violations(stream) == []
    assert order_violations(stream + [(0, tag("a", 2))]) == [
        "writer a, partition 0: send 2 comes after send 3"
    ]
    assert order_violations([(1, tag("b", 4)), (1, tag("b", 4))])  # doubled: not increasing


def test_accounting_finds_lost_doubled_unknown_and_failed_records():
    sent = [tag("a", i) for i in range(5)]
    ok = account(sent[:4], sent=sent, acked=sent[:3], nowhere=[sent[4]])
    assert ok.ok and ok.found == 4  # sent[3]: accepted, fate unknown, there once: fine
    assert account(sent[1:3], sent=sent, acked=sent[:3]).lost == [sent[0]]
    assert account(sent[:3] + [sent[1]], sent=sent, acked=sent[:3]).doubled == [sent[1]]
    assert account(sent[:3] + [tag("z", 1)], sent=sent, acked=sent[:3]).unknown == [tag("z", 1)]
    bad = account(sent, sent=sent, acked=sent[:3], nowhere=[sent[4]])
    assert bad.failed_but_there == [sent[4]] and not bad.ok
    assert parse_tag(b"not|tagged") is None and parse_tag(tag("w-1", 12, b"x|y")) == ("w-1", 12)


# --- the scenario ------------------------------------------------------------------------


class WriterThread:
    """One DualWriter sending from its own thread, keeping every send's future in order."""

    def __init__(self, config, index: int):
        self.id = f"mw{index}"
        self.writer = ferry.DualWriter(config, writer_id=self.id, poll_interval_s=0.05)
        self.sends: list[tuple[bytes, object]] = []  # (value, future), in send order
        self.refused: list[tuple[bytes, BaseException]] = []  # send() raised: nothing sent
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"send-{self.id}")
        self.thread.start()

    def _run(self):
        try:
            seq = 0
            while not self.stop.is_set():
                seq += 1
                value = tag(self.id, seq, b"payload")
                try:
                    future = self.writer.send(value, key=b"acct-%d" % (seq % KEYS))
                except (WriterHoldTimeout, WriterFenced) as exc:
                    self.refused.append((value, exc))
                    continue
                self.sends.append((value, future))
                self.stop.wait(PACE_S)  # pacing the sends, not waiting for anything
        except BaseException as exc:  # handed to the test
            self.error = exc

    def acked_in(self, phase: str) -> int:
        return sum(
            1
            for _, f in list(self.sends)
            if f.done() and f.exception() is None and f.result().phase == phase
        )


def test_three_writers_per_partition_through_cutover_rollback_and_cutover_again(
    make_stream, redis_client
):
    stream = make_stream(list(payment_events(300, PARTITIONS)), partitions=PARTITIONS)
    config = stream.config
    backfill(config, progress=False)
    start_dual_write(redis_client, migration_keys(config), "test")
    mirror = Mirror(config)
    writers = [WriterThread(config, i) for i in range(WRITERS)]
    try:

        def each_acked(phase: str, at_least: int, what: str):
            wait_until(
                lambda: all(w.acked_in(phase) >= at_least for w in writers), what, timeout_s=60
            )

        each_acked(DUAL_WRITE, 40, "each writer's dual-write sends")
        run_cutover(config, pause_bound_s=3.0, attempts=3)
        each_acked(REDIS_PRIMARY, 40, "each writer's redis-primary sends")
        plan = plan_rollback(config)
        assert plan.target == DUAL_WRITE
        assert roll_back(config, plan)[0] == DUAL_WRITE  # the writers keep sending meanwhile
        before = {w.id: w.acked_in(DUAL_WRITE) for w in writers}
        wait_until(
            lambda: all(w.acked_in(DUAL_WRITE) >= before[w.id] + 40 for w in writers),
            "dual-write sends after the rollback",
        )
        run_cutover(config, pause_bound_s=3.0, attempts=3)
        before = {w.id: w.acked_in(REDIS_PRIMARY) for w in writers}
        wait_until(
            lambda: all(w.acked_in(REDIS_PRIMARY) >= before[w.id] + 40 for w in writers),
            "redis-primary sends after the second cutover",
        )
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.thread.join(timeout=30)
        for w in writers:
            w.writer.close()
    try:
        wait_for_mirror(config, time.monotonic() + 60)
    finally:
        mirror.close()
    for w in writers:
        assert w.error is None, w.error
        assert all(f.done() for _, f in w.sends), f"{w.id}: a future without a fate after close"

    acked, failed, sent = {}, {}, []
    for w in writers:
        sent += [v for v, _ in w.sends]
        for value, future in w.sends:
            if future.exception() is None:
                acked[value] = future.result()
            else:
                failed[value] = future.exception()
    nowhere = {v for v, e in failed.items() if not may_be_somewhere(e)}
    nowhere |= {v for w in writers for v, _ in w.refused}

    entries = read_redis_records(redis_client, config.redis.stream)
    kafka = read_kafka_raw(stream.bootstrap, config.kafka.topic, PARTITIONS)
    in_redis = account([r.value for _, r in entries], sent=sent, acked=list(acked), nowhere=nowhere)
    in_kafka = account(
        [r.value for p in kafka for r in kafka[p]],
        sent=sent,
        acked=[v for v, d in acked.items() if d.offset is not None],
        nowhere=nowhere,
    )
    print(
        f"many writers: {len(sent)} sent, {len(acked)} acknowledged, {len(failed)} failed, "
        f"{len(nowhere)} nowhere; Redis {in_redis.found}, Kafka {in_kafka.found}"
    )
    assert in_redis.ok, in_redis
    assert in_kafka.ok, in_kafka
    assert in_redis.found == in_kafka.found == len(acked)  # no failure here, nothing held back

    # each Delivery names where the record is
    by_value = {r.value: (entry_id.decode(), r.partition) for entry_id, r in entries}
    at_offset = {(r.partition, r.offset): r.value for p in kafka for r in kafka[p]}
    for value, d in acked.items():
        entry_id, partition = by_value[value]
        assert partition == d.partition, (value, d)
        assert d.entry_id in (None, entry_id), (value, d)
        assert at_offset[(d.partition, d.offset)] == value, (value, d)

    # the order rule: per writer and partition, send order = stream order = Kafka order
    assert order_violations((r.partition, r.value) for _, r in entries) == []
    assert order_violations((p, r.value) for p in sorted(kafka) for r in kafka[p]) == []

    # the scenario did what it says: every writer on every partition, in both kinds of phase
    cells = {(parse_tag(v)[0], d.partition, d.phase) for v, d in acked.items()}
    for w in writers:
        for p in range(PARTITIONS):
            for phase in (DUAL_WRITE, REDIS_PRIMARY):
                assert (w.id, p, phase) in cells, f"no {phase} record of {w.id} on partition {p}"
