"""Task functions for the FlowForge benchmark (same semantics as the peers')."""

from __future__ import annotations

import time


def noop_chain(ts: list[float]) -> list[float]:
    return [*ts, time.time()]


def noop(_item=None) -> None:
    return None
