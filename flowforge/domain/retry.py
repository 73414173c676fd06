"""Retry math: the delay before the next attempt. Jitter is drawn from a seed, not a global RNG,
so the same (policy, attempt, seed) always gives the same delay and the decision replays."""

from __future__ import annotations

import hashlib

from flowforge.domain import spec


def unit_interval(seed: str) -> float:
    """A number in [0, 1) that depends only on `seed`."""
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def backoff_seconds(policy: spec.RetryPolicy, failed_attempt: int, *, seed: str) -> float:
    """Delay after attempt number `failed_attempt` (1-based) failed, before the next one starts.

    exponential: base * factor ** (failed_attempt - 1), capped at max_seconds.
    fixed:       base, capped at max_seconds.
    Jitter removes up to `jitter` of the delay, so delays never exceed the cap.
    """
    if failed_attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if policy.backoff == "fixed":
        delay = policy.base_seconds
    else:
        # Cap the exponent first so huge attempt numbers cannot overflow a float.
        exponent = min(failed_attempt - 1, 1_000)
        try:
            delay = policy.base_seconds * policy.factor**exponent
        except OverflowError:
            delay = policy.max_seconds
    delay = min(delay, policy.max_seconds)
    return delay * (1.0 - policy.jitter * unit_interval(seed))


def retries_left(policy: spec.RetryPolicy, attempt: int) -> bool:
    """Whether a task whose attempt number `attempt` just failed may try again."""
    return attempt <= policy.limit
