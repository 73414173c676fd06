"""The `flowforge` command line as an operator uses it: a coordinator process that runs DAGs
and stops cleanly on SIGTERM, and `flowforge validate` reporting problems."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flowforge import keys
from flowforge.backends import redis_streams
from flowforge.backends.postgres import admin, catalog, store as pg_store
from flowforge.engine import submission

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def fresh_db(pg_server_url):
    name = f"ff_cli_{uuid.uuid4().hex[:8]}"
    yield admin.create_database(pg_server_url, name)
    admin.drop_database(pg_server_url, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_coordinator_process_runs_dags_and_stops_on_sigterm(stack, fresh_db, redis_url, pool_dir):
    import ray

    other_redis = re.sub(r"/\d+$", "/5", redis_url)
    env = dict(
        os.environ,
        FLOWFORGE_DATABASE__URL=fresh_db,
        FLOWFORGE_REDIS__URL=other_redis,
        FLOWFORGE_RAY__ADDRESS=ray.get_runtime_context().gcs_address,
        FLOWFORGE_AGENTS__POOL_CONFIG_DIR=str(pool_dir),
        FLOWFORGE_COORDINATOR__RECONCILE_INTERVAL="PT1S",
        FLOWFORGE_COORDINATOR__PARTITIONS="2",
    )
    import redis as redis_sync

    redis_sync.Redis.from_url(other_redis).flushdb()
    proc = subprocess.Popen([sys.executable, "-m", "flowforge", "coordinator"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "coordinator running" in line or proc.poll() is not None:
                break
        assert any("coordinator running" in ln for ln in lines), "".join(lines)

        async def submit_and_wait() -> list[dict]:
            store = pg_store.PostgresStore.connect(fresh_db)
            queue = redis_streams.RedisQueue.connect(other_redis)
            try:
                cat = catalog.Catalog(store.engine)
                await cat.ensure_tenant("default")
                sub = submission.Submitter(store, cat, queue, partitions=2)
                run_ids: list[str] = []
                while len(run_ids) < 6 or len({keys.partition_of(r, 2) for r in run_ids}) < 2:
                    run_ids.append(await sub.submit({"name": "cli", "tasks": [
                        {"name": "a", "fn": "tests.tasks:add", "args": [len(run_ids), 3]}]}))
                runs = []
                for run_id in run_ids:
                    for _ in range(600):
                        run = await cat.get_run(run_id, "default")
                        if run["status"] in ("succeeded", "failed", "cancelled"):
                            break
                        await asyncio.sleep(0.05)
                    runs.append(run)
                return runs
            finally:
                await queue.close()
                await store.close()

        runs = asyncio.run(submit_and_wait())
        assert {keys.partition_of(r["id"], 2) for r in runs} == {0, 1}  # both partitions served
        assert [r["status"] for r in runs] == ["succeeded"] * len(runs)
        assert [r["tasks"][0]["output"] for r in runs] == [i + 3 for i in range(len(runs))]
        run = runs[0]
        agent_pid = int(run["tasks"][0]["attempts"][0]["agent"].rsplit("-", 2)[1])
        assert _alive(agent_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for _ in range(100):  # the agents it started are gone too
            if not _alive(agent_pid):
                break
            time.sleep(0.1)
        assert not _alive(agent_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_validate_command_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ntasks:\n"
        "  - {name: a, fn: 'm:f', depends: [b]}\n"
        "  - {name: b, fn: 'm:f', depends: [a]}\n"
        "  - {name: c, fn: 'not a function'}\n"
    )
    out = subprocess.run([sys.executable, "-m", "flowforge", "validate", str(bad)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "tasks[2].fn" in out.stderr
    assert "a -> b -> a" in out.stderr or "b -> a -> b" in out.stderr
    assert "Traceback" not in out.stderr
    good = subprocess.run([sys.executable, "-m", "flowforge", "validate", str(ROOT / "examples/diamond.yaml")],
                          cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0 and "is valid (4 tasks)" in good.stdout
