"""Run ids: UUIDs, always stored, hashed to partitions and compared in one canonical form."""

from __future__ import annotations

import uuid

from flowforge import errors


def run_id(text: str) -> str:
    """The canonical form (lowercase, hyphenated) of a run id given in any form a UUID may be
    written (uppercase, braces, `urn:uuid:`, no hyphens). Anything else is a run that does not
    exist: NotFound."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        raise errors.NotFound(f"run {text!r} not found; a run id is a UUID, as POST /api/v1/runs returns") from None


def is_uuid(text: str) -> bool:
    """Whether `text` is a UUID in any form `run_id` accepts."""
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True
