"""`flowforge demo`: start the embedded stack, run every example DAG, show live progress and a
final table, check each run ended as its example expects, and shut everything down."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from flowforge import client as client_mod, runtime, settings as settings_mod
from flowforge.cli import render

TERMINAL = {"succeeded", "failed", "cancelled"}
# What each example must end as: the run's status, and any task statuses worth checking.
EXPECT: dict[str, dict[str, str]] = {
    "diamond": {"$run": "succeeded", "report": "succeeded"},
    "quality-gate": {"$run": "succeeded", "publish": "succeeded", "quarantine": "skipped"},
    "flaky-api": {"$run": "succeeded", "call": "succeeded"},
    "fanout": {"$run": "succeeded", "summarize": "succeeded"},
    "sdk-pipeline": {"$run": "succeeded", "load": "succeeded"},
    "mixed": {"$run": "succeeded", "train": "succeeded", "package": "succeeded", "notify": "succeeded"},
}


def examples(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML example, and every Python SDK example, as JSON-ready DAG specs."""
    from flowforge import dagfile

    found = [(p.name, dagfile.load(p)) for p in sorted(root.glob("*.yaml"))]
    for p in sorted(root.glob("*.py")):
        if p.name not in ("__init__.py", "tasks.py"):
            found.append((p.name, dagfile.load(p)))
    return found


def run_demo(root: Path, console: Console | None = None, *, port: int = 0) -> bool:
    console = console or Console(width=None if Console().is_terminal else 110)
    cfg = settings_mod.load()
    if not cfg.database.url or not cfg.redis.url:
        # A fresh embedded stack each time, so the demo always starts from nothing.
        data = cfg.data_dir / "demo"
        shutil.rmtree(data, ignore_errors=True)
        cfg = cfg.model_copy(update={"data_dir": data})
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": port, "host": "127.0.0.1"}),
                                 "logging": cfg.logging.model_copy(update={"level": "warning"})})
    dags = examples(root)
    console.print("[bold]FlowForge demo[/]: starting Postgres, Redis, Ray, the agent pools, the coordinator and the API…")
    t0 = time.monotonic()
    services = runtime.resolve_services(cfg)
    bg = runtime.BackgroundStack(cfg, services, with_api=True)
    try:
        bg.start()
        assert bg.stack.api is not None and bg.stack.catalog is not None
        token = bg.call(bg.stack.catalog.create_token("default", "demo"))
        api = client_mod.Client(bg.stack.api.url, token)
        console.print(f"stack ready in {time.monotonic() - t0:.1f}s; API at {api.url}; "
                      f"submitting {len(dags)} example DAGs over REST")
        runs = {}
        for name, dag in dags:
            created = api.submit(dag)
            runs[name] = created["id"]
            console.print(f"  POST /api/v1/runs  {name:<18} -> 201 run {created['id']}")
        finished = _follow(api, runs, console)
        ok = _report(finished, console)
        return _show_logs(api, runs, console) and ok
    finally:
        console.print("shutting down…")
        bg.stop()
        services.stop()
        console.print("stopped; no process left running")


def _follow(api: client_mod.Client, runs: dict[str, str], console: Console) -> dict[str, dict]:
    state: dict[str, dict] = {}
    deadline = time.monotonic() + 300
    with Live(console=console, refresh_per_second=8) as live:
        while True:
            for name, run_id in runs.items():
                if state.get(name, {}).get("status") not in TERMINAL:
                    state[name] = api.run(run_id)
            live.update(_progress(state))
            if all(r["status"] in TERMINAL for r in state.values()) or time.monotonic() > deadline:
                return state
            time.sleep(0.15)


def _show_logs(api: client_mod.Client, runs: dict[str, str], console: Console) -> bool:
    """Replay one run's output the way `flowforge logs -f` follows it: over SSE, to its end."""
    name = next((n for n in runs if n.startswith("mixed")), next(iter(runs)))
    console.print(f"GET /api/v1/runs/{runs[name]}/logs?follow=true  ({name}, text/event-stream):")
    ended = None
    for line in api.follow_logs(runs[name]):
        if "end" in line:
            ended = line["end"]
            break
        console.print(f"  {line['task']}#{line['attempt']} {line['stream']}: {line['line']}", markup=False,
                      highlight=False)
    console.print(f"  event: end ({ended})")
    return ended is not None


def _progress(state: dict[str, dict]) -> Table:
    table = Table(title="runs", expand=False)
    for col in ("example", "DAG", "status", "tasks done", "running"):
        table.add_column(col)
    for name, run in state.items():
        tasks = run["tasks"]
        done = sum(1 for t in tasks if t["status"] in ("succeeded", "failed", "skipped", "upstream_failed", "cancelled"))
        running = sum(1 for t in tasks if t["status"] in ("queued", "running", "retrying"))
        table.add_row(name, run["dag_name"], render.status(run["status"]), f"{done}/{len(tasks)}", str(running))
    return table


def _report(state: dict[str, dict], console: Console) -> bool:
    ok = True
    problems = []
    for run in state.values():
        console.print(render.tasks_table(run, title=f"{run['dag_name']}: {run['status']}"))
        expect = EXPECT.get(run["dag_name"], {"$run": "succeeded"})
        for key, want in expect.items():
            got = run["status"] if key == "$run" else next((t["status"] for t in run["tasks"] if t["key"] == key), None)
            if got != want:
                ok = False
                problems.append(f"{run['dag_name']}: {'run' if key == '$run' else key} is {got}, expected {want}")
    for p in problems:
        console.print(f"[red]✗ {p}[/]")
    if ok:
        console.print(f"[green]✓ all {len(state)} example runs ended as expected[/]")
    return ok
