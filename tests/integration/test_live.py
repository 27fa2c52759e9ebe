"""Phases on the real server, the DualWriter beside a following mirror, and cutover."""

import threading

import pytest
from prometheus_client import CollectorRegistry

import ferry
from ferry.core.entries import KafkaRecord
from ferry.core.ingest import migration_keys, read_state
from ferry.core.mirror import backfill
from ferry.core.reconcile import kafka_identity, record_identity
from ferry.core.validate import validate_stream
from ferry.live.cutover import CutoverAborted, PauseBoundExceeded, mirror_lag, run_cutover
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    KAFKA_ONLY,
    REDIS_PRIMARY,
    IllegalTransition,
    WriterInfo,
    now_ms,
    read_events,
    read_phase,
    read_writers,
    report_writer,
    set_phase,
    start_draining,
    start_dual_write,
)
from ferry.services.seed import payment_events

from .helpers import Mirror, by_partition, ferry_cli, read_redis_records, wait_until


def test_transitions_are_logged_with_epochs_and_illegal_ones_refused(make_stream, redis_client):
    stream = make_stream([], partitions=1)
    keys = migration_keys(stream.config)
    assert read_phase(redis_client, keys).phase == KAFKA_ONLY
    with pytest.raises(IllegalTransition, match="cannot go from kafka-only to redis-primary"):
        set_phase(redis_client, keys, REDIS_PRIMARY)
    assert start_dual_write(redis_client, keys, "test").epoch == 1
    assert start_draining(redis_client, keys, "test").epoch == 2
    assert set_phase(redis_client, keys, DUAL_WRITE, "abort").epoch == 3
    events = [(e["from"], e["to"], e["epoch"]) for e in read_events(redis_client, keys)]
    assert events == [
        ("kafka-only", "dual-write", "1"),
        ("dual-write", "draining", "2"),
        ("draining", "dual-write", "3"),
    ]
    assert read_phase(redis_client, keys).phase == DUAL_WRITE


def test_dual_writer_lands_every_record_exactly_once_beside_the_mirror(make_stream, redis_client):
    stream = make_stream(list(payment_events(2000, 3)), partitions=3)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)  # history first, as the runbook does
    start_dual_write(redis_client, keys, "test")
    registry = CollectorRegistry()
    writer = ferry.DualWriter(stream.config, registry=registry, poll_interval_s=0.05)
    try:
        for i in range(3000):
            writer.send(b"live %d" % i, key=b"k%d" % (i % 50))
        writer.flush()
    finally:
        writer.close()
    counts = writer.counts
    print("writer counts:", counts)
    assert (counts.sent, counts.delivered, counts.failures) == (3000, 3000, 0)
    assert counts.written_redis + counts.deferred_to_mirror + counts.already_in_redis == 3000
    mirror = Mirror(stream.config)  # the mirror brings whatever the writer deferred
    try:
        for _ in range(3000):
            if not any(mirror_lag(stream.config).values()):
                break
            mirror.stop.wait(0.01)
    finally:
        mirror.close()
    assert validate_stream(stream.config).ok
    entries = by_partition(
        r for _, r in read_redis_records(redis_client, stream.config.redis.stream)
    )
    assert sum(len(v) for v in entries.values()) == 5000
    assert (
        registry.get_sample_value("ferry_writer_sent_total", {"writer": writer.writer_id}) == 3000
    )


def test_mirror_starting_while_a_writer_lands_records_is_not_refused(
    make_stream, redis_client, monkeypatch
):
    """A mirror (re)starting in dual-write looks at Kafka's ends while writers move positions
    on: whatever it reads in between must not look like positions beyond Kafka's end."""
    import ferry.core.mirror

    stream = make_stream(list(payment_events(300, 2)), partitions=2)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    opened = ferry.core.mirror.open_source

    def open_source_racing_a_writer(*args, **kwargs):
        source = opened(*args, **kwargs)
        describe = source.describe_topic

        def describe_then_write():
            info = describe()
            for i in range(40):  # lands in Redis at offsets past the ends just read
                writer.send(b"live %d" % i, partition=i % 2)
            writer.flush()
            return info

        source.describe_topic = describe_then_write
        return source

    monkeypatch.setattr(ferry.core.mirror, "open_source", open_source_racing_a_writer)
    try:
        summary = backfill(stream.config, progress=False)
    finally:
        writer.close()
    assert writer.counts.written_redis > 0  # the race happened: positions moved on
    print("mirror after the race:", summary)
    monkeypatch.undo()
    assert validate_stream(stream.config).ok


