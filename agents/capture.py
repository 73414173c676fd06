"""Per-attempt capture of stdout and stderr lines, bounded in line size and line count.

`sys.stdout`/`sys.stderr` are replaced once per process by a router that writes to the
capture of the attempt running in the current context (threads get a copy of the context),
and to the real stream otherwise.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from typing import Any, TextIO

_current: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("ff_capture", default=None)
_installed = False
_install_lock = threading.Lock()


class Capture:
    def __init__(self, *, max_line_bytes: int, max_lines: int, max_bytes: int = 1 << 20,
                 redact: tuple[str, ...] = ()) -> None:
        self.redact = tuple(r for r in redact if r)  # secret values, replaced by *** in every line
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.size = 0
        self.lines: list[list[Any]] = []  # [unix time, stream, text]
        self.dropped = 0
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
        if len(self.lines) >= self.max_lines or self.size >= self.max_bytes:
            self.dropped += 1
            return
        for secret in self.redact:  # before any cut, so no part of a secret survives
            line = line.replace(secret, "***")
        if len(line) > self.max_line_bytes:
            line = line[: self.max_line_bytes] + f"… [line truncated at {self.max_line_bytes} bytes]"
        if "\x00" in line:  # Postgres text cannot hold NUL
            line = line.replace("\x00", "\ufffd")
        self.size += len(line)
        self.lines.append([time.time(), stream, line])

    def finish(self) -> list[list[Any]]:
        with self._lock:
            for stream, rest in self._partial.items():
                if rest:
                    self._add(stream, rest)
            self._partial.clear()
            if self.dropped:
                self.lines.append([time.time(), "system", f"[{self.dropped} more lines dropped: over "
                                   f"{self.max_lines} lines or {self.max_bytes} bytes]"])
                self.dropped = 0
            return self.lines


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


def install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.stdout = _Router("stdout", sys.stdout)  # type: ignore[assignment]
            sys.stderr = _Router("stderr", sys.stderr)  # type: ignore[assignment]
            _installed = True


def activate(cap: Capture) -> contextvars.Token:
    return _current.set(cap)
