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

from flowforge import runtime, settings as settings_mod
from flowforge.domain import validation

TERMINAL = {"succeeded", "failed", "cancelled"}
# What each example must end as: the run's status, and any task statuses worth checking.
EXPECT: dict[str, dict[str, str]] = {
    "diamond": {"$run": "succeeded", "report": "succeeded"},
    "quality-gate": {"$run": "succeeded", "publish": "succeeded", "quarantine": "skipped"},
    "flaky-api": {"$run": "succeeded", "call": "succeeded"},
    "fanout": {"$run": "succeeded", "summarize": "succeeded"},
    "sdk-pipeline": {"$run": "succeeded", "load": "succeeded"},
}


def examples(root: Path) -> list[tuple[str, Any]]:
    from examples import sdk_pipeline

    found = [(p.name, validation.load_text(p.read_text())) for p in sorted(root.glob("*.yaml"))]
    found.append(("sdk_pipeline.py", sdk_pipeline.build().to_dict()))
    return found


def run_demo(root: Path, console: Console | None = None) -> bool:
    console = console or Console(width=None if Console().is_terminal else 110)
    cfg = settings_mod.load()
    if not cfg.database.url or not cfg.redis.url:
        # A fresh embedded stack each time, so the demo always starts from nothing.
        data = cfg.data_dir / "demo"
        shutil.rmtree(data, ignore_errors=True)
        cfg = cfg.model_copy(update={"data_dir": data})
    console.print("[bold]FlowForge demo[/]: starting Postgres, Redis, Ray and the agent pools…")
    t0 = time.monotonic()
    services = runtime.resolve_services(cfg)
    bg = runtime.BackgroundStack(cfg, services)
    try:
        bg.start()
        console.print(f"stack ready in {time.monotonic() - t0:.1f}s; submitting {len(examples(root))} example DAGs")
        bg.call(bg.stack.catalog.ensure_tenant("default"))
        runs = {}
        for name, dag in examples(root):
            runs[name] = bg.call(bg.stack.submitter.submit(dag))
        finished = _follow(bg, runs, console)
        return _report(finished, console)
    finally:
        console.print("shutting down…")
        bg.stop()
        services.stop()


def _follow(bg: runtime.BackgroundStack, runs: dict[str, str], console: Console) -> dict[str, dict]:
    state: dict[str, dict] = {}
    deadline = time.monotonic() + 300
    with Live(console=console, refresh_per_second=8) as live:
        while True:
            for name, run_id in runs.items():
                if state.get(name, {}).get("status") not in TERMINAL:
                    state[name] = bg.call(bg.stack.catalog.get_run(run_id, "default"))
            live.update(_progress(state))
            if all(r["status"] in TERMINAL for r in state.values()) or time.monotonic() > deadline:
                return state
            time.sleep(0.15)


def _progress(state: dict[str, dict]) -> Table:
    table = Table(title="runs", expand=False)
    for col in ("example", "DAG", "status", "tasks done", "running"):
        table.add_column(col)
    for name, run in state.items():
        tasks = run["tasks"]
        done = sum(1 for t in tasks if t["status"] in ("succeeded", "failed", "skipped", "upstream_failed", "cancelled"))
        running = sum(1 for t in tasks if t["status"] in ("queued", "running", "retrying"))
        table.add_row(name, run["dag_name"], _colour(run["status"]), f"{done}/{len(tasks)}", str(running))
    return table


def _report(state: dict[str, dict], console: Console) -> bool:
    table = Table(title="tasks")
    for col in ("DAG", "task", "executor", "pool", "attempts", "duration", "status"):
        table.add_column(col)
    ok = True
    problems = []
    for run in state.values():
        for t in run["tasks"]:
            if t["map_index"] is not None:
                continue
            instances = [i for i in run["tasks"] if i["name"] == t["name"] and i["map_index"] is not None]
            attempts = str(len(t["attempts"])) if not instances else f"{len(instances)} instances"
            dur = ""
            if t["started_at"] and t["finished_at"]:
                dur = f"{(t['finished_at'] - t['started_at']).total_seconds() * 1000:.0f} ms"
            table.add_row(run["dag_name"], t["key"], t["executor"], t["pool"], attempts, dur, _colour(t["status"]))
        expect = EXPECT.get(run["dag_name"], {"$run": "succeeded"})
        for key, want in expect.items():
            got = run["status"] if key == "$run" else next((t["status"] for t in run["tasks"] if t["key"] == key), None)
            if got != want:
                ok = False
                problems.append(f"{run['dag_name']}: {'run' if key == '$run' else key} is {got}, expected {want}")
    console.print(table)
    for p in problems:
        console.print(f"[red]✗ {p}[/]")
    if ok:
        console.print(f"[green]✓ all {len(state)} example runs ended as expected[/]")
    return ok


def _colour(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "upstream_failed": "red", "cancelled": "yellow",
              "skipped": "dim", "running": "cyan", "queued": "blue", "retrying": "magenta"}.get(status)
    return f"[{colour}]{status}[/]" if colour else status