def test_writer_missing_the_handshake_blocks_cutover_and_it_aborts_cleanly(
    make_stream, redis_client
):
    stream = make_stream(list(payment_events(500, 2)), partitions=2)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    # a second writer that registered and heartbeats but never follows a phase change
    ghost = WriterInfo("ghost", now_ms(), read_phase(redis_client, keys).epoch, DUAL_WRITE)
    report_writer(redis_client, keys, ghost)
    try:
        with pytest.raises(CutoverAborted, match=r"writers not acknowledged: \['ghost'\]"):
            run_cutover(stream.config, pause_bound_s=0.5)
        assert read_phase(redis_client, keys).phase == DUAL_WRITE
        # writers resume: nothing sent during or after the aborted cutover is lost
        for i in range(200):
            writer.send(b"after abort %d" % i)
        writer.flush()
    finally:
        writer.close()
        redis_client.hdel(f"{keys.tag}:ferry:writers", "ghost")
    phases = [
        (e.get("from"), e.get("to"))
        for e in read_events(redis_client, keys)
        if e["type"] == "phase"
    ]
    assert phases[-2:] == [(DUAL_WRITE, DRAINING), (DRAINING, DUAL_WRITE)]
    _, frontiers = read_state(redis_client, keys)
    assert sum(f + 1 for f in frontiers.values()) + sum(mirror_lag(stream.config).values()) == 700


def test_a_drain_past_its_bound_goes_back_to_dual_write_and_the_next_attempt_switches(
    make_stream, redis_client
):
    stream = make_stream(list(payment_events(300, 2)), partitions=2)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    stop = threading.Event()

    def slow_writer():
        """Acknowledges dual-write (after each abort too) but never draining in time."""
        while not stop.is_set():
            state = read_phase(redis_client, keys)
            if state.phase == DUAL_WRITE:
                report_writer(redis_client, keys, WriterInfo("ghost", now_ms(), state.epoch, DUAL_WRITE))  # fmt: skip
            stop.wait(0.02)  # a writer's poll interval

    ghost = threading.Thread(target=slow_writer, daemon=True)
    ghost.start()
    try:
        epoch = read_phase(redis_client, keys).epoch
        wait_until(
            lambda: (
                {w.writer_id: w.acked_epoch for w in read_writers(redis_client, keys)}
                == {writer.writer_id: epoch, "ghost": epoch}
            ),
            "both writers acknowledged dual-write",
        )
        with pytest.raises(PauseBoundExceeded, match=r"writers not acknowledged: \['ghost'\]"):
            run_cutover(stream.config, pause_bound_s=0.3, attempts=2, retry_after_s=0.5)
        assert read_phase(redis_client, keys).phase == DUAL_WRITE
        aborted = [e for e in read_events(redis_client, keys) if e["type"] == "cutover"]
        assert [e.get("ok") for e in aborted] == ["False", "False"]  # both attempts, recorded
        stop.set()
        ghost.join()
        redis_client.hdel(f"{keys.tag}:ferry:writers", "ghost")  # the stuck writer is gone
        epoch = read_phase(redis_client, keys).epoch
        wait_until(lambda: writer.acked_epoch == epoch, "the writer acknowledged the abort")
        report = run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        assert read_phase(redis_client, keys).phase == REDIS_PRIMARY
        assert report.pause_ms < 3000
    finally:
        stop.set()
        writer.close()
        redis_client.hdel(f"{keys.tag}:ferry:writers", "ghost")


