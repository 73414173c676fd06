"""Importing task functions: only from modules the pool allows, cached so calls stay warm."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any


class Rejected(Exception):
    """The agent will not run this attempt; retrying on the same pool would not help."""


class Loader:
    def __init__(self, pool: str, allowed: Sequence[str]) -> None:
        self.pool = pool
        self.allowed = list(allowed)
        self._cache: dict[str, tuple[Callable[..., Any], bool]] = {}

    def allows(self, module: str) -> bool:
        return any(fnmatch.fnmatchcase(module, pattern) for pattern in self.allowed)

    def load(self, path: str) -> tuple[Callable[..., Any], bool]:
        """Return (callable, is_async) for 'package.module:function'."""
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        module_name, sep, qualname = path.partition(":")
        if not sep or not module_name or not qualname:
            raise Rejected(f"fn {path!r} is not of the form 'package.module:function'")
        if not self.allows(module_name):
            raise Rejected(
                f"fn {path!r} is not allowed in pool '{self.pool}' (allowed_functions: "
                f"{', '.join(self.allowed) or 'none'}); add a pattern matching '{module_name}' "
                f"to the pool's allowed_functions"
            )
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise Rejected(f"cannot import module '{module_name}' for fn {path!r}: {exc}") from None
        for part in qualname.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise Rejected(f"module '{module_name}' has no attribute '{qualname}'") from None
        if not callable(obj):
            raise Rejected(f"fn {path!r} is not callable")
        is_async = inspect.iscoroutinefunction(inspect.unwrap(obj))
        self._cache[path] = (obj, is_async)
        return obj, is_async

    def prewarm(self, modules: Sequence[str]) -> None:
        for name in modules:
            importlib.import_module(name)
