"""FlowForge under the benchmark: the real stack (coordinator, reconciler, 2 warm Ray agents)
against this machine's Postgres and Redis (embedded servers when they are absent), with every
transition durable in Postgres.

Run on its own with ``python -m bench.systems.flowforge_sys``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import psycopg  # noqa: E402

from bench.stats import chain_metrics, hops_ms  # noqa: E402
from flowforge import embedded, settings  # noqa: E402
from flowforge.runtime import BackgroundStack, Services  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AGENTS = int(os.environ.get("BENCH_FF_AGENTS", "2"))
SLOTS = int(os.environ.get("BENCH_FF_SLOTS", "16"))

_state: dict = {}


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def setup() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ff-bench-"))
    started = []
    if os.environ.get("BENCH_DATABASE_URL"):
        admin = os.environ["BENCH_DATABASE_URL"]
    elif _reachable(5432):
        admin = "postgresql://127.0.0.1:5432/test"
    else:
        svc = embedded.start_postgres(tmp / "pg", keep=False)
        started.append(svc)
        admin = svc.url.replace("postgresql+psycopg://", "postgresql://")
    db = f"ff_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    base, _, query = admin.partition("?")
    db_url = base.rsplit("/", 1)[0] + f"/{db}" + (f"?{query}" if query else "")
    if _reachable(6379):
        redis_url = "redis://127.0.0.1:6379/12"
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    else:
        svc = embedded.start_redis(tmp / "redis", persist=False)
        started.append(svc)
        redis_url = svc.url
    pools = tmp / "pool-config"
    pools.mkdir()
    (pools / "default.yaml").write_text(
        f"name: default\nagents: {AGENTS}\nslots_per_agent: {SLOTS}\n"
        "allowed_functions: ['bench.*']\nprewarm: ['bench.systems.ff_tasks']\n"
    )
    cfg = settings.Settings(
        data_dir=tmp / "data",
        database={"url": db_url},
        redis={"url": redis_url},
        ray={"num_cpus": 2},
        agents={"pool_config_dir": pools},
        coordinator={"prefetch": float(os.environ.get("BENCH_FF_PREFETCH", "1.0"))},
    )
    os.chdir(ROOT)
    bg = BackgroundStack(cfg, Services(db_url, redis_url, started)).start()
    bg.call(bg.stack.store.ensure_tenant("default"))
    _state.update(bg=bg, admin=admin, db=db, services=started)


def teardown() -> None:
    bg = _state.pop("bg", None)
    if bg is not None:
        bg.stop()
        import ray

        ray.shutdown()
    admin, db = _state.pop("admin", None), _state.pop("db", None)
    if admin and db:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    for svc in _state.pop("services", []):
        svc.stop()


def _run(dag: dict, params: dict | None = None, timeout: float = 600) -> tuple[dict, float]:
    bg = _state["bg"]
    t0 = time.perf_counter()
    run_id = bg.call(bg.stack.submitter.submit(dag, params))
    engine = bg.stack.store.engine

    async def status() -> str:
        async with engine.connect() as conn:
            from sqlalchemy import text

            return (await conn.execute(text("SELECT status FROM runs WHERE id = :id"), {"id": run_id})).scalar_one()

    while True:
        s = bg.call(status())
        if s in ("succeeded", "failed", "cancelled"):
            break
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"run {run_id} still {s}")
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    run = bg.call(bg.stack.store.get_run(run_id, "default"))
    if run["status"] != "succeeded":
        raise RuntimeError(f"benchmark run ended {run['status']}: {run['error']}")
    return run, elapsed


def _chain_dag(n: int) -> dict:
    tasks = [{"name": "t0", "fn": "bench.systems.ff_tasks:noop_chain", "args": [[]]}]
    for i in range(1, n):
        tasks.append({"name": f"t{i}", "fn": "bench.systems.ff_tasks:noop_chain",
                      "args": [f"{{{{ tasks.t{i - 1}.output }}}}"], "depends": [f"t{i - 1}"]})
    return {"name": f"chain{n}", "tasks": tasks}


def chain100(n: int = 100, reps: int = 3) -> dict[str, float]:
    dag = _chain_dag(n)
    _run(dag)  # warm-up
    hops: list[float] = []
    for _ in range(reps):
        run, _ = _run(dag)
        last = next(t for t in run["tasks"] if t["key"] == f"t{n - 1}")
        hops.extend(hops_ms(last["output"]))
    return chain_metrics(hops)


def fanout10k(n: int = 10_000) -> dict[str, float]:
    dag = {"name": "fanout", "params": {"items": []}, "tasks": [
        {"name": "work", "fn": "bench.systems.ff_tasks:noop", "args": ["{{ item }}"],
         "map": {"over": "{{ params.items }}", "max_items": 10_000}}]}
    _run(dag, {"items": list(range(500))})  # warm-up
    coord = _state["bg"].stack.coordinator
    before = dict(coord.timing), coord.cycles
    _, elapsed = _run(dag, {"items": list(range(n))})
    if os.environ.get("BENCH_FF_VERBOSE"):
        spent = {k: round(coord.timing[k] - before[0][k], 3) for k in coord.timing}
        print(f"  flowforge coordinator: {coord.cycles - before[1]} cycles, {spent}", flush=True)
    return {"tasks_per_s": n / elapsed}


if __name__ == "__main__":
    setup()
    try:
        print("chain100", chain100())
        print("fanout10k", fanout10k())
    finally:
        teardown()
