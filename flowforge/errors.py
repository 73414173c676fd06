"""The error root. Backends translate driver exceptions into these at the boundary, so the
engine never catches `redis.*` or `sqlalchemy.*` itself."""

from __future__ import annotations


class FlowForgeError(Exception):
    """Root of every error FlowForge raises on purpose."""


class TemporaryError(FlowForgeError):
    """Worth retrying later: a backend is unreachable, a connection dropped."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(FlowForgeError):
    """Retrying will not help: bad input, a missing object, a broken invariant."""


class NotFound(PermanentError):
    pass


class InvalidInput(PermanentError):
    """A request value that is wrong on its own: names the field and how to fix it."""

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.hint = hint


class Conflict(PermanentError):
    pass


class QuotaExceeded(PermanentError):
    """A submission past a hard quota (active runs, DAG size): names the limit (`field`), what
    was counted and how to fix it; worth retrying after `retry_after` seconds."""

    def __init__(self, field: str, message: str, hint: str, *, retry_after: float) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.hint = hint
        self.retry_after = retry_after


class ConfigError(PermanentError):
    pass
