"""The `board` scenario: what the coordinators' board costs a coordinator (flowforge/engine/
board.py). One exchange (store what changed, read what a scheduler with 10 tenants waiting
needs) and one claim (two quota scopes and a pool), with 500 tenants in flight on each of 4
coordinators, against a bare Redis round trip (PING) measured in the same run.

Run on its own with ``python -m bench.systems.ff_board REDIS_URL`` (it uses database 13 of
that server, which it empties)."""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time

from flowforge.backends import redis_streams
from flowforge.engine import board

TENANTS = 500
PEERS = 3


def _view(tenants: int) -> board.View:
    return board.View(
        {"default": 64, "heavy": 4},
        {("default", f"t{i}"): 2 for i in range(tenants)},
        {(f"t{i}", p): (2, 2000, 2**31, 0) for i in range(tenants) for p in (None, "default")},
        {"default": 100},
    )


async def _measure(url: str, reps: int) -> dict[str, float]:
    q = redis_streams.RedisQueue.connect(url)
    try:
        await q.client.flushdb()
        mine = board.items(_view(TENANTS))
        for p in range(PEERS):
            await q.exchange_board(f"peer{p}", mine, [], [], ttl_s=60, afresh=True)
        await q.exchange_board("me", mine, [], [], ttl_s=60, afresh=True)
        wanted = sorted({board.busy_item("default"), board.queued_item("default"), board.busy_item("heavy"),
                         board.queued_item("heavy")}
                        | {board.holding_item("default", f"t{i}") for i in range(10)}
                        | {board.usage_item((f"t{i}", p)) for i in range(10) for p in (None, "default")})
        claim = board.Claim({("t0", None): (10_000, -1, -1, -1), ("t0", "default"): (10_000, -1, -1, -1)},
                            {"default": 10**6})
        args = claim.args(_view(TENANTS))
        took: dict[str, list[float]] = {"rtt": [], "exchange": [], "claim": []}
        for k in range(reps):
            t0 = time.perf_counter()
            await q.client.ping()
            t1 = time.perf_counter()
            await q.exchange_board("me", {board.busy_item("default"): str(k)}, [], wanted, ttl_s=60)
            t2 = time.perf_counter()
            await q.claim_board("me", args, ttl_s=60)
            t3 = time.perf_counter()
            took["rtt"].append(t1 - t0)
            took["exchange"].append(t2 - t1)
            took["claim"].append(t3 - t2)
        await q.client.flushdb()
    finally:
        await q.close()
    ms = {k: statistics.median(v) * 1000 for k, v in took.items()}
    return {"rtt_ms_p50": ms["rtt"], "exchange_ms_p50": ms["exchange"], "claim_ms_p50": ms["claim"],
            "claim_rtts": ms["claim"] / ms["rtt"]}


def measure(redis_url: str, reps: int = 500) -> dict[str, float]:
    return asyncio.run(_measure(re.sub(r"/\d+$", "", redis_url) + "/13", reps))


if __name__ == "__main__":
    print(measure(sys.argv[1]))
