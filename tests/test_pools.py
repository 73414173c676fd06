"""Agent pools on the embedded default, as an operator sees them: `flowforge pools` and
`flowforge pools annotate local ...` resize the running pool; the API refuses bad requests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents import pools as pooling
from tests.conftest import alive

ROOT = Path(__file__).resolve().parent.parent


def _cli(api, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=api.token, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "flowforge", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def _pool(api, name: str = "default") -> dict:
    return next(p for p in api.get("/api/v1/pools").json()["items"] if p["name"] == name)


def test_annotating_the_local_node_group_resizes_the_running_pool(api, client):
    before = _pool(api)
    assert before["managed"] and before["ready"] == before["desired"] == 2
    assert before["node_groups"] == {"local": 2}
    try:
        out = _cli(api, "pools", "annotate", "local", "default=3")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "annotated 1 node(s) of local" in out.stdout and "converged" in out.stdout
        shown = json.loads(_cli(api, "pools", "--json").stdout)
        default = next(p for p in shown if p["name"] == "default")
        assert (default["desired"], default["ready"]) == (3, 3)
        table = _cli(api, "pools").stdout
        assert "default" in table and "local=3" in table
        # The new agent takes work like the others.
        run_id = client.submit({"name": "after-resize", "tasks": [
            {"name": f"t{i}", "fn": "tests.tasks:nap", "args": [0.2]} for i in range(30)]})
        assert client.wait(run_id)["status"] == "succeeded"
    finally:
        out = _cli(api, "pools", "annotate", "local", "default=2")
        assert out.returncode == 0, out.stdout + out.stderr
    after = _pool(api)
    assert (after["desired"], after["ready"], after["draining"]) == (2, 2, 0)


def test_pool_requests_are_checked(api, stack):
    r = api.post("/api/v1/pools/annotations", json={"node_group": "nowhere", "counts": {"default": 1}})
    assert r.status_code == 404 and "known groups: local" in r.json()["detail"]
    r = api.post("/api/v1/pools/annotations", json={"node_group": "local", "counts": {"nope": 1}})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "counts.nope"
    r = api.post("/api/v1/pools/annotations", json={"node_group": "local", "counts": {"default": 5000}})
    assert r.status_code == 422 and "0..1000" in r.text
    viewer = stack.call(stack.stack.catalog.create_token("default", "viewer", role="viewer"))
    import httpx

    r = httpx.post(f"{api.base_url}/api/v1/pools/annotations", json={"node_group": "local", "counts": {"default": 1}},
                   headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    out = _cli(api, "pools", "annotate", "local", "default")
    assert out.returncode == 2 and "POOL=COUNT" in out.stderr


def test_every_pool_file_in_the_repository_is_valid(tmp_path):
    found = pooling.load_dir(ROOT / "pool-config")
    assert "default" in found
    out = subprocess.run([sys.executable, "-m", "flowforge", "pools", "validate"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "default:" in out.stdout
    (tmp_path / "etl.yaml").write_text("name: etl\nmin_agents: 5\nmax_agents: 2\nslots_per_agent: 0\nsurprise: 1\n")
    out = subprocess.run([sys.executable, "-m", "flowforge", "pools", "validate", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "etl.yaml: slots_per_agent" in out.stderr and "etl.yaml: surprise" in out.stderr


def test_the_json_schema_describes_every_field():
    schema = pooling.PoolConfig.model_json_schema()
    assert {"node_selector", "agents_per_node", "min_agents", "max_agents", "slots_per_agent", "resources",
            "allowed_functions", "prewarm", "runtime_env", "max_tasks_per_agent", "scale_down_delay_seconds",
            "drain_timeout_seconds", "target_backlog_per_slot"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("bad", ["min_agents: 5\nmax_agents: 2\n", "resources: {memory: lots}\n"])
def test_inconsistent_pools_are_refused(tmp_path, bad):
    (tmp_path / "p.yaml").write_text("name: p\n" + bad)
    with pytest.raises(pooling.PoolConfigError):
        pooling.load_dir(tmp_path)


def test_scaling_down_under_load_loses_and_duplicates_nothing(api, client, tmp_path):
    """6 agents busy with a steady stream of tasks; the pool shrinks to 1. Draining agents finish
    what runs and leave what they had not started to the others: every task runs exactly once."""
    import threading
    import time

    ledger = tmp_path / "executions"
    assert _cli(api, "pools", "annotate", "local", "default=6").returncode == 0
    run_ids: list[str] = []
    stop = threading.Event()

    def feed() -> None:  # a steady load while the pool shrinks
        while not stop.is_set() and len(run_ids) < 12:
            run_ids.append(client.submit({"name": "steady", "tasks": [
                {"name": f"t{i}", "fn": "tests.tasks:counted", "args": [str(ledger), 0.05]} for i in range(20)]}))
            time.sleep(0.15)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        time.sleep(0.6)
        out = _cli(api, "pools", "annotate", "local", "default=1")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        stop.set()
        feeder.join()
        _cli(api, "pools", "annotate", "local", "default=2")
    runs = [client.wait(r, timeout=120) for r in run_ids]
    assert [r["status"] for r in runs] == ["succeeded"] * len(runs)
    lines = ledger.read_text().splitlines()
    executions = [tuple(line.split()[:2]) for line in lines]
    expected = {(r["id"], f"t{i}") for r in runs for i in range(20)}
    assert set(executions) == expected  # none lost
    assert len(executions) == len(expected), [e for e in executions if executions.count(e) > 1][:5]  # none twice


def test_an_agent_past_max_tasks_per_agent_is_recycled(client, stack):
    restarts = stack.stack.manager.restarts
    pids = []
    for i in range(8):
        run = client.wait(client.submit({"name": "recycle", "tasks": [
            {"name": "t", "fn": "tests.tasks:where", "pool": "recycled"}]}), timeout=60)
        assert run["status"] == "succeeded", run
        pids.append(run["tasks"][0]["output"]["pid"])
        import time

        time.sleep(0.4)  # the manager sees each agent's count at its heartbeat (every 2 s)
    assert len(set(pids)) >= 2, pids  # replaced by a fresh agent along the way
    assert stack.stack.manager.restarts == restarts  # a recycle is not a crash


def test_a_hung_agent_is_killed_and_replaced(client, stack):
    """An agent frozen (SIGSTOP) stops answering its heartbeat: it is killed, a new one starts,
    and a task it held runs elsewhere."""
    import signal
    import time

    manager = stack.stack.manager
    restarts = manager.restarts
    pids = stack.call(manager.pids())
    name, pid = next((n, p) for n, p in pids.items() if n.startswith("default-"))
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while manager.restarts == restarts and time.monotonic() < deadline:
            time.sleep(0.2)
        assert manager.restarts > restarts, "the frozen agent was not replaced"
        run = client.wait(client.submit({"name": "after-hang", "tasks": [
            {"name": f"t{i}", "fn": "tests.tasks:nap", "args": [0.05]} for i in range(10)]}), timeout=60)
        assert run["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while manager.status()["default"]["ready"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        now = stack.call(manager.pids())
        assert name not in now and sum(n.startswith("default-") for n in now) == 2
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize(("stop", "pool", "agents"), [("timeout", "default", 2), ("cancel", "default", 2),
                                                      ("timeout", "recycled", 1)])
def test_an_agent_whose_call_ignores_its_stop_is_replaced_and_the_call_ends_with_it(client, stack, stop, pool,
                                                                                    agents):
    """A sync call blocked in one C call (a long time.sleep) cannot be interrupted: its attempt
    ends (timed out, or cancelled) while the call runs on and holds a slot the scheduler counts
    free. The pool manager replaces that agent: the old process ends, and the call with it. (On
    a pool of one slot too: that is not a crash either.)"""
    import time

    manager = stack.stack.manager
    restarts = manager.restarts
    pids = stack.call(manager.pids())
    task = {"name": "t", "fn": "tests.tasks:nap", "args": [600], "pool": pool}
    if stop == "timeout":
        task["timeout_seconds"] = 1
    run_id = client.submit({"name": f"ignores-{stop}", "tasks": [task]})
    if stop == "cancel":
        client.wait(run_id, until=lambda r: r["tasks"][0]["status"] == "running", timeout=30)
        client.cancel(run_id)
    run = client.wait(run_id, timeout=30)
    attempt = run["tasks"][0]["attempts"][-1]
    assert (run["status"], attempt["reason"]) == (("failed", "timeout") if stop == "timeout" else
                                                  ("cancelled", "cancelled")), run
    agent = attempt["agent"]
    pid = pids[agent]
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), f"agent {agent} still runs the call that ignored its {stop}"
    while manager.status()[pool]["ready"] < agents and time.monotonic() < deadline:
        time.sleep(0.1)
    now = stack.call(manager.pids())
    assert agent not in now and sum(n.startswith(f"{pool}-") for n in now) == agents
    assert manager.restarts == restarts  # replaced on purpose, not a crash


def test_a_coordinator_without_partition_0_dispatches_to_the_published_agents(stack, redis_url):
    """Only the coordinator owning partition 0 runs the pool manager; another one sizes its
    dispatching from what that manager publishes."""
    from flowforge.backends.pools import PublishedCapacity

    capacity = PublishedCapacity(redis_url, {"default": 8, "recycled": 1})

    async def read() -> tuple[int, int, int]:
        try:
            for _ in range(50):  # the manager publishes every half second; wait for a settled view
                await capacity.refresh()
                if capacity("default") == stack.stack.manager.status()["default"]["ready"] * 8:
                    break
                await asyncio.sleep(0.1)
            return capacity("default"), capacity("recycled"), capacity("nope")
        finally:
            await capacity.close()

    got = stack.call(read())
    assert got[2] == 0 and got[0] == stack.stack.manager.status()["default"]["ready"] * 8 > 0
    assert got[1] in (0, 1)  # the recycled pool's one agent may be between lives
