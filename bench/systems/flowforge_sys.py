"""FlowForge under the benchmark: `flowforge coordinator` in its own process (coordinator,
reconciler, 2 warm Ray agents) against this machine's Postgres and Redis (embedded servers when they are absent), with every
transition durable in Postgres.

Run on its own with ``python -m bench.systems.flowforge_sys``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import psycopg  # noqa: E402

from bench.stats import chain_scenario  # noqa: E402
from flowforge import embedded  # noqa: E402
from flowforge.backends import redis_streams  # noqa: E402
from flowforge.backends.postgres import admin as pg_admin  # noqa: E402
from flowforge.backends.postgres import catalog, store as pg_store  # noqa: E402
from flowforge.engine import submission  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AGENTS = int(os.environ.get("BENCH_FF_AGENTS", "2"))
SLOTS = int(os.environ.get("BENCH_FF_SLOTS", "16"))

_state: dict = {}


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def setup() -> None:
    """Start `flowforge coordinator` as its own process, as in production, and connect to it."""
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
    db_url = pg_admin.create_database(admin, db)
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
        f"name: default\nagents_per_node: {AGENTS}\nslots_per_agent: {SLOTS}\n"
        "allowed_functions: ['bench.*']\nprewarm: ['bench.systems.ff_tasks']\n"
    )
    # first_call: pools with no agent until the scenario asks for one, with and without prewarm.
    for name, prewarm in (("warmed", "['bench.systems.ff_cold']"), ("unwarmed", "[]")):
        (pools / f"{name}.yaml").write_text(
            f"name: {name}\nagents_per_node: 0\nmax_agents: 1\nslots_per_agent: 1\n"
            f"allowed_functions: ['bench.*']\nprewarm: {prewarm}\n"
        )
    env = dict(
        os.environ,
        FLOWFORGE_DATABASE__URL=db_url,
        FLOWFORGE_REDIS__URL=redis_url,
        FLOWFORGE_RAY__NUM_CPUS="2",
        FLOWFORGE_AGENTS__POOL_CONFIG_DIR=str(pools),
        FLOWFORGE_COORDINATOR__PREFETCH=os.environ.get("BENCH_FF_PREFETCH", "1.0"),
        FLOWFORGE_LOGGING__LEVEL=os.environ.get("BENCH_FF_LOG_LEVEL", "warning"),
    )
    _state.update(admin=admin, db=db, services=started, env=env)
    _state["proc"] = _start("coordinator", "coordinator running", echo=bool(os.environ.get("BENCH_FF_LOG_LEVEL")))
    loop = asyncio.new_event_loop()
    store = pg_store.PostgresStore.connect(db_url)
    queue = redis_streams.RedisQueue.connect(redis_url)
    cat = catalog.Catalog(store.engine)
    loop.run_until_complete(cat.ensure_tenant("default"))
    _state["token"] = loop.run_until_complete(cat.create_token("default", "bench"))
    _state.update(loop=loop, store=store, catalog=cat, queue=queue, db_url=db_url,
                  submitter=submission.Submitter(store, cat, queue, partitions=1, heavy=True),
                  poll=psycopg.connect(db_url, autocommit=True))


def _start(command: str, ready: str, *args: str, echo: bool = False,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `flowforge <command>` as its own process; return once it prints `ready`."""
    proc = subprocess.Popen([sys.executable, "-m", "flowforge", command, *args], cwd=ROOT,
                            env={**_state["env"], **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline, seen = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if ready in line:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"flowforge {command} exited:\n" + "".join(seen[-30:]))
    else:
        proc.kill()
        raise RuntimeError(f"flowforge {command} did not start in 180 s")
    threading.Thread(target=lambda: [print(ln, end="") if echo else None for ln in proc.stdout],
                     daemon=True).start()  # drain (or show) its output
    return proc


def _ensure_api() -> str:
    """Start `flowforge api` as its own process (only the submit scenario needs it)."""
    if "api_url" not in _state:
        port = _free_port()
        # The benchmark measures submissions, not the per-token rate limit (100/s by default).
        _state["api"] = _start("api", "API listening on", "--port", str(port),
                               env={"FLOWFORGE_API__RATE_LIMIT": "1000000"})
        _state["api_url"] = f"http://127.0.0.1:{port}"
    return _state["api_url"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def teardown() -> None:
    _state.pop("api_url", None)
    for key in ("api", "proc"):
        proc = _state.pop(key, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    loop = _state.pop("loop", None)
    if loop is not None:
        loop.run_until_complete(_state.pop("submitter").aclose())  # its outbox marks, still pending
        loop.run_until_complete(_state.pop("queue").close())
        loop.run_until_complete(_state.pop("store").close())
        loop.close()
    if "poll" in _state:
        _state.pop("poll").close()
    admin, db = _state.pop("admin", None), _state.pop("db", None)
    if admin and db:
        pg_admin.drop_database(admin, db)
    for svc in _state.pop("services", []):
        svc.stop()


def _run(dag: dict, params: dict | None = None, timeout: float = 600) -> tuple[dict, float]:
    loop, poll = _state["loop"], _state["poll"]
    t0 = time.perf_counter()
    run_id = loop.run_until_complete(_state["submitter"].submit(dag, params))
    while True:
        s = poll.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()[0]
        if s in ("succeeded", "failed", "cancelled"):
            break
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"run {run_id} still {s}")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    run = loop.run_until_complete(_state["catalog"].get_run(run_id, "default"))
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

    def run_chain(_n: int) -> list[float]:
        run, _ = _run(dag)
        return next(t for t in run["tasks"] if t["key"] == f"t{n - 1}")["output"]

    return chain_scenario(run_chain, n, reps)


def fanout10k(n: int = 10_000) -> dict[str, float]:
    dag = {"name": "fanout", "params": {"items": []}, "tasks": [
        {"name": "work", "fn": "bench.systems.ff_tasks:noop", "args": ["{{ item }}"],
         "map": {"over": "{{ params.items }}", "max_items": 10_000}}]}
    _run(dag, {"items": list(range(500))})  # warm-up
    _, elapsed = _run(dag, {"items": list(range(n))})
    return {"tasks_per_s": n / elapsed}


def _start_latencies_ms(run: dict) -> list[float]:
    """Dispatch -> the task's code started, per attempt of a run."""
    out = []
    for t in run["tasks"]:
        for a in t["attempts"]:
            if a["dispatched_at"] and a["started_at"]:
                out.append((a["started_at"] - a["dispatched_at"]).total_seconds() * 1000)
    return out


def warm_vs_cold(light: int = 60, heavy: int = 15) -> dict[str, float]:
    """One no-op task per run, one run at a time: how long from dispatch until the function
    starts, on a warm agent (light) and in a fresh local process (heavy)."""
    def sample(executor: str, n: int) -> list[float]:
        dag = {"name": f"start-{executor}", "tasks": [
            {"name": "t", "fn": "bench.systems.ff_tasks:noop", "executor": executor}]}
        _run(dag)  # warm-up
        found: list[float] = []
        for _ in range(n):
            found += _start_latencies_ms(_run(dag)[0])
        return found

    light_ms, heavy_ms = statistics.median(sample("light", light)), statistics.median(sample("heavy", heavy))
    return {"light_ms_p50": light_ms, "heavy_ms_p50": heavy_ms, "ratio": heavy_ms / light_ms}


def _ten_task_dag() -> dict:
    fn = "bench.systems.ff_tasks:noop"
    middle = [{"name": f"m{i}", "fn": fn, "args": [i], "depends": ["root"]} for i in range(8)]
    return {"name": "submit10", "tasks": [{"name": "root", "fn": fn, "args": [0]}, *middle,
                                          {"name": "join", "fn": fn, "args": [9], "depends": [m["name"] for m in middle]}]}


def _wait_succeeded(run_ids: list[str], timeout: float = 600) -> float:
    poll, deadline = _state["poll"], time.monotonic() + timeout
    while True:
        rows = poll.execute("SELECT status, count(*) FROM runs WHERE id = ANY(%s::uuid[]) GROUP BY status",
                            (run_ids,)).fetchall()
        counts = dict(rows)
        if counts.get("succeeded", 0) == len(run_ids):
            return time.perf_counter()
        if counts.get("failed") or counts.get("cancelled"):
            raise RuntimeError(f"benchmark runs ended badly: {counts}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs unfinished: {counts}")
        time.sleep(0.01)


def submit(sequential: int = 200, concurrent: int = 300, clients: int = 8) -> dict[str, float]:
    """Runs of a 10-task DAG over REST, against the separate `flowforge api` process."""
    import httpx

    from bench.stats import percentile

    body = {"dag": _ten_task_dag()}
    headers = {"Authorization": f"Bearer {_state['token']}"}
    url = _ensure_api()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        def post() -> tuple[str, float]:
            t0 = time.perf_counter()
            r = http.post("/api/v1/runs", json=body)
            took = time.perf_counter() - t0
            if r.status_code != 201:
                raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
            return r.json()["id"], took

        _wait_succeeded([post()[0] for _ in range(20)])  # warm-up
        lat, ids = [], []
        for _ in range(sequential):
            run_id, took = post()
            ids.append(run_id)
            lat.append(took * 1000)
        _wait_succeeded(ids)

    from concurrent.futures import ThreadPoolExecutor

    def client_loop(n: int) -> list[str]:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            out = []
            for _ in range(n):
                r = c.post("/api/v1/runs", json=body)
                if r.status_code != 201:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
                out.append(r.json()["id"])
            return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        batches = list(pool.map(client_loop, [concurrent // clients] * clients))
    done = _wait_succeeded([i for b in batches for i in b])
    n = sum(len(b) for b in batches)
    return {"submit_ms_p50": percentile(lat, 50), "submit_ms_p95": percentile(lat, 95),
            "runs_per_s": n / (done - t0)}


def _pools(http) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {p["name"]: p for p in http.get("/api/v1/pools").raise_for_status().json()["items"]}


def _annotate(http, counts: dict[str, int], timeout: float = 120) -> float:  # type: ignore[no-untyped-def]
    """What `flowforge pools annotate local ...` does; returns seconds until the pools converged."""
    t0 = time.perf_counter()
    done = http.post("/api/v1/pools/annotations", json={"node_group": "local", "counts": counts}).raise_for_status()
    at = done.json()["at"]
    while True:
        found = _pools(http)
        if all((found[p]["nodes_seen_at"] or 0) > at and found[p]["ready"] == found[p]["desired"]
               and not found[p]["starting"] and not found[p]["draining"] for p in counts):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"pools did not converge: {[found[p] for p in counts]}")
        time.sleep(0.02)


def scale_up(trials: int = 3, extra: int = 2) -> dict[str, float]:
    """Seconds from annotating the node group until `extra` new agents are ready."""
    import httpx

    with httpx.Client(base_url=_ensure_api(), headers={"Authorization": f"Bearer {_state['token']}"},
                      timeout=60) as http:
        took = []
        for _ in range(trials):
            took.append(_annotate(http, {"default": AGENTS + extra}))
            _annotate(http, {"default": AGENTS})  # drain back (not measured)
    return {"seconds_p50": statistics.median(took)}


def first_call(trials: int = 3, later: int = 5) -> dict[str, float]:
    """Dispatch -> start of the first call on a fresh agent of a pool that prewarms the task's
    (slow to import) module, against later calls; and the first call without prewarm."""
    import httpx

    def one(pool: str) -> float:
        dag = {"name": f"first-{pool}", "tasks": [{"name": "t", "fn": "bench.systems.ff_cold:touch", "pool": pool}]}
        return _start_latencies_ms(_run(dag)[0])[0]

    firsts: dict[str, list[float]] = {"warmed": [], "unwarmed": []}
    steady: list[float] = []
    with httpx.Client(base_url=_ensure_api(), headers={"Authorization": f"Bearer {_state['token']}"},
                      timeout=60) as http:
        for _ in range(trials):
            for pool in firsts:
                _annotate(http, {pool: 1})
                firsts[pool].append(one(pool))
                if pool == "warmed":
                    steady += [one(pool) for _ in range(later)]
                _annotate(http, {pool: 0})
    return {"first_ms": statistics.median(firsts["warmed"]), "steady_ms": statistics.median(steady),
            "first_ms_without_prewarm": statistics.median(firsts["unwarmed"])}


def _restart_coordinator(**env: str) -> None:
    proc = _state.pop("proc")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    _state["proc"] = _start("coordinator", "coordinator running", env=env)


def _submit(dag: dict, params: dict, tenant: str) -> str:
    loop = _state["loop"]
    return loop.run_until_complete(_state["submitter"].submit(dag, params, tenant=tenant))


def _finished(run_id: str, timeout: float = 600, every_s: float = 0.005) -> float:
    """Wait for the run to succeed, polling every `every_s`; return the time.perf_counter() it
    was seen done."""
    poll, deadline = _state["poll"], time.perf_counter() + timeout
    while True:
        status = poll.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()[0]
        if status == "succeeded":
            return time.perf_counter()
        if status in ("failed", "cancelled") or time.perf_counter() > deadline:
            raise RuntimeError(f"run {run_id} is {status}")
        time.sleep(every_s)


def _flooding(run_id: str, timeout: float = 120) -> None:
    """Return once the run's tasks are queued and hold every slot of the pool (its attempts
    are being dispatched), so what comes next meets the flood, not the flood's submission."""
    poll, deadline = _state["poll"], time.perf_counter() + timeout
    while poll.execute("SELECT count(*) FROM attempts WHERE run_id = %s", (run_id,)).fetchone()[0] < AGENTS * SLOTS:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"run {run_id} did not start flooding in {timeout} s")
        time.sleep(0.005)


# A process that keeps 80% of a core busy (work 8 ms, sleep 2 ms) until it is killed, its
# parent goes away, or 10 minutes pass: a benchmark killed mid-run leaves no burner behind.
_BURN = """
import os, time
parent, end = os.getppid(), time.monotonic() + 600
while os.getppid() == parent and time.monotonic() < end:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.008:
        pass
    time.sleep(0.002)
"""


def fairness(flood: int = 5000, small: int = 50, reps: int = 9) -> dict[str, float]:
    """Tenant A floods the pool with `flood` no-op tasks, then tenant B submits `small`:
    `b_slowdown` = B's completion time under the flood / B's time alone (medians of `reps`),
    with fair share on (equal weights). The same with B submitted right after A, while A's
    instances are still being made (`b_slowdown_submit`); with B weighted 1000 times A
    (`b_slowdown_priority`: every slot B can use goes to B, the floor for any order of
    dispatch); with no flood but two processes each keeping 80% of a core busy, about the CPU
    the flood takes (`b_slowdown_cpu`: what sharing the machine alone costs B); and with fair
    share off (`b_slowdown_fifo`, first come first served)."""
    loop = _state["loop"]
    catalog = _state["catalog"]
    for tenant in ("tenant-a", "tenant-b"):
        loop.run_until_complete(catalog.ensure_tenant(tenant))
    dag = {"name": "fan", "params": {"items": []}, "tasks": [
        {"name": "work", "fn": "bench.systems.ff_tasks:noop", "args": ["{{ item }}"],
         "map": {"over": "{{ params.items }}", "max_items": 10_000}}]}

    def b_time() -> float:
        t0 = time.perf_counter()
        # Polled every 0.5 ms: B takes some 20 ms alone, so a coarser poll would blur it.
        return _finished(_submit(dag, {"items": list(range(small))}, "tenant-b"), every_s=0.0005) - t0

    @contextlib.contextmanager
    def a_floods() -> Iterator[None]:
        a = _submit(dag, {"items": list(range(flood))}, "tenant-a")
        _flooding(a)
        yield
        _finished(a)

    @contextlib.contextmanager
    def a_submits() -> Iterator[None]:
        a = _submit(dag, {"items": list(range(flood))}, "tenant-a")
        yield  # B meets A's fan-out being made, not only its attempts
        _finished(a)

    @contextlib.contextmanager
    def cpu_burns() -> Iterator[None]:
        burners = [subprocess.Popen([sys.executable, "-c", _BURN]) for _ in range(2)]
        try:
            time.sleep(0.3)
            yield
        finally:
            for p in burners:
                p.kill()
                p.wait()

    def slowdown(load: Callable[[], contextlib.AbstractContextManager[None]] = a_floods) -> float:
        b_time()  # warm-up
        alone = statistics.median(b_time() for _ in range(reps))
        loaded = []
        for _ in range(reps):
            with load():
                loaded.append(b_time())
        return statistics.median(loaded) / alone

    def weigh_b(weight: float) -> None:
        loop.run_until_complete(catalog.set_tenant_limits("tenant-b", None, weight))
        time.sleep(2.5)  # coordinators follow limits and weights within a second

    fair = slowdown()
    submit = slowdown(a_submits)
    cpu = slowdown(cpu_burns)
    weigh_b(1000.0)
    try:
        priority = slowdown()
    finally:
        weigh_b(1.0)
    _restart_coordinator(FLOWFORGE_COORDINATOR__FAIR_SHARE="false")
    try:
        fifo = slowdown()
    finally:
        _restart_coordinator()
    return {"b_slowdown": fair, "b_slowdown_submit": submit, "b_slowdown_priority": priority,
            "b_slowdown_cpu": cpu, "b_slowdown_fifo": fifo}


def log_ingest(total: int = 200_000, batch: int = 2_000, reps: int = 3) -> dict[str, float]:
    """Lines per second persisted by the log stores, in batches as the log writer sends them:
    Postgres (this benchmark's database) and chDB (in this process); medians of `reps`."""
    from bench.systems import ff_log_ingest

    return ff_log_ingest.measure(_state["db_url"], total=total, batch=batch, reps=reps)


def board(reps: int = 500) -> dict[str, float]:
    """What the coordinators' board costs: an exchange and a claim with 500 tenants in flight on
    each of 4 coordinators, against a bare Redis round trip; medians of `reps`."""
    from bench.systems import ff_board

    return ff_board.measure(_state["env"]["FLOWFORGE_REDIS__URL"], reps=reps)


if __name__ == "__main__":
    setup()
    try:
        print("chain100", chain100())
        print("fanout10k", fanout10k())
    finally:
        teardown()
