"""The `flowforge` command line as an operator uses it: a coordinator process that runs DAGs
and stops cleanly on SIGTERM, and `flowforge validate` reporting problems."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowforge import keys
from flowforge.backends import redis_streams
from flowforge.backends.postgres import admin, catalog, store as pg_store
from flowforge.engine import submission
from tests.conftest import alive

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def fresh_db(pg_server_url):
    name = f"ff_cli_{uuid.uuid4().hex[:8]}"
    yield admin.create_database(pg_server_url, name)
    admin.drop_database(pg_server_url, name)


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
        # Read the rest of what it prints as it comes, so a full pipe cannot hold it up, and a
        # stop that hangs shows where.
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.extend(proc.stdout), daemon=True)
        reader.start()

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
                run_ids.append(await sub.submit({"name": "cli-where", "tasks": [{"name": "a", "fn": "tests.tasks:where"}]}))
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

        *runs, where = asyncio.run(submit_and_wait())
        assert {keys.partition_of(r["id"], 2) for r in runs} == {0, 1}  # both partitions served
        assert [r["status"] for r in runs] == ["succeeded"] * len(runs)
        assert [r["tasks"][0]["output"] for r in runs] == [i + 3 for i in range(len(runs))]
        agent_pid = where["tasks"][0]["output"]["pid"]  # a warm agent of the coordinator's pool
        assert alive(agent_pid)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            pytest.fail("the coordinator did not stop within 60 s of SIGTERM:\n" + "".join(lines + rest)[-20_000:])
        reader.join(10)
        output = "".join(lines + rest)
        assert code == 0, output
        # Ray's own SIGTERM handler (which aborts the process 3 s later) was kept out
        assert "SIGTERM received" not in output, output
        for _ in range(100):  # the agents it started are gone too
            if not alive(agent_pid):
                break
            time.sleep(0.1)
        assert not alive(agent_pid)
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


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowforge", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=120)


def test_awkward_files_and_params_get_messages_not_tracebacks(tmp_path, api):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\u00e9\ntasks: []\n".encode("latin-1"))
    nan = tmp_path / "nan.yaml"
    nan.write_text("name: nan\nparams: {x: .nan}\ntasks: [{name: a, fn: 'm:f'}]\n")
    broken = tmp_path / "broken_build.py"
    broken.write_text("def build():\n    raise RuntimeError('no DAG today')\n")
    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=api.token)
    for args, code, says in [
        (("validate", str(latin)), 2, "not UTF-8"),
        (("validate", str(nan)), 2, "NaN or Infinity"),
        (("submit", str(latin)), 2, "not UTF-8"),
        # NaN is not JSON: it is passed as the text "NaN" (and the API decides), never a crash.
        (("submit", "examples/diamond.yaml", "-p", "factor=NaN"), 0, ""),
        (("submit", "examples/diamond.yaml", "-p", "nope=-Infinity"), 2, "params.nope"),
        (("run", "../dags"), 2, "404"),  # one path segment: it cannot reach /api/v1/dags
        (("run", "not-a-run"), 2, "not found"),
    ]:
        out = _cli(*args, env=env)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert out.returncode == code and says in out.stderr, (args, out.returncode, out.stdout, out.stderr)
        if code == 0:
            run_id = out.stdout.split()[1]
            assert api.get(f"/api/v1/runs/{run_id}").json()["params"]["factor"] == "NaN"
    out = subprocess.run([sys.executable, "-m", "flowforge", "validate", str(broken.relative_to(tmp_path))],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2 and "build() failed" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_saved_token_goes_only_to_the_server_that_saved_it(tmp_path, api):
    from flowforge import client

    creds = tmp_path / "credentials.json"
    client.write_credentials(creds, api.base_url, api.token, "default")
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWFORGE_URL", "FLOWFORGE_TOKEN")}
    env["FLOWFORGE_CREDENTIALS"] = str(creds)
    assert _cli("runs", env=env).returncode == 0
    assert _cli("runs", "--url", api.base_url + "/", env=env).returncode == 0  # the same server
    elsewhere = _cli("runs", "--url", "http://127.0.0.1:9/", env=env)
    assert elsewhere.returncode != 0 and "no token for http://127.0.0.1:9/" in elsewhere.stderr
    assert api.token not in elsewhere.stderr + elsewhere.stdout
    explicit = _cli("runs", "--url", "http://127.0.0.1:9/", "--token", "ff_x", env=env)
    assert "cannot reach FlowForge" in explicit.stderr


@pytest.mark.parametrize("command", ["api", "coordinator"])
def test_shared_processes_refuse_to_start_without_service_urls(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWFORGE_")}
    env["FLOWFORGE_DATA_DIR"] = str(tmp_path)
    out = _cli(command, env=env)
    assert out.returncode == 1, out.stderr
    assert "FLOWFORGE_DATABASE__URL" in out.stderr and "FLOWFORGE_REDIS__URL" in out.stderr
    assert "flowforge up" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())  # nothing embedded was started


def test_submit_wait_shows_where_each_task_ran_and_why(api):
    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=api.token, COLUMNS="200")
    out = _cli("submit", "examples/mixed.yaml", "--wait", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout
    assert "routed because" in table and "requests 2 CPU" in table and "runs the container image" in table
    run_id = table.split()[1]
    shown = _cli("run", run_id, env=env)
    assert shown.returncode == 0 and "heavy" in shown.stdout and "light" in shown.stdout


def test_a_mapped_tasks_row_counts_instances_made_of_all_it_will_have():
    from rich.console import Console

    from flowforge.cli import render

    def task(key: str, status: str, **extra: object) -> dict:
        return {"key": key, "name": "m", "executor": "light", "pool": "default", "status": status,
                "attempts": [], **extra}

    run = {"tasks": [task("m", "running", instances=5), task("m[0]", "succeeded", map_index=0),
                     task("m[1]", "queued", map_index=1)]}
    def shown() -> str:
        console = Console(width=200, record=True)
        console.print(render.tasks_table(run))
        return console.export_text()

    assert "2 of 5 instances, 1 done" in shown()  # a large fan-out, still being made
    run["tasks"][0]["instances"] = 2
    assert "| 2 instances, 1 done" in shown().replace("│", "|")
