"""The writer's contract, as strong as the producer it replaces: every send's fate reaches the
caller in every phase, the background path survives every error, a lost reply is not a
double, ``close()`` hands back exactly what did not make it, and a writer that lost Redis in
a phase that needs it refuses sends instead of drifting."""

from __future__ import annotations

import hashlib
import socket
import threading
from importlib import resources

import pytest

import ferry
from ferry.config import parse_config
from ferry.core.entries import SHADOW_HEADER
from ferry.core.ingest import migration_keys
from ferry.core.mirror import backfill
from ferry.live.cutover import mirror_lag, run_cutover
from ferry.live.delivery import (
    DeliveryFailed,
    RecordTooLarge,
    RedisWriteFailed,
    ShadowNotDelivered,
    WriterClosed,
    WriterFenced,
)
from ferry.live.phases import (
    DRAINING,
    DUAL_WRITE,
    REDIS_ONLY,
    REDIS_PRIMARY,
    finish_migration,
    read_events,
    read_phase,
    start_draining,
    start_dual_write,
)

from .helpers import Mirror, read_kafka_raw, read_redis_records, wait_until
from .test_redis_faults import on_own_redis, seed


def to_redis_primary(config, client) -> None:
    backfill(config, progress=False)
    start_dual_write(client, migration_keys(config), "test")


def cut_over(config, writer) -> None:
    run_cutover(config, pause_bound_s=3.0, attempts=3)
    wait_until(lambda: writer.phase == REDIS_PRIMARY, "the writer follows to redis-primary")


def entries_of(client, config) -> list:
    return [r for _, r in read_redis_records(client, config.redis.stream)]


def test_send_reports_each_record_fate_in_every_phase(make_stream, redis_client):
    stream = make_stream(seed(20, 2), partitions=2)
    config = stream.config
    to_redis_primary(config, redis_client)
    told: list = []
    writer = ferry.DualWriter(config, poll_interval_s=0.05)
    try:
        dual = [
            writer.send(b"d%d" % i, key=b"k", on_delivery=lambda e, d: told.append((e, d)))
            for i in range(5)
        ]
        got = [f.result(30) for f in dual]
        assert [d.phase for d in got] == ["dual-write"] * 5 and all(d.entry_id is None for d in got)
        kafka = read_kafka_raw(stream.bootstrap, config.kafka.topic, 2)
        for d, i in zip(got, range(5), strict=True):
            assert kafka[d.partition][d.offset].value == b"d%d" % i  # the offset Kafka gave it
        wait_until(lambda: len(told) == 5, "every on_delivery call")
        assert [d for _, d in told] == got and all(e is None for e, _ in told)

        cut_over(config, writer)
        primary = [writer.send(b"p%d" % i, key=b"k") for i in range(5)]
        got = [f.result(30) for f in primary]
        by_id = {
            eid.decode(): r for eid, r in read_redis_records(redis_client, config.redis.stream)
        }
        kafka = read_kafka_raw(stream.bootstrap, config.kafka.topic, 2)
        for d, i in zip(got, range(5), strict=True):
            assert d.phase == REDIS_PRIMARY and by_id[d.entry_id].value == b"p%d" % i
            shadow = kafka[d.partition][d.offset]  # the shadow carries the entry's ID
            assert (
                shadow.value == b"p%d" % i
                and dict(shadow.headers)[SHADOW_HEADER] == d.entry_id.encode()
            )

        finish_migration(redis_client, migration_keys(config), "test")
        wait_until(lambda: writer.phase == REDIS_ONLY, "the writer follows to redis-only")
        only = writer.send(b"o", key=b"k").result(30)
        assert only.phase == REDIS_ONLY and only.offset is None and only.entry_id is not None
    finally:
        writer.close()


def test_a_record_over_the_size_limit_is_refused_at_once_in_every_phase(make_stream, redis_client):
    stream = make_stream(seed(4, 2), partitions=2)
    to_redis_primary(stream.config, redis_client)
    writer = ferry.DualWriter(
        stream.config, poll_interval_s=0.05, producer_settings={"message.max.bytes": 5000}
    )
    try:
        with pytest.raises(RecordTooLarge, match="6000 bytes"):
            writer.send(b"x" * 6000)
        cut_over(stream.config, writer)
        with pytest.raises(RecordTooLarge, match="message.max.bytes"):
            writer.send(b"x" * 5000, key=b"k" * 1000)
        ok = writer.send(b"small").result(30)
        assert ok.entry_id is not None
    finally:
        writer.close()
    values = [r.value for r in entries_of(redis_client, stream.config)]
    assert b"small" in values and not any(len(v or b"") >= 5000 for v in values)


