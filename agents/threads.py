"""The threads an agent's slots run synchronous task functions on.

A `concurrent.futures` executor hands each finished call back to the event loop with a future of
its own and a wakeup of its own (a write to the loop's self-pipe): for a task that does nothing
that costs more than the task. Here a finished call joins a queue, and the loop is woken once for
whatever finished meanwhile.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class SlotThreads:
    """Runs calls on up to `max_threads` threads, started as they are needed and kept. A call
    submitted while no thread is idle starts a new one (below the cap), so a thread stuck in a
    call that ignored its stop does not hold up the others."""

    def __init__(self, max_threads: int, name: str = "ff-slot") -> None:
        self._max = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job, less the jobs already promised to them
        self._finished: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run `fn(*args)` on a thread; its outcome arrives as the returned future's."""
        if self._closed:
            raise RuntimeError("slot threads are closed")
        loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put((future, fn, args))
        return future

    def close(self) -> None:
        """Stop the threads once their calls end; calls not started yet are cancelled."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)

    @property
    def size(self) -> int:
        return len(self._threads)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            try:
                outcome: tuple[asyncio.Future[Any], bool, Any] = (future, True, fn(*args))
            except StopIteration as exc:  # a future cannot carry it
                outcome = (future, False, RuntimeError(f"task raised StopIteration: {exc!r}"))
            except BaseException as exc:
                outcome = (future, False, exc)
            del job, future, fn, args
            with self._lock:
                self._idle += 1  # free from now: a call submitted when this one's result lands finds it
            self._hand_back(outcome)

    def _hand_back(self, outcome: tuple[asyncio.Future[Any], bool, Any]) -> None:
        self._finished.append(outcome)
        with self._lock:
            if self._wake_pending:
                return  # the loop is already woken for what is queued
            self._wake_pending = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._settle)
        except RuntimeError:  # the loop closed meanwhile: nobody waits for the outcome
            pass

    def _settle(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._finished:
            future, ok, value = self._finished.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
