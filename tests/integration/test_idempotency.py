"""Idempotent consumers on a real server: the processed-key record (SET NX with a TTL) keeps
an entry's effect from being applied twice when the entry is delivered again."""

import json
import time

import pytest
import redis
from redis.crc import key_slot

from ferry.core.mirror import backfill
from ferry.live.handover import StreamConsumer, translate_group
from ferry.services.seed import SeedRecord

from .test_acl_roles import acl_user, as_user  # noqa: F401 - acl_user is a fixture

TS = 1_700_000_000_000


def payments(ids: list[str]) -> list[SeedRecord]:
    return [
        SeedRecord(0, b"acct", json.dumps({"id": pid, "amount": 10}).encode(), (), TS + i)
        for i, pid in enumerate(ids)
    ]


def translated(make_stream, records, group="billing"):
    stream = make_stream(records, partitions=1)
    backfill(stream.config, progress=False)
    translate_group(stream.config, group, committed={0: 0})  # consumed nothing yet
    return stream


def balance_effect(calls: list, stream):
    """A handler whose effect is in Redis: it adds the payment to a balance, queued on the
    transaction the helper commits together with the processed key and the XACK."""

    def handle(delivery, tx):
        calls.append(delivery.entry_id)
        payment = json.loads(delivery.record.value)
        tx.hincrby(balance_key(stream), "total", payment["amount"])
        tx.hincrby(balance_key(stream), "count", 1)

    return handle


def balance_key(stream) -> str:
    """The application's own key, in the migration's slot so it can share the MULTI."""
    return f"{{{stream.config.name}}}:app:balance"


def done_keys(client, name: str, group: str = "billing") -> list[bytes]:
    return sorted(client.scan_iter(match=f"{{{name}}}:ferry:done:{group}:*", count=1000))


def test_an_entry_claimed_by_a_second_consumer_after_the_first_committed_it_is_not_applied_again(
    make_stream, redis_client
):
    """The first consumer is slow: the second claims its pending entry (XAUTOCLAIM) while the
    first is still working, then the first commits effect, key and XACK in one MULTI. The
    second's copy is a duplicate: acknowledged, counted, and its handler never runs."""
    stream = translated(make_stream, payments(["pay_1", "pay_2"]))
    slow = StreamConsumer(stream.config, "billing", "slow", batch=2, block_ms=50, idempotent=True)
    mine = slow.poll()
    assert [d.record.offset for d in mine] == [0, 1]
    fast = StreamConsumer(
        stream.config, "billing", "fast", batch=2, block_ms=50, claim_idle_ms=0, idempotent=True
    )
    claimed = fast.poll()  # the same two entries, claimed from the slow consumer
    assert [d.entry_id for d in claimed] == [d.entry_id for d in mine]
    first_calls, second_calls = [], []
    done = slow.process(balance_effect(first_calls, stream), mine)
    assert (done.done, done.duplicates) == (2, 0)
    again = fast.process(balance_effect(second_calls, stream), claimed)
    assert (again.done, again.duplicates) == (0, 2)
    assert second_calls == []  # the handler never saw them
    assert fast.duplicates == 2
    balance = redis_client.hgetall(balance_key(stream))
    assert balance == {b"total": b"20", b"count": b"2"}  # once each
    assert redis_client.xpending(stream.config.redis.stream, "billing")["pending"] == 0


def test_an_entry_committed_while_a_claimer_holds_it_is_caught_by_watch(make_stream, redis_client):
    """The race inside the window: the second consumer has checked the key (absent) and runs
    its handler when the first commits. WATCH on the processed key aborts the second's EXEC,
    so its queued effect is dropped."""
    stream = translated(make_stream, payments(["pay_1"]))
    first = StreamConsumer(stream.config, "billing", "a", batch=1, block_ms=50, idempotent=True)
    second = StreamConsumer(
        stream.config, "billing", "b", batch=1, block_ms=50, claim_idle_ms=0, idempotent=True
    )
    [held] = first.poll()
    [claimed] = second.poll()
    calls = []

    def handle_while_the_first_commits(delivery, tx):
        first.process(balance_effect(calls, stream), [held])  # lands between WATCH and EXEC
        balance_effect(calls, stream)(delivery, tx)

    result = second.process(handle_while_the_first_commits, [claimed])
    assert (result.done, result.duplicates) == (0, 1)
    assert redis_client.hgetall(balance_key(stream)) == {b"total": b"10", b"count": b"1"}
    assert redis_client.xpending(stream.config.redis.stream, "billing")["pending"] == 0