@pytest.mark.requires_broker(["apache"], reason="Tansu 0.6 does not enforce max.message.bytes")
def test_a_kafka_delivery_failure_in_dual_write_reaches_the_caller(make_stream, redis_client):
    stream = make_stream(seed(4, 1), partitions=1, topic_config={"max.message.bytes": "2000"})
    to_redis_primary(stream.config, redis_client)
    told: list = []
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05)
    try:
        big = writer.send(b"x" * 10_000, on_delivery=lambda e, d: told.append(e))
        with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE|too large"):
            big.result(60)
        assert isinstance(told[0], DeliveryFailed)
        assert writer.send(b"fine").result(30).offset is not None  # the writer goes on
        # redis-primary: Redis takes it, the broker refuses its shadow; the caller is told it
        # is in Redis (not to send it again), and the writer goes on
        cut_over(stream.config, writer)
        shadowless = writer.send(b"y" * 10_000)
        with pytest.raises(ShadowNotDelivered, match="do not send it again"):
            shadowless.result(60)
        assert writer.send(b"fine again").result(30).entry_id is not None
    finally:
        writer.close()
    assert [r.value for r, _ in writer.failed] == [b"x" * 10_000, b"y" * 10_000]
    assert b"y" * 10_000 in [r.value for r in entries_of(redis_client, stream.config)]


def test_oom_in_redis_primary_is_waited_out_and_nothing_is_lost(make_stream, own_redis):
    stream = make_stream(seed(10, 2), partitions=2)
    _, config = on_own_redis(stream, own_redis)
    client = own_redis.client()
    to_redis_primary(config, client)
    writer = ferry.DualWriter(config, poll_interval_s=0.05)
    try:
        cut_over(config, writer)
        client.config_set("maxmemory", 1)  # every write is refused with OOM (noeviction)
        futures = [writer.send(b"oom %d" % i, key=b"k%d" % i) for i in range(50)]
        wait_until(
            lambda: writer._primary.batches and writer._primary.batches[0].last_error,
            "an OOM refusal",
        )
        assert "maxmemory" in writer._primary.batches[0].last_error
        assert not any(f.done() for f in futures) and not writer.failed
        client.config_set("maxmemory", 0)
        delivered = [f.result(60) for f in futures]
    finally:
        writer.close()
    values = [r.value for r in entries_of(client, config)]
    assert all(values.count(b"oom %d" % i) == 1 for i in range(50))
    assert len({d.entry_id for d in delivered}) == 50


class ReplyDropper:
    """A TCP proxy to Redis that, once armed, forwards the next EVALSHA of script ``needle``
    to Redis and then cuts the connection instead of passing Redis's reply back: the command
    ran, its reply is lost (what a network fault after the write looks like)."""

    def __init__(self, port: int, needle: bytes) -> None:
        self.target, self.needle = port, needle
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client, server, cut) -> None:
        while chunk := _recv(client):
            if self.armed.is_set() and self.needle in chunk and b"EVALSHA" in chunk:
                self.armed.clear()
                cut.set()
            server.sendall(chunk)

    def _down(self, server, client, cut) -> None:
        while chunk := _recv(server):
            if cut.is_set():  # Redis answered the armed request: lose the answer
                self.dropped.set()
                for s in (client, server):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                return
            client.sendall(chunk)

    def close(self) -> None:
        self.listener.close()


def _recv(sock) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def test_a_lost_reply_after_the_redis_first_write_is_not_a_double(make_stream, own_redis):
    stream = make_stream(seed(10, 2), partitions=2)
    _, direct = on_own_redis(stream, own_redis)
    client = own_redis.client()
    to_redis_primary(direct, client)
    sha = hashlib.sha1(
        resources.files("ferry").joinpath("lua", "primary.lua").read_bytes()
    ).hexdigest()
    proxy = ReplyDropper(own_redis.port, sha.encode())
    config = parse_config(
        {**stream.doc, "redis": {"url": f"redis://127.0.0.1:{proxy.port}/0"}}, "<proxy>"
    )
    writer = ferry.DualWriter(config, poll_interval_s=0.05)
    try:
        cut_over(config, writer)
        writer.send(b"warm-up").result(30)  # the script is loaded: the next EVALSHA is the write
        proxy.armed.set()
        futures = [writer.send(b"once %d" % i, key=b"k%d" % i) for i in range(20)]
        delivered = [f.result(60) for f in futures]
        assert proxy.dropped.is_set()
    finally:
        writer.close()
        proxy.close()
    values = [r.value for r in entries_of(client, direct)]
    assert [values.count(b"once %d" % i) for i in range(20)] == [1] * 20
    assert int(client.hget(migration_keys(direct).state, "primary_written")) == 21
    by_id = {eid.decode(): r.value for eid, r in read_redis_records(client, direct.redis.stream)}
    assert [by_id[d.entry_id] for d in delivered] == [b"once %d" % i for i in range(20)]
    fields = client.hkeys(migration_keys(direct).state)
    assert not [f for f in fields if writer.writer_id.encode() in f]  # closed: sequences gone