def test_cutover_completes_with_a_bounded_pause_while_writers_keep_sending(
    make_stream, redis_client
):
    stream = make_stream(list(payment_events(1000, 2)), partitions=2)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    mirror = Mirror(stream.config)
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05, hold_bound_s=5.0)
    sent = []
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            writer.send(b"traffic %d" % i)  # on through draining into redis-primary
            sent.append(i)
            i += 1
            stop.wait(0.001)

    producer = threading.Thread(target=traffic)
    producer.start()
    try:
        for _ in range(1000):  # writers run before a cutover: wait for deliveries and the ack
            epoch = read_phase(redis_client, keys).epoch
            acked = all(w.acked_epoch == epoch for w in read_writers(redis_client, keys))
            if acked and writer.counts.written_redis >= 50:
                break
            stop.wait(0.01)
        report = run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
    finally:
        stop.set()
        producer.join(timeout=30)
        writer.flush()
        writer.close()
        mirror.close()
    assert read_phase(redis_client, keys).phase == REDIS_PRIMARY
    print("cutover:", report, "records sent live:", len(sent))
    assert report.pause_ms < 1000  # the target: p99 <= 1 s
    assert set(report.writers) == {writer.writer_id}  # the pause the writer saw is reported...
    assert 0 < report.writers[writer.writer_id] < 1000  # ...and bounded too
    assert all(v == 0 for v in report.lag_at_switch.values())
    # every record the writer sent before the switch is in Redis, once, in order
    assert validate_stream(stream.config).ok
    assert sum(
        len(v)
        for v in by_partition(
            r for _, r in read_redis_records(redis_client, stream.config.redis.stream)
        ).values()
    ) == 1000 + len(sent)


def commit_group(bootstrap: str, topic: str, group: str, offsets: dict[int, int]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def test_group_hand_over_is_exactly_once(make_stream, redis_client):
    from ferry.live.handover import StreamConsumer, translate_group

    stream = make_stream(list(payment_events(1500, 3)), partitions=3)
    backfill(stream.config, progress=False)
    per = by_partition(r for _, r in read_redis_records(redis_client, stream.config.redis.stream))
    committed = {0: 100, 2: len(per[2]) // 2}  # partition 1: the group never committed
    commit_group(stream.bootstrap, stream.config.kafka.topic, "billing", committed)
    # partition 1 follows the reset policy: earliest, all of it
    translation = translate_group(stream.config, "billing", reset="earliest")
    assert translation.committed == committed
    consumer = StreamConsumer(stream.config, "billing", "c1", batch=64, block_ms=50)
    expected = sum(
        1 for rs in per.values() for r in rs if r.offset >= committed.get(r.partition, 0)
    )
    assert consumer.lag() == sum(len(v) for v in per.values()) - translation.entries_read
    got = []
    for _ in range(200):
        batch = consumer.poll()
        if not batch:
            break
        got += batch
        consumer.ack(*batch)
    delivered = by_partition(d.record for d in got)
    for p, records in per.items():  # exactly the records the Kafka group had not consumed, in order
        assert delivered.get(p, []) == [r for r in records if r.offset >= committed.get(p, 0)]
    assert len(got) == expected
    assert consumer.lag() == 0 and consumer.skipped == translation.skipped_later


def test_failing_entry_is_claimed_retried_then_dead_lettered(make_stream, redis_client):
    from ferry.live.handover import StreamConsumer, translate_group

    stream = make_stream(list(payment_events(10, 1)), partitions=1)
    backfill(stream.config, progress=False)
    translate_group(stream.config, "g", committed={}, reset="earliest")
    crashed = StreamConsumer(stream.config, "g", "crashed", batch=1, block_ms=50)
    first = crashed.poll()[0]  # delivered, never acknowledged: the consumer died
    survivor = StreamConsumer(
        stream.config, "g", "survivor", batch=1, block_ms=50, claim_idle_ms=0, max_failures=2
    )
    again = survivor.poll()[0]
    assert again.entry_id == first.entry_id  # claimed from the dead consumer
    assert survivor.fail(again, "boom") is False  # first failure: stays pending
    retry = survivor.poll()[0]
    assert retry.entry_id == first.entry_id
    assert survivor.fail(retry, "boom") is True  # second failure: dead-lettered
    dead = redis_client.xrange(survivor.dead_letter)
    assert len(dead) == 1 and dead[0][1][b"source_id"] == first.entry_id.encode()
    assert dead[0][1][b"v"] == first.record.value
    rest = []
    for _ in range(20):
        batch = survivor.poll()
        if not batch:
            break
        rest += batch
        survivor.ack(*batch)
    assert [d.record.offset for d in rest] == list(range(1, 10))
    assert redis_client.xpending(stream.config.redis.stream, "g")["pending"] == 0


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("ferry_mirror", "ferry_redis"))
    }


