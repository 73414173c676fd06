"""Rich tables of runs and tasks, and the live view of a run until it ends."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

TERMINAL = {"succeeded", "failed", "cancelled"}
_COLOURS = {"succeeded": "green", "failed": "red", "upstream_failed": "red", "cancelled": "yellow",
            "skipped": "dim", "running": "cyan", "queued": "blue", "retrying": "magenta", "pending": "white"}


def console() -> Console:
    """The terminal's console; piped output gets wide lines instead of squeezed tables."""
    c = Console()
    return c if c.is_terminal else Console(width=200)


def status(value: str) -> Text:
    return Text(value, style=_COLOURS.get(value, ""))


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def duration(start: Any, end: Any) -> str:
    s, e = _when(start), _when(end)
    if s is None or e is None:
        return ""
    ms = (e - s).total_seconds() * 1000
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def tasks_table(run: dict[str, Any], *, title: str | None = None, max_rows: int = 60) -> Table:
    """One row per task; a mapped task's instances are summed into its row."""
    table = Table(title=title, title_justify="left")
    tasks = run["tasks"]
    # Why queued tasks wait, when a quota holds them: a column only while some task does.
    waiting = any(t.get("waiting_for") for t in tasks)
    for col in ("task", "executor", "pool", "attempts", "duration", "status", "routed because",
                *(("waiting for",) if waiting else ())):
        table.add_column(col, style="dim" if col == "routed because" else ("yellow" if col == "waiting for" else None))
    rows = 0
    for t in tasks:
        if t.get("map_index") is not None:
            continue
        instances = [i for i in tasks if i["name"] == t["name"] and i.get("map_index") is not None]
        total = t.get("instances")
        if instances or total:
            done = sum(1 for i in instances if i["status"] in ("succeeded", "skipped"))
            made = f"{len(instances)} of {total}" if total and total > len(instances) else str(len(instances))
            attempts = f"{made} instances, {done} done"  # a large fan-out is made a chunk at a time
        else:
            attempts = str(len(t.get("attempts") or ()))
        why = t.get("waiting_for") or next((i["waiting_for"] for i in instances if i.get("waiting_for")), "")
        table.add_row(t["key"], t["executor"], t["pool"], attempts,
                      duration(t.get("started_at"), t.get("finished_at")), status(t["status"]),
                      t.get("route_reason") or "", *((why,) if waiting else ()))
        rows += 1
        if rows >= max_rows:
            table.add_row("…", *([""] * (7 if waiting else 6)))
            break
    return table


def run_header(run: dict[str, Any]) -> Text:
    where = "" if run.get("project", "default") == "default" else f"  project {run['project']}"
    head = Text(f"run {run['id']}  {run['dag_name']} v{run['dag_version']}{where}  ")
    head.append_text(status(run["status"]))
    if run.get("error"):
        head.append(f"  {run['error']}", style="red")
    return head


def watch(fetch: Any, run_id: str, console: Console, *, poll_s: float = 0.25) -> dict[str, Any]:
    """Show a run's tasks live until the run ends; return the final run."""
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            run = fetch(run_id)
            live.update(Group(run_header(run), tasks_table(run)))
            if run["status"] in TERMINAL:
                return run
            time.sleep(poll_s)


def runs_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("id", "project", "DAG", "version", "status", "tasks", "created", "duration"):
        table.add_column(col)
    for r in items:
        counts = r.get("task_counts") or {}
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        created = _when(r["created_at"])
        table.add_row(r["id"], r.get("project", ""), r["dag_name"], str(r["dag_version"]), status(r["status"]), summary,
                      created.strftime("%Y-%m-%d %H:%M:%S") if created else "",
                      duration(r.get("started_at"), r.get("finished_at")))
    return table