def test_a_consumer_that_died_before_its_commit_leaves_the_entry_to_be_processed_once(
    make_stream, redis_client
):
    """A crash in the handler (before EXEC) writes nothing: the entry stays pending, the
    survivor claims it from the PEL and applies it exactly once."""
    stream = translated(make_stream, payments(["pay_1", "pay_2", "pay_3"]))
    dying = StreamConsumer(stream.config, "billing", "dying", batch=3, block_ms=50, idempotent=True)
    batch = dying.poll()

    def crash_after_queueing_the_effect(delivery, tx):
        balance_effect([], stream)(delivery, tx)
        if delivery.record.offset == 1:
            raise SystemExit("killed")  # not an Exception: the process dies here

    with pytest.raises(SystemExit):
        dying.process(crash_after_queueing_the_effect, batch)
    survivor = StreamConsumer(
        stream.config,
        "billing",
        "survivor",
        batch=10,
        block_ms=50,
        claim_idle_ms=0,
        idempotent=True,
    )
    calls = []
    while survivor.process(balance_effect(calls, stream)):
        pass
    assert len(calls) == 2  # pay_2 and pay_3: pay_1 was committed before the crash
    assert redis_client.hgetall(balance_key(stream)) == {b"total": b"30", b"count": b"3"}
    assert redis_client.xpending(stream.config.redis.stream, "billing")["pending"] == 0
    assert len(done_keys(redis_client, stream.config.name)) == 3


@pytest.mark.parametrize("batch", [1, 10], ids=["across-polls", "one-poll"])
def test_a_key_function_dedups_different_entries_with_one_business_key(
    make_stream, redis_client, batch
):
    """pay_2 was sent twice (two Kafka records, two offsets): with the payment ID as the key
    the second is acknowledged and skipped, whether it arrives in a later poll (checked before
    delivery) or in the same batch (checked again under WATCH before the handler)."""
    stream = translated(make_stream, payments(["pay_1", "pay_2", "pay_2", "pay_3"]))
    consumer = StreamConsumer(
        stream.config,
        "billing",
        "c1",
        batch=batch,
        block_ms=50,
        idempotency_key=lambda r: json.loads(r.value)["id"],
    )
    calls = []
    while consumer.process(balance_effect(calls, stream)):
        pass
    assert len(calls) == 3 and consumer.duplicates == 1
    assert redis_client.hgetall(balance_key(stream)) == {b"total": b"30", b"count": b"3"}
    assert redis_client.xpending(stream.config.redis.stream, "billing")["pending"] == 0
    names = done_keys(redis_client, stream.config.name)
    prefix = f"{{{stream.config.name}}}:ferry:done:billing:key:".encode()
    assert names == [prefix + b"pay_1", prefix + b"pay_2", prefix + b"pay_3"]


def test_processed_keys_expire_and_stay_in_the_migrations_hash_slot(make_stream, redis_client):
    stream = translated(make_stream, payments(["pay_1", "pay_2"]))
    consumer = StreamConsumer(
        stream.config, "billing", "c1", block_ms=50, idempotent=True, idempotency_ttl_s=3600
    )
    calls = []
    while consumer.process(balance_effect(calls, stream)):
        pass
    names = done_keys(redis_client, stream.config.name)
    assert len(names) == 2
    tag = f"{{{stream.config.name}}}"
    slot = key_slot(stream.config.redis.stream.encode())
    for name in names:
        assert name.startswith(tag.encode())
        assert key_slot(name) == slot
        assert 3500 < redis_client.ttl(name) <= 3600
    default = StreamConsumer(stream.config, "billing", "c2", block_ms=50, idempotent=True)
    assert default.processed.ttl_s == 7 * 24 * 3600