def test_a_refusal_fails_only_its_records_and_the_writer_goes_on(make_stream, redis_client):
    stream = make_stream(seed(4, 2), partitions=2)
    to_redis_primary(stream.config, redis_client)
    writer = ferry.DualWriter(stream.config, poll_interval_s=0.05, delivery_timeout_s=1.0)
    try:
        cut_over(stream.config, writer)
        # partition 7 of a 2-partition topic: never armed, so Redis refuses it until the timeout
        lost = writer.send(b"nowhere", partition=7)
        with pytest.raises(RedisWriteFailed, match="partition 7") as refused:
            lost.result(30)
        assert refused.value.known  # Redis answered: it does not hold the record
        assert writer.send(b"after", partition=1).result(30).entry_id is not None
    finally:
        writer.close()
    assert [r.value for r, _ in writer.failed] == [b"nowhere"]
    assert b"nowhere" not in [r.value for r in entries_of(redis_client, stream.config)]


def test_close_hands_back_exactly_what_redis_did_not_take_and_a_cut_off_writer_refuses(
    make_stream, own_redis
):
    stream = make_stream(seed(10, 2), partitions=2)
    _, config = on_own_redis(stream, own_redis)
    to_redis_primary(config, own_redis.client())
    writer = ferry.DualWriter(config, poll_interval_s=0.05, fence_after_s=2.0)
    closed = False
    try:
        cut_over(config, writer)
        own_redis.kill()
        futures = [writer.send(b"stranded %d" % i, key=b"k%d" % i) for i in range(5)]
        late = 0
        with pytest.raises(WriterFenced, match="has not reached Redis"):
            for _ in range(600):  # within the lease sends are taken; past it, refused
                futures.append(writer.send(b"late"))
                late += 1
                writer._closing.wait(0.05)
        with pytest.raises(WriterClosed) as handed:
            closed = True
            writer.close(timeout_s=1.0)
    finally:
        if not closed:
            writer.close(timeout_s=1.0)
    expected = [b"stranded %d" % i for i in range(5)] + [b"late"] * late
    assert sorted(r.value for r in handed.value.unsent) == sorted(expected)  # exactly these
    assert all(isinstance(f.exception(1), RedisWriteFailed) for f in futures)
    assert 20 <= late  # sends were taken for the writer's lease (2 s at one per 50 ms)


def test_writers_end_a_draining_whose_coordinator_died_and_nothing_is_lost(
    make_stream, redis_client
):
    stream = make_stream(seed(10, 2), partitions=2)
    config, keys = stream.config, migration_keys(stream.config)
    to_redis_primary(config, redis_client)
    mirror = Mirror(config)
    writer = ferry.DualWriter(config, poll_interval_s=0.05)
    held: list = []
    try:
        wait_until(lambda: writer.acked_epoch == read_phase(redis_client, keys).epoch, "ack")
        # a coordinator that set draining and died at once: only its lease (server time) is left
        drained = start_draining(redis_client, keys, reason="coordinator then killed", lease_s=1.5)
        wait_until(lambda: writer.phase == DRAINING, "the writer sees draining")
        sender = threading.Thread(
            target=lambda: held.extend(
                writer.send(b"held %d" % i, key=b"k%d" % i) for i in range(50)
            )
        )
        sender.start()
        sender.join(timeout=30)  # the sends wait out the lease, then go in dual-write
        assert not sender.is_alive() and len(held) == 50
        delivered = [f.result(30) for f in held]
        assert {d.phase for d in delivered} == {DUAL_WRITE}
        state = read_phase(redis_client, keys)
        assert (state.phase, state.epoch) == (DUAL_WRITE, drained.epoch + 1)
        writer.flush()
        wait_until(lambda: not any(mirror_lag(config).values()), "the mirror catches up")
    finally:
        writer.close()
        mirror.close()
    expired = [e for e in read_events(redis_client, keys) if e.get("reason") == "lease expired"]
    assert [e["actor"] for e in expired] == [writer.writer_id]
    values = [r.value for r in entries_of(redis_client, config)]
    assert [values.count(b"held %d" % i) for i in range(50)] == [1] * 50
