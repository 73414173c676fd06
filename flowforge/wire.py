"""The wire protocol between API, coordinator and agents: msgpack envelopes with a schema version.

No pickle on the wire: an envelope is a msgpack map of plain values. Every envelope carries
`v` (schema version) and `k` (kind); readers refuse versions they do not know.
"""

from __future__ import annotations

from typing import Any

import msgpack

SCHEMA_VERSION = 1

# Event kinds on a partition's event stream.
RUN_CREATED = "run_created"
RUN_CANCEL = "cancel_requested"
RUN_RETRY = "retry_requested"
ATTEMPT_STARTED = "attempt_started"
ATTEMPT_FINISHED = "attempt_finished"
# The one kind on a pool stream.
DISPATCH = "dispatch"
# Reasons an attempt ended without success.
FAIL_ERROR = "error"
FAIL_TIMEOUT = "timeout"
FAIL_CANCELLED = "cancelled"
FAIL_DEAD_LETTER = "dead_letter"
FAIL_REJECTED = "rejected"  # the agent refused it: function not allowed, bad envelope, bad result
FAIL_OOM = "oom_killed"  # a heavy attempt's container ran out of memory
FAIL_INFRASTRUCTURE = "infrastructure"  # the Pod was evicted or preempted, or its node was lost
FAIL_IMAGE = "image_pull"  # the image could not be pulled
FAIL_UNSCHEDULABLE = "unschedulable"  # no node could take the Pod in time


class WireError(ValueError):
    """An envelope that cannot be read: corrupt, or from an unknown schema version."""


def pack(kind: str, **fields: Any) -> bytes:
    fields["v"] = SCHEMA_VERSION
    fields["k"] = kind
    return msgpack.packb(fields, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    try:
        env = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"corrupt envelope: {exc}") from None
    if not isinstance(env, dict) or "k" not in env:
        raise WireError("envelope is not a map with a kind")
    if env.get("v") != SCHEMA_VERSION:
        raise WireError(f"unknown envelope schema version {env.get('v')!r}")
    return env
