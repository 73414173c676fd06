"""The `log_ingest` scenario: lines per second a LogStore persists, written as the batching
writer does (one batch after another, `batch` lines each, lines of many runs and tasks).

Run on its own with ``python -m bench.systems.ff_log_ingest POSTGRES_URL``."""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from flowforge.logs import clickhouse, model, postgres


def _batches(total: int, batch: int, runs: int = 50, tasks: int = 8) -> list[list[model.LogLine]]:
    """`total` lines of `runs` runs, interleaved as concurrent runs' output arrives, ~90 bytes each."""
    rng = random.Random(total)
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    pos = dict.fromkeys(run_ids, 0)
    now = time.time()
    lines = []
    for i in range(total):
        run = run_ids[rng.randrange(runs)]
        pos[run] += 1
        task = rng.randrange(tasks)
        lines.append(model.LogLine(
            "bench", run, pos[run], f"task_{task}", 1, now + i * 1e-5, "stdout" if i % 5 else "stderr",
            f"2024-05-01 12:00:00 INFO worker[{task}] processed record {i} of shard {i % 97}: ok ({rng.random():.6f})",
        ))
    return [lines[i:i + batch] for i in range(0, total, batch)]


async def _rate(store: model.LogStore, total: int, batch: int) -> float:
    batches = _batches(total, batch)
    t0 = time.perf_counter()
    for b in batches:
        await store.write(b)
    return total / (time.perf_counter() - t0)


async def _median_rate(store: model.LogStore, total: int, batch: int, reps: int) -> float:
    await store.start()
    try:
        await _rate(store, batch * 5, batch)  # warm-up: connections, prepared statements, first parts
        return statistics.median([await _rate(store, total, batch) for _ in range(reps)])
    finally:
        await store.close()


def measure(database_url: str, *, total: int = 200_000, batch: int = 2_000, reps: int = 3) -> dict[str, float]:
    """Medians over `reps` of `total` lines in batches of `batch`: Postgres, then chDB."""
    pg = asyncio.run(_median_rate(postgres.PostgresLogStore.connect(database_url), total, batch, reps))
    where = Path(tempfile.mkdtemp(prefix="ff-bench-chdb-"))
    try:
        ch = asyncio.run(_median_rate(clickhouse.ClickHouseLogStore.embedded(where, retention_days=14),
                                      total, batch, reps))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return {"postgres_lines_per_s": pg, "chdb_lines_per_s": ch}


if __name__ == "__main__":
    print(measure(sys.argv[1]))