def test_ack_records_the_key_with_the_xack_when_the_effect_is_elsewhere(make_stream, redis_client):
    """Today's poll/ack loop, idempotent: ack writes each processed key (SET NX, EX) in the
    same MULTI as the XACK, so a later entry with the same business key is skipped."""
    stream = translated(make_stream, payments(["pay_1", "pay_1", "pay_2"]))
    consumer = StreamConsumer(
        stream.config,
        "billing",
        "c1",
        batch=1,
        block_ms=50,
        idempotency_key=lambda r: json.loads(r.value)["id"],
    )
    seen = []
    while batch := consumer.poll():
        seen += [json.loads(d.record.value)["id"] for d in batch]  # the effect: outside Redis
        consumer.ack(*batch)
    assert seen == ["pay_1", "pay_2"] and consumer.duplicates == 1
    assert len(done_keys(redis_client, stream.config.name)) == 2
    assert redis_client.xpending(stream.config.redis.stream, "billing")["pending"] == 0


def test_without_idempotency_nothing_is_recorded_and_every_entry_is_delivered(
    make_stream, redis_client
):
    stream = translated(make_stream, payments(["pay_1", "pay_1"]))
    consumer = StreamConsumer(stream.config, "billing", "c1", block_ms=50)
    calls = []
    while consumer.process(balance_effect(calls, stream)):
        pass
    assert len(calls) == 2 and consumer.duplicates == 0
    assert done_keys(redis_client, stream.config.name) == []


def test_a_failing_handler_writes_nothing_and_is_retried_then_dead_lettered(
    make_stream, redis_client
):
    stream = translated(make_stream, payments(["pay_1"]))
    consumer = StreamConsumer(
        stream.config,
        "billing",
        "c1",
        block_ms=50,
        claim_idle_ms=0,
        max_failures=2,
        idempotent=True,
    )

    def broken(delivery, tx):
        tx.hincrby(balance_key(stream), "total", 1)  # queued, then discarded
        raise ValueError("bad payment")

    first = consumer.process(broken)
    assert (first.failed, first.dead_lettered) == (1, 0)
    second = consumer.process(broken)
    assert (second.failed, second.dead_lettered) == (0, 1)
    assert not redis_client.exists(balance_key(stream))
    assert done_keys(redis_client, stream.config.name) == []  # not processed: no key
    dead = redis_client.xrange(consumer.dead_letter)
    assert len(dead) == 1 and b"ValueError: bad payment" in dead[0][1][b"reason"]


def test_the_consumer_role_may_run_an_idempotent_consumer(make_stream, acl_user):  # noqa: F811
    stream = translated(make_stream, payments(["pay_1", "pay_1", "pay_2"]))
    _, config = as_user(stream, acl_user("consumer", stream.config.name))
    consumer = StreamConsumer(
        config,
        "billing",
        "c1",
        batch=10,
        block_ms=50,
        idempotency_key=lambda r: json.loads(r.value)["id"],
    )
    calls = []
    try:
        while consumer.process(balance_effect(calls, stream)):
            pass
    except redis.exceptions.NoPermissionError as exc:
        pytest.fail(f"the consumer role lacks a command: {exc}")
    assert len(calls) == 2 and consumer.duplicates == 1


def test_the_demos_group_consumer_records_keys_and_skips_what_was_processed(
    make_stream, redis_client, tmp_path
):
    """The reference consumer (group translated already: it reads Redis at once) records a
    processed key per entry with its XACK; an entry recorded before (processed by an earlier
    consumer that died before its XACK reached Redis) is skipped, not logged again."""
    from ferry.live.group_consumer import run_group_consumer
    from ferry.live.idempotency import processed_key

    stream = translated(make_stream, payments([f"pay_{i}" for i in range(6)]))
    tag = f"{{{stream.config.name}}}"
    redis_client.set(processed_key(tag, "billing", b"po:0:2"), "earlier", ex=60)
    log = tmp_path / "consumer.log"

    deadline = time.monotonic() + 30  # a bound for a consumer that never drains: then it fails

    def drained() -> bool:
        [group] = redis_client.xinfo_groups(stream.config.redis.stream)
        pending = redis_client.xpending(stream.config.redis.stream, "billing")["pending"]
        return (group["lag"] == 0 and pending == 0) or time.monotonic() > deadline

    counts = run_group_consumer(stream.config, "billing", log, should_stop=drained)
    logged = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert len(logged) == 5 and counts["redis"] == 5 and counts["duplicates"] == 1
    assert len(done_keys(redis_client, stream.config.name)) == 6
