"""The threads slots run synchronous task functions on: outcomes, growth, batching, closing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agents.threads import SlotThreads


def _run(max_threads: int, body: Callable[[SlotThreads], Awaitable[None]]) -> None:
    async def main() -> None:
        threads = SlotThreads(max_threads)
        try:
            await body(threads)
        finally:
            threads.close()

    asyncio.run(main())


def _blocked(threads: SlotThreads) -> tuple[asyncio.Future[Any], threading.Event]:
    """A call that holds its thread until the event is set."""
    release = threading.Event()
    return threads.submit(release.wait, 30), release


def test_results_and_errors_come_back_as_the_futures_outcome():
    def boom() -> None:
        raise ValueError("bad")

    def stop() -> None:
        raise StopIteration("done")

    async def body(threads: SlotThreads) -> None:
        assert await threads.submit(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="bad"):
            await threads.submit(boom)
        # A future cannot carry StopIteration: it arrives as a RuntimeError, not as a hang.
        with pytest.raises(RuntimeError, match="StopIteration"):
            await threads.submit(stop)

    _run(4, body)


def test_many_calls_finish_with_few_threads_and_fewer_wakeups():
    async def body(threads: SlotThreads) -> None:
        wakeups = 0
        settle = threads._settle

        def counted() -> None:
            nonlocal wakeups
            wakeups += 1
            settle()

        threads._settle = counted  # type: ignore[method-assign]
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> int:
            async with sem:
                return await threads.submit(lambda x: x * 2, i)

        results = await asyncio.gather(*(one(i) for i in range(5000)))
        assert results == [i * 2 for i in range(5000)]
        assert threads.size <= 8
        # Calls that finish while the loop is busy share one wakeup.
        assert wakeups < 5000, wakeups

    _run(8, body)


def test_a_thread_stuck_in_a_call_does_not_hold_up_the_next_calls():
    async def body(threads: SlotThreads) -> None:
        stuck, release = _blocked(threads)
        assert await asyncio.wait_for(threads.submit(lambda: "ran"), 5) == "ran"
        assert await asyncio.wait_for(threads.submit(lambda: "ran again"), 5) == "ran again"
        assert threads.size == 2
        release.set()
        assert await stuck is True

    _run(3, body)


def test_closing_cancels_calls_not_started_and_refuses_new_ones():
    async def body(threads: SlotThreads) -> None:
        running, release = _blocked(threads)
        queued = threads.submit(lambda: "never")
        await asyncio.sleep(0.05)
        threads.close()
        assert queued.cancelled()
        with pytest.raises(RuntimeError, match="closed"):
            threads.submit(lambda: None)
        release.set()
        assert await running is True

    _run(1, body)
