"""The Redis Lua scripts against a real Redis: atomic publish-and-ack, reclaim and dead-letter,
and trimming that never drops unacknowledged or undelivered work."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import redis

from flowforge import keys, wire
from flowforge.backends import redis_streams

ROOT = Path(__file__).resolve().parent.parent
FINISH = (ROOT / "agents/lua/finish.lua").read_text()
RECLAIM = (ROOT / "agents/lua/reclaim.lua").read_text()
TRIM = redis_streams.TRIM
REVOKE = redis_streams.REVOKE
F = keys.ENTRY_FIELD


@pytest.fixture()
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    part = random.randint(10_000, 99_999)  # a partition of our own, away from the live stack's
    yield client, part
    for key in (keys.pool_stream(part, "t"), keys.dead_letter(part, "t"), keys.events(part)):
        client.delete(key)


def _dispatch(client, part, n):
    stream = keys.pool_stream(part, "t")
    client.xgroup_create(stream, keys.AGENT_GROUP, id="0", mkstream=True)
    return [client.xadd(stream, {F: wire.pack(wire.DISPATCH, run="r", task=f"k{i}", attempt=1, tenant="x")})
            for i in range(n)]


def test_finish_publishes_results_and_acknowledges_in_one_step(r):
    client, part = r
    stream = keys.pool_stream(part, "t")
    ids = _dispatch(client, part, 3)
    client.xreadgroup(keys.AGENT_GROUP, "agent-1", {stream: ">"}, count=3)
    assert client.xpending(stream, keys.AGENT_GROUP)["pending"] == 3
    results = [wire.pack(wire.ATTEMPT_FINISHED, run="r", task=f"k{i}", attempt=1, ok=True) for i in range(2)]
    script = client.register_script(FINISH)
    assert script(keys=[stream, keys.events(part)], args=[keys.AGENT_GROUP, ids[0], results[0], ids[1], results[1]]) == 2
    assert client.xpending(stream, keys.AGENT_GROUP)["pending"] == 1
    events = client.xrange(keys.events(part))
    assert [wire.unpack(f[F])["task"] for _, f in events] == ["k0", "k1"]


def test_reclaim_takes_over_idle_entries_then_dead_letters(r):
    client, part = r
    stream = keys.pool_stream(part, "t")
    _dispatch(client, part, 1)
    client.xreadgroup(keys.AGENT_GROUP, "dead-agent", {stream: ">"}, count=1)  # delivery 1
    script = client.register_script(RECLAIM)
    args = lambda consumer, idle: [keys.AGENT_GROUP, consumer, idle, 10, 3, 100]  # noqa: E731
    ks = [stream, keys.dead_letter(part, "t"), keys.events(part)]
    assert script(keys=ks, args=args("a2", 60_000)) == []  # not idle long enough: left alone
    for delivery in (2, 3):
        claimed = script(keys=ks, args=args(f"a{delivery}", 0))
        assert len(claimed) == 1
        assert client.xpending_range(stream, keys.AGENT_GROUP, "-", "+", 10)[0]["times_delivered"] == delivery
    assert script(keys=ks, args=args("a4", 0)) == []  # delivery 4 > max 3: dead-lettered
    assert client.xpending(stream, keys.AGENT_GROUP)["pending"] == 0
    dead = client.xrange(keys.dead_letter(part, "t"))
    assert len(dead) == 1 and dead[0][1][b"deliveries"] == b"4"
    (_, fields), = client.xrange(keys.events(part))
    event = wire.unpack(fields[F])
    assert (event["k"], event["task"], event["ok"], event["reason"]) == ("attempt_finished", "k0", False, "dead_letter")
    assert "max_deliveries=3" in event["error"]


def test_reclaim_counts_what_it_takes_over_and_dead_letters(r):
    client, part = r
    stream, counts = keys.pool_stream(part, "t"), keys.reclaim_counts(part)
    _dispatch(client, part, 2)
    client.xreadgroup(keys.AGENT_GROUP, "dead-agent", {stream: ">"}, count=2)  # delivery 1 of both
    script = client.register_script(RECLAIM)
    ks = [stream, keys.dead_letter(part, "t"), keys.events(part), counts]
    try:
        args = lambda consumer, most: [keys.AGENT_GROUP, consumer, 0, 10, most, 100, "t"]  # noqa: E731
        assert len(script(keys=ks, args=args("a2", 3))) == 2  # delivery 2: both taken over
        assert client.hgetall(counts) == {b"reclaimed:t": b"2"}
        assert script(keys=ks, args=args("a3", 1)) == []  # delivery 3 > 1: both dead-lettered
        assert client.hgetall(counts) == {b"reclaimed:t": b"2", b"dead_lettered:t": b"2"}
    finally:
        client.delete(counts)


def test_trim_keeps_pending_and_undelivered_entries(r):
    client, part = r
    stream = keys.pool_stream(part, "t")
    ids = _dispatch(client, part, 6)
    client.xreadgroup(keys.AGENT_GROUP, "a", {stream: ">"}, count=4)  # 4 delivered, 2 not yet
    client.xack(stream, keys.AGENT_GROUP, ids[0], ids[1], ids[3])  # ids[2] still pending
    client.register_script(TRIM)(keys=[stream], args=[keys.AGENT_GROUP])
    left = [entry_id for entry_id, _ in client.xrange(stream)]
    assert left[0] == ids[2]  # everything from the oldest pending entry on is kept
    assert ids[4] in left and ids[5] in left  # undelivered entries are kept
    assert ids[0] not in left and ids[1] not in left
    client.xack(stream, keys.AGENT_GROUP, ids[2])
    client.xreadgroup(keys.AGENT_GROUP, "a", {stream: ">"}, count=10)
    client.xack(stream, keys.AGENT_GROUP, ids[4], ids[5])
    client.register_script(TRIM)(keys=[stream], args=[keys.AGENT_GROUP])
    assert client.xlen(stream) <= 1  # all acknowledged: only the last delivered id may remain


def test_revoke_deletes_only_entries_no_agent_has_read(r):
    client, part = r
    stream = keys.pool_stream(part, "t")
    ids = _dispatch(client, part, 6)
    client.xreadgroup(keys.AGENT_GROUP, "a", {stream: ">"}, count=2)  # ids[0:2] read, 4 not
    client.xack(stream, keys.AGENT_GROUP, ids[0])
    revoke = client.register_script(REVOKE)
    taken = revoke(keys=[stream], args=[keys.AGENT_GROUP, ids[0], ids[1], ids[3], ids[5], b"99999999999999-0"])
    assert taken == [ids[3], ids[5]]  # unread ones only; an unknown id is ignored
    assert [e for e, _ in client.xrange(stream)] == [ids[0], ids[1], ids[2], ids[4]]
    assert client.xpending(stream, keys.AGENT_GROUP)["pending"] == 1  # ids[1] is still being worked on
    got = client.xreadgroup(keys.AGENT_GROUP, "b", {stream: ">"}, count=10)
    assert [e for e, _ in got[0][1]] == [ids[2], ids[4]]  # what was not taken back is read as before
    assert revoke(keys=[stream], args=[keys.AGENT_GROUP, ids[2]]) == []  # read now: stays
    assert revoke(keys=["no-such-stream"], args=[keys.AGENT_GROUP, ids[2]]) == []


def test_the_queue_returns_entry_ids_and_revokes_through_the_script(r, redis_url):
    asyncio.run(_queue_ids_and_revoke(*r, redis_url))


async def _queue_ids_and_revoke(client, part, redis_url):
    queue = redis_streams.RedisQueue.connect(redis_url)
    try:
        stream = keys.pool_stream(part, "t")
        client.xgroup_create(stream, keys.AGENT_GROUP, id="0", mkstream=True)
        ids = await queue.dispatch([(part, "t", wire.pack(wire.DISPATCH, run="r", task=f"k{i}", attempt=1))
                                    for i in range(3)])
        assert [e for e, _ in client.xrange(stream)] == ids
        more = await queue.commit([(part, "t", wire.pack(wire.DISPATCH, run="r", task="k3", attempt=1))], [], [])
        assert len(more) == 1 and client.xrange(stream)[-1][0] == more[0]
        client.xreadgroup(keys.AGENT_GROUP, "a", {stream: ">"}, count=1)
        assert await queue.revoke(part, "t", [*ids, *more]) == [ids[1], ids[2], more[0]]
    finally:
        await queue.close()


def test_keys_of_a_partition_share_one_cluster_slot():
    import re

    for part in (0, 7, 123):
        tags = {re.search(r"\{(.*?)\}", k).group(1) for k in
                (keys.events(part), keys.pool_stream(part, "default"), keys.dead_letter(part, "default"))}
        assert tags == {f"p{part}"}
    assert all(keys.partition_of(f"run-{i}", 4) in range(4) for i in range(100))
    assert redis_streams.RedisQueue  # the coordinator side imports cleanly


def test_events_handled_through_waits_for_read_and_acknowledged(r, redis_url):
    import asyncio

    client, part = r
    stream = keys.events(part)

    async def check() -> list[bool]:
        q = redis_streams.RedisQueue.connect(redis_url)
        try:
            assert await q.events_handled_through(part, b"0-0")  # no stream yet: nothing to wait for
            client.xgroup_create(stream, keys.COORDINATOR_GROUP, id="0", mkstream=True)
            ids = [client.xadd(stream, {F: b"x"}) for _ in range(3)]
            position = await q.events_position(part)
            assert position == ids[-1]
            seen = [await q.events_handled_through(part, position)]  # unread
            client.xreadgroup(keys.COORDINATOR_GROUP, "c", {stream: ">"}, count=3)
            seen.append(await q.events_handled_through(part, position))  # read, not acknowledged
            client.xack(stream, keys.COORDINATOR_GROUP, *ids[:2])
            seen.append(await q.events_handled_through(part, ids[1]))  # the first two are handled
            seen.append(await q.events_handled_through(part, position))  # the third is not
            client.xack(stream, keys.COORDINATOR_GROUP, ids[2])
            client.xadd(stream, {F: b"later"})  # newer events do not matter
            seen.append(await q.events_handled_through(part, position))
            return seen
        finally:
            await q.close()

    assert asyncio.run(check()) == [False, False, True, False, True]
