"""The threads slots run synchronous task functions on: outcomes, growth, batching, closing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agents.threads import SlotThreads


def test_results_and_errors_come_back_as_the_futures_outcome():
    async def main() -> None:
        threads = SlotThreads(4)

        def boom() -> None:
            raise ValueError("bad")

        def stop() -> None:
            raise StopIteration("done")

        assert await threads.submit(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="bad"):
            await threads.submit(boom)
        # A future cannot carry StopIteration: it arrives as a RuntimeError, not as a hang.
        with pytest.raises(RuntimeError, match="StopIteration"):
            await threads.submit(stop)
        threads.close()

    asyncio.run(main())


def test_many_calls_finish_with_few_threads_and_fewer_wakeups():
    async def main() -> None:
        threads = SlotThreads(8)
        loop = asyncio.get_running_loop()
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
        assert loop.is_running()
        threads.close()

    asyncio.run(main())


def test_a_thread_stuck_in_a_call_does_not_hold_up_the_next_calls():
    async def main() -> None:
        threads = SlotThreads(3)
        release = threading.Event()
        stuck = threads.submit(release.wait, 30)
        assert await asyncio.wait_for(threads.submit(lambda: "ran"), 5) == "ran"
        assert await asyncio.wait_for(threads.submit(lambda: "ran again"), 5) == "ran again"
        assert threads.size == 2
        release.set()
        assert await stuck is True
        threads.close()

    asyncio.run(main())


def test_closing_cancels_calls_not_started_and_refuses_new_ones():
    async def main() -> None:
        threads = SlotThreads(1)
        release = threading.Event()
        running = threads.submit(release.wait, 30)
        queued = threads.submit(lambda: "never")
        await asyncio.sleep(0.05)
        threads.close()
        assert queued.cancelled()
        with pytest.raises(RuntimeError, match="closed"):
            threads.submit(lambda: None)
        release.set()
        assert await running is True

    asyncio.run(main())
