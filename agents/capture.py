"""Per-attempt capture of stdout, stderr and `logging` lines, bounded in line size, line
count and bytes.

`sys.stdout`/`sys.stderr` are replaced once per process by a router that writes to the
capture of the attempt running in the current context (threads get a copy of the context),
and to the real stream otherwise; a root `logging` handler does the same for log records.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

_current: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("ff_capture", default=None)
_installed = False
_install_lock = threading.Lock()


class Capture:
    """One attempt's output. Lines wait in `take()` for the agent to ship them to the run's
    live log; the last `tail` lines also travel with the attempt's result. An attempt over
    `max_lines` or `max_bytes` keeps its first lines, then a visible marker, and drops the rest
    (counted in a last marker when it ends)."""

    def __init__(self, *, max_line_bytes: int, max_lines: int, max_bytes: int = 1 << 20,
                 redact: tuple[str, ...] = (), tail: int = 100) -> None:
        self.redact = tuple(r for r in redact if r)  # secret values, replaced by *** in every line
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.size = 0
        self.count = 0
        self.tail: deque[list[Any]] = deque(maxlen=tail)  # [unix time, stream, text]
        self.dropped = 0
        self._pending: list[list[Any]] = []
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            buf = self._partial.get(stream, "") + text
            *complete, rest = buf.split("\n")
            for line in complete:
                self._add(stream, line)
            if len(rest) > self.max_line_bytes:
                self._add(stream, rest)
                rest = ""
            self._partial[stream] = rest

    def _add(self, stream: str, line: str) -> None:
        if self.count >= self.max_lines or self.size >= self.max_bytes:
            if not self.dropped:
                self._keep("system", f"[output truncated: over {self.max_lines} lines or {self.max_bytes} "
                                     "bytes; later lines are dropped]")
            self.dropped += 1
            return
        for secret in self.redact:  # before any cut, so no part of a secret survives
            line = line.replace(secret, "***")
        if len(line) > self.max_line_bytes:
            line = line[: self.max_line_bytes] + f"… [line truncated at {self.max_line_bytes} bytes]"
        if "\x00" in line:  # Postgres text cannot hold NUL
            line = line.replace("\x00", "\ufffd")
        self.size += len(line)
        self.count += 1
        self._keep(stream, line)

    def _keep(self, stream: str, line: str) -> None:
        entry = [time.time(), stream, line]
        self.tail.append(entry)
        self._pending.append(entry)

    def take(self) -> list[list[Any]]:
        """The lines written since the last call (complete lines only)."""
        with self._lock:
            out, self._pending = self._pending, []
            return out

    def finish(self) -> list[list[Any]]:
        """End the attempt's output: its partial last lines become lines, and a count of what
        was dropped is noted. Returns the tail; `take()` still has the lines not yet shipped."""
        with self._lock:
            for stream, rest in self._partial.items():
                if rest:
                    self._add(stream, rest)
            self._partial.clear()
            if self.dropped:
                self._keep("system", f"[{self.dropped} more lines dropped: over {self.max_lines} lines "
                                     f"or {self.max_bytes} bytes]")
                self.dropped = 0
            return list(self.tail)


class _Router:
    def __init__(self, stream: str, real: TextIO) -> None:
        self._stream = stream
        self._real = real

    def write(self, text: str) -> int:
        cap = _current.get()
        if cap is None:
            return self._real.write(text)
        cap.write(self._stream, text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _LogRouter(logging.Handler):
    """The `logging` records of a running attempt become its lines (stream `log`); outside an
    attempt, warnings and errors go to stderr, as Python does when logging is unconfigured."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        cap = _current.get()
        try:
            if cap is not None:
                cap.write("log", self.format(record) + "\n")
            elif record.levelno >= logging.WARNING and not _configured:
                sys.__stderr__.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_configured = False


def install() -> None:
    global _installed, _configured
    with _install_lock:
        if not _installed:
            sys.stdout = _Router("stdout", sys.stdout)  # type: ignore[assignment]
            sys.stderr = _Router("stderr", sys.stderr)  # type: ignore[assignment]
            root = logging.getLogger()
            _configured = bool(root.handlers)
            if not _configured and root.level == logging.WARNING:
                root.setLevel(logging.INFO)  # a task's logger.info(...) is part of its output
            root.addHandler(_LogRouter())
            _installed = True


def activate(cap: Capture) -> contextvars.Token:
    return _current.set(cap)
