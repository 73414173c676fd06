"""A task module that is slow to import (it pulls in an ORM): what `prewarm` is for."""

from __future__ import annotations

import sqlalchemy.orm  # noqa: F401  (the import is the point: ~0.1-0.3 s the first time)


def touch(_item=None) -> None:
    return None
