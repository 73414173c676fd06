"""Driver errors that mean "Postgres is unreachable right now", translated at the boundary into
`errors.TemporaryError`: callers retry or answer 503, and never see a `sqlalchemy` or `psycopg`
exception. Errors that retrying will not fix (bad data, a constraint) pass through."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa

from flowforge import errors

TRANSIENT = (
    OSError,
    sa.exc.OperationalError,  # connection refused or dropped, server shutting down, timeouts
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,  # no pooled connection came free in time
    psycopg.OperationalError,
    psycopg.InterfaceError,
)

C = TypeVar("C", bound=type)


def temporary(exc: BaseException) -> errors.TemporaryError:
    return errors.TemporaryError(f"postgres: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def missing_reference(exc: BaseException) -> bool:
    """A foreign key violation: the row refers to one that is gone (deleted concurrently)."""
    return isinstance(exc, sa.exc.IntegrityError) and isinstance(exc.orig, psycopg.errors.ForeignKeyViolation)


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except TRANSIENT as exc:
            raise temporary(exc) from exc

    return wrapper


def translated(cls: C) -> C:
    """Class decorator: every public coroutine method raises TemporaryError for TRANSIENT."""
    if not isinstance(cls, type):
        raise TypeError(f"@translated decorates classes, not {cls!r}")
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _guarded(member))
    return cls