def test_follow_mirror_process_exposes_lag_and_survives_kill_9(make_stream, redis_client, tmp_path):
    import os
    import signal
    import subprocess

    from ferry.services.seed import produce_records
    from ferry.services.servers import free_port

    stream = make_stream(list(payment_events(3000, 2)), partitions=2)
    config_file = stream.write_config(tmp_path / "s.yaml")
    keys = migration_keys(stream.config)

    def start():
        port = free_port()
        proc = subprocess.Popen(
            ferry_cli("backfill", config_file, "--follow", "--no-progress", "--metrics-port", port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return proc, port

    def wait_for(port, proc, total):
        for _ in range(3000):  # bounded: the mirror catches up and reports zero lag
            assert proc.poll() is None, proc.stderr.read()
            try:
                metrics = scrape(port)
            except OSError:
                metrics = {}
            _, frontiers = read_state(redis_client, keys)
            lags = [v for k, v in metrics.items() if k.startswith("ferry_mirror_lag{")]
            if sum(f + 1 for f in frontiers.values()) == total and len(lags) == 2 and not any(lags):
                return metrics
            threading.Event().wait(0.01)  # polling the metrics endpoint, bounded by the loop
        raise AssertionError("the mirror did not catch up")

    proc, port = start()
    metrics = wait_for(port, proc, 3000)
    assert sum(v for k, v in metrics.items() if k.startswith("ferry_mirror_records_total")) == 3000
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    produce_records(
        stream.bootstrap, stream.config.kafka.topic, list(payment_events(500, 2, seed=5))
    )
    proc, port = start()  # resumes from the frontier
    wait_for(port, proc, 3500)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"records": 500' in out
    assert validate_stream(stream.config).ok


def test_live_migration_scenario_is_exact_for_writers_and_consumers(make_stream, redis_client):
    """History, live writers, a Kafka consumer group, a mirror started late, cutover, and the
    group's hand-over to Redis: every record is in Redis once and in order, and the group
    sees every record once across Kafka and Redis."""
    from confluent_kafka import Consumer, TopicPartition

    from ferry.live.handover import StreamConsumer, translate_group

    stream = make_stream(list(payment_events(3000, 3)), partitions=3)
    keys = migration_keys(stream.config)
    topic = stream.config.kafka.topic
    start_dual_write(
        redis_client, keys, "scenario"
    )  # before arming: the writer defers to the mirror
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    stop = threading.Event()
    sent = [0]

    def traffic():
        while not stop.is_set():
            writer.send(b"live %d" % sent[0], key=b"acct_%d" % (sent[0] % 97))
            sent[0] += 1
            if sent[0] % 20 == 0:
                stop.wait(0.01)  # about 2k msg/s

    producer = threading.Thread(target=traffic)
    producer.start()

    # the Kafka consumer group reads until after the cutover (shadows included), commits,
    # and stops; then it is handed over to Redis
    seen_kafka: list = []
    consumer = Consumer(
        {
            "bootstrap.servers": stream.bootstrap,
            "group.id": "billing",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    position: dict[int, int] = {}
    consumer_stop = threading.Event()

    def consume():
        while not consumer_stop.is_set():
            for m in consumer.consume(500, 0.1):
                if m.error() is None:
                    record = KafkaRecord(
                        m.partition(), m.offset(), 0, None, None, tuple(m.headers() or ())
                    )
                    seen_kafka.append(kafka_identity(record))
                    position[m.partition()] = m.offset() + 1
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in position.items()], asynchronous=False
        )
        consumer.close()

    reader_thread = threading.Thread(target=consume)
    reader_thread.start()
    for _ in range(3000):
        if len(seen_kafka) >= 2500:
            break
        stop.wait(0.01)

    mirror = Mirror(stream.config)  # started late: history plus everything live so far
    try:
        for _ in range(2000):  # writers run and the mirror catches up before the cutover
            if sent[0] > 1000 and sum(mirror_lag(stream.config).values()) < 500:
                break
            stop.wait(0.01)
        report = run_cutover(stream.config, pause_bound_s=3.0, attempts=3)
        at_cutover = sent[0]
        for _ in range(3000):  # redis-primary: the writer goes on, Redis first, Kafka as shadow
            if sent[0] > at_cutover + 1000 and writer.counts.shadowed > 500:
                break
            stop.wait(0.01)
        consumer_stop.set()
        reader_thread.join(timeout=30)
    finally:
        stop.set()
        consumer_stop.set()
        producer.join(timeout=30)
        writer.flush()
        writer.close()
        for _ in range(2000):  # the mirror passes the last shadows
            if not any(mirror_lag(stream.config).values()):
                break
            stop.wait(0.01)
        mirror.close()
    assert report.pause_ms < 1000
    assert writer.counts.written_redis_first > 1000 and not writer.failed

    # independent check of every record: Kafka (raw read, shadows included) vs Redis
    from ferry.core.reconcile import reconcile

    from .helpers import read_kafka_raw

    kafka = read_kafka_raw(stream.bootstrap, topic, 3)
    entries = read_redis_records(redis_client, stream.config.redis.stream)
    result = reconcile((r for p in sorted(kafka) for r in kafka[p]), entries)
    print("scenario:", result, "sent live:", sent[0])
    assert result.ok, result  # nothing lost, doubled, reordered or altered
    assert result.unshadowed == 0 and result.redis_first == writer.counts.written_redis_first
    assert result.redis == 3000 + sent[0] == result.kafka
    assert validate_stream(stream.config).ok
    assert any(isinstance(i, bytes) for i in seen_kafka)  # the group read shadows too

    # the consumer group moves to Redis: it sees exactly what it had not consumed
    translate_group(stream.config, "billing")
    reader = StreamConsumer(stream.config, "billing", "billing-1", batch=500, block_ms=50)
    seen_redis = []
    while batch := reader.poll():
        seen_redis += [record_identity(d.entry_id.encode(), d.record) for d in batch]
        reader.ack(*batch)
    everything = [record_identity(i, r) for i, r in entries]
    assert len(seen_kafka) + len(seen_redis) == len(everything)  # no duplicates...
    assert set(seen_kafka) | set(seen_redis) == set(everything)  # ...and no gaps
    order = {identity: n for n, identity in enumerate(everything)}
    assert [order[i] for i in seen_redis] == sorted(order[i] for i in seen_redis)


def test_rollback_plan_then_act_and_writers_follow(make_stream, redis_client):
    from ferry.live.phases import KAFKA_ONLY, REDIS_ONLY, complete_cutover, finish_migration
    from ferry.live.rollback import plan_rollback, roll_back

    stream = make_stream(list(payment_events(100, 1)), partitions=1)
    keys = migration_keys(stream.config)
    assert plan_rollback(stream.config).target is None  # kafka-only: nothing to roll back
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    try:
        start_draining(redis_client, keys, "test")
        plan = plan_rollback(stream.config)
        assert (plan.phase, plan.target, plan.live_writers) == (DRAINING, DUAL_WRITE, 1)
        assert "cutover is aborted" in plan.restores
        phase, behind = roll_back(stream.config, plan)
        assert (phase, behind) == (DUAL_WRITE, [])
        phase, behind = roll_back(stream.config, plan_rollback(stream.config))
        assert (phase, behind) == (KAFKA_ONLY, [])
        writer.send(b"after rollback")  # kafka-only: still accepted, Kafka only
        writer.flush()
    finally:
        writer.close()
    start_dual_write(redis_client, keys, "again")
    start_draining(redis_client, keys, "again")
    complete_cutover(redis_client, keys, "again")
    assert "pointed back at their Kafka group" in plan_rollback(stream.config).cannot
    finish_migration(redis_client, keys, "done")
    final = plan_rollback(stream.config)
    assert (final.phase, final.target) == (REDIS_ONLY, None)
    assert "no longer possible" in final.cannot


def test_rollback_step_runs_on_demand(make_stream, redis_client, tmp_path):
    from ferry.runbook.runner import run_runbook

    stream = make_stream(list(payment_events(100, 1)), partitions=1)
    keys = migration_keys(stream.config)
    backfill(stream.config, progress=False)
    start_dual_write(redis_client, keys, "test")
    start_draining(redis_client, keys, "test")
    config_file = stream.write_config(tmp_path / "s.yaml")
    result = run_runbook(
        str(config_file), only="99", audit_root=tmp_path / "audit", echo=lambda s: None
    )
    assert result.ok and [s.id for s in result.steps] == ["99"]
    assert read_phase(redis_client, keys).phase == DUAL_WRITE
    assert (result.folder / "rollback.json").exists()
