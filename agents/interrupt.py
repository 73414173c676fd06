"""Stopping synchronous task code running in a worker thread, cooperatively.

Python cannot kill a thread; it can raise an exception in it the next time it runs Python
bytecode (`PyThreadState_SetAsyncExc`). Code blocked inside one long C call notices only when
the call returns. `Slot` makes sure an interrupt aimed at one attempt never lands in another
attempt, or in the pool's own code, after that attempt ended.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any


class AttemptInterrupted(BaseException):
    """Raised inside task code that was cancelled or timed out. BaseException, so a task's
    `except Exception` does not swallow it."""


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class Slot:
    """Runs one call in the current thread and lets another thread interrupt exactly that call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: int | None = None
        self.interrupted: str | None = None
        self.started_at = 0.0

    def call(self, fn: Callable[..., Any], args: Any) -> Any:
        try:
            with self._lock:
                if self.interrupted:
                    raise AttemptInterrupted(self.interrupted)
                self._thread = threading.get_ident()
            self.started_at = time.time()
            try:
                return fn(**args) if isinstance(args, dict) else fn(*args)
            finally:
                with self._lock:
                    thread, self._thread = self._thread, None
                    if thread is not None:
                        # An interrupt sent just before we got here may still be pending.
                        _set_async_exc(thread, ctypes.py_object())  # type: ignore[arg-type]
        except AttemptInterrupted:
            raise AttemptInterrupted(self.interrupted or "interrupted") from None

    def interrupt(self, reason: str) -> bool:
        with self._lock:
            self.interrupted = reason
            if self._thread is None:
                return False
            return _set_async_exc(self._thread, ctypes.py_object(AttemptInterrupted)) == 1
