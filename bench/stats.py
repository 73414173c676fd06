"""Pure statistics helpers shared by every system driver (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) using linear interpolation.

    Matches ``numpy.percentile(values, q)`` (method "linear"): the rank is
    ``(n - 1) * q / 100`` and the result interpolates between the two
    neighbouring order statistics.
    """
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError("percentile() of an empty sequence")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"q must be within [0, 100], got {q!r}")
    rank = (len(data) - 1) * (q / 100.0)
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return data[lo]
    frac = rank - lo
    return data[lo] + (data[hi] - data[lo]) * frac


def hops_ms(timestamps: Sequence[float]) -> list[float]:
    """Differences between consecutive timestamps (seconds) in milliseconds.

    ``n`` timestamps give ``n - 1`` hops.
    """
    return [(b - a) * 1000.0 for a, b in zip(timestamps, timestamps[1:])]


def chain_metrics(hops: Sequence[float]) -> dict[str, float]:
    """The ``chain100`` metrics from pooled per-hop latencies (ms)."""
    return {
        "per_hop_ms_p50": percentile(hops, 50),
        "per_hop_ms_p95": percentile(hops, 95),
    }


def chain_scenario(run_chain: Callable[[int], Sequence[float]], n: int, reps: int) -> dict[str, float]:
    """The ``chain100`` scenario for any system: one warm-up chain, then ``reps`` chains whose
    hops are pooled. ``run_chain(n)`` returns the start timestamps of the chain's tasks."""
    run_chain(n)  # warm-up, not counted
    hops: list[float] = []
    for _ in range(reps):
        ts = run_chain(n)
        if len(ts) != n:
            raise RuntimeError(f"chain returned {len(ts)} timestamps, expected {n}")
        hops.extend(hops_ms(ts))
    return chain_metrics(hops)
