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


class Conflict(PermanentError):
    pass


class ConfigError(PermanentError):
    pass
