"""The seam between the store and the live stream, on real Redis and Postgres: chunks appended
as agents append them (the Lua script), persisted by the log writer, read by LogTail. Every
line once and in order, whether it is found in the store, in the live stream, or has to wait
for the writer because the live stream was trimmed past it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis.asyncio as aioredis

from flowforge import keys
from flowforge.logs import postgres
from flowforge.logs.model import Filter
from flowforge.logs.tail import LogTail
from flowforge.logs.writer import LogWriter

LUA = (Path(__file__).resolve().parents[1] / "agents" / "lua" / "log_append.lua").read_text()
TENANT = "default"


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def parts(runner, database_url: str, redis_url: str):
    store = postgres.PostgresLogStore.connect(database_url)
    runner.run(store.start())
    client = aioredis.Redis.from_url(redis_url)
    yield store, client
    runner.run(client.aclose())
    runner.run(store.close())


async def _append(client, run_id: str, task: str, start: int, n: int, maxlen: int = 10_000) -> None:
    """n lines `task i`, as one agent chunk."""
    lines = [[1.7e9 + i, "stdout", f"{task} {i}"] for i in range(start, start + n)]
    payload = msgpack.packb({"task": task, "attempt": 1, "lines": lines})
    await client.eval(LUA, 3, keys.run_log(0, run_id), keys.run_log_count(0, run_id), keys.log_ingest(0),
                      n, payload, run_id, TENANT, maxlen, 600_000, 600_000)


async def _collect(tail: LogTail, run_id: str, *, after: int = 0, keep: Filter = Filter(), ended=None):
    async def never() -> bool:
        return False

    out = []
    async for line in tail.follow(TENANT, run_id, after=after, keep=keep, ended=ended or never):
        out.append(line)
    return out


def test_lines_come_from_the_store_then_the_live_stream_without_gap_or_repeat(runner, parts):
    store, client = parts
    run_id = str(uuid.uuid4())
    writer = LogWriter(client, store, [0], consumer=f"w-{run_id[:8]}")

    async def scenario():
        await client.delete(keys.log_ingest(0))
        from flowforge.backends.redis_streams import ensure_group
        await ensure_group(client, keys.log_ingest(0), keys.LOG_GROUP)
        for c in range(30):  # 3,000 lines, half stored
            await _append(client, run_id, "a", c * 100, 100)
            if c == 14:
                while await writer.once():
                    pass
        tail = LogTail(client, store, 1, poll_s=0.1)
        assert await store.last_pos(TENANT, run_id) == 1500
        done = asyncio.Event()

        async def ended() -> bool:
            return done.is_set()

        follower = asyncio.create_task(_collect(tail, run_id, ended=ended))
        for c in range(30, 40):  # live lines while it follows
            await _append(client, run_id, "a", c * 100, 100)
            await asyncio.sleep(0.02)
        done.set()
        lines = await asyncio.wait_for(follower, 30)
        assert [x.line for x in lines] == [f"a {i}" for i in range(4000)]
        assert [x.pos for x in lines] == list(range(1, 4001))
        # Paging sees the same, wherever each line is.
        got, after = [], 0
        while True:
            page, after = await tail.page(TENANT, run_id, after=after, limit=333)
            if not page:
                break
            got += page
        assert [x.pos for x in got] == list(range(1, 4001))
        # A resume from any point gives exactly the rest.
        rest = await _collect(tail, run_id, after=2718, ended=ended)
        assert [x.pos for x in rest] == list(range(2719, 4001))

    runner.run(scenario())


def test_a_trimmed_live_stream_waits_for_the_writer_instead_of_skipping(runner, parts):
    store, client = parts
    run_id = str(uuid.uuid4())
    writer = LogWriter(client, store, [0], consumer=f"w-{run_id[:8]}")

    async def scenario():
        from flowforge.backends.redis_streams import ensure_group
        await ensure_group(client, keys.log_ingest(0), keys.LOG_GROUP)
        while await writer.once():  # drain what other tests left
            pass
        for c in range(400):  # the live stream keeps ~10 chunks: most lines are only in the ingest stream
            await _append(client, run_id, "b", c * 5, 5, maxlen=10)
        assert await client.xlen(keys.run_log(0, run_id)) < 400
        tail = LogTail(client, store, 1, poll_s=0.1)

        async def ended() -> bool:
            return True

        follower = asyncio.create_task(_collect(tail, run_id, ended=ended))
        await asyncio.sleep(0.5)
        assert not follower.done(), "it must wait for lines it cannot read yet"
        while await writer.once():  # the writer catches up
            pass
        lines = await asyncio.wait_for(follower, 30)
        assert [x.pos for x in lines] == list(range(1, 2001))

    runner.run(scenario())


def test_filters_skip_other_tasks_lines_but_resume_correctly(runner, parts):
    store, client = parts
    run_id = str(uuid.uuid4())

    async def scenario():
        for c in range(10):
            await _append(client, run_id, "x" if c % 2 else "y", c * 10, 10)

        async def ended() -> bool:
            return True

        tail = LogTail(client, store, 1, poll_s=0.1)
        xs = await _collect(tail, run_id, keep=Filter(task="x"), ended=ended)
        assert [x.task for x in xs] == ["x"] * 50
        assert [x.pos for x in xs] == [p for c in range(10) if c % 2 for p in range(c * 10 + 1, c * 10 + 11)]
        page, cursor = await tail.page(TENANT, run_id, after=0, limit=1000, keep=Filter(task="nobody"))
        assert page == [] and cursor == 100

    runner.run(scenario())
