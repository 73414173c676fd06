"""Client commands: they talk to a running FlowForge over its REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from flowforge.cli import render
from flowforge.cli.base import app, dags_app, fail, load_settings, user_errors
from flowforge.client import Client

URL = typer.Option(None, "--url", envvar="FLOWFORGE_URL", help="API URL (default: from the credentials file).")
TOKEN = typer.Option(None, "--token", envvar="FLOWFORGE_TOKEN", help="API token (default: from the credentials file).")
PROJECT = typer.Option(None, "--project", envvar="FLOWFORGE_PROJECT", help="The project (default: `default`).")


def _client(url: str | None, token: str | None) -> Client:
    with user_errors():
        return Client.connect(load_settings().data_dir, url, token)


def _params(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; a value that parses as JSON is taken as JSON (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--param {pair!r}: write it as key=value", 2)
        try:  # NaN and Infinity are not JSON: they stay text
            out[key] = json.loads(value, parse_constant=_not_json)
        except ValueError:
            out[key] = value
    return out


def _not_json(constant: str) -> Any:
    raise ValueError(constant)


@app.command()
def submit(
    file: Path = typer.Argument(None, help="A DAG file: YAML, JSON, or a Python SDK module."),
    name: str = typer.Option(None, "--name", help="Run a stored template instead of a file."),
    version: int = typer.Option(None, "--version", help="With --name: that version (default: the latest)."),
    param: list[str] = typer.Option([], "--param", "-p", help="A param override, key=value (repeatable)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Show the run live until it ends; exit 0 only if it succeeded."),
    project: str = PROJECT,
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Start a run of a DAG file or a stored template."""
    from flowforge import dagfile

    if (file is None) == (name is None):
        raise fail("give a DAG FILE or --name TEMPLATE (one of them)", 2)
    params = _params(param)
    client = _client(url, token)
    console = render.console()
    with user_errors():
        if file is not None:
            created = client.submit(dagfile.load(file), params=params, project=project)
        else:
            created = client.submit(name=name, version=version, params=params, project=project)
        where = "" if created.get("project", "default") == "default" else f" in project {created['project']}"
        console.print(f"run {created['id']} of {created['dag']} v{created['version']} started{where}")
        if not wait:
            return
        run = render.watch(client.run, created["id"], console)
    failed = [t for t in run["tasks"] if t["status"] in ("failed", "upstream_failed") and t["error"]]
    for t in failed[:5]:
        console.print(f"[red]{t['key']}[/]: {t['error'].strip().splitlines()[-1]}")
    raise typer.Exit(0 if run["status"] == "succeeded" else 1)


@app.command()
def runs(
    status: str = typer.Option(None, help="pending, running, succeeded, failed or cancelled."),
    dag: str = typer.Option(None, help="Only runs of this DAG."),
    limit: int = typer.Option(20, min=1, max=500),
    cursor: str = typer.Option(None, help="The next page, from a previous listing."),
    project: str = typer.Option(None, "--project", envvar="FLOWFORGE_PROJECT", help="Only runs of this project."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """List runs, newest first."""
    client = _client(url, token)
    with user_errors():
        page = client.runs(status=status, dag=dag, limit=limit, cursor=cursor, project=project)
    console = render.console()
    console.print(render.runs_table(page["items"]))
    if page["next_cursor"]:
        console.print(f"more: flowforge runs --cursor {page['next_cursor']}")


@app.command("run")
def show_run(
    run_id: str,
    logs: bool = typer.Option(False, "--logs", help="Print each attempt's captured output."),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Show a run: its tasks, attempts and errors."""
    client = _client(url, token)
    with user_errors():
        run = client.run(run_id, logs=logs)
    if as_json:
        typer.echo(json.dumps(run, indent=2))
        return
    console = render.console()
    console.print(render.run_header(run))
    console.print(render.tasks_table(run, max_rows=10_000))
    for t in run["tasks"]:
        if t["error"] and t["status"] in ("failed", "upstream_failed", "cancelled"):
            console.print(f"[red]{t['key']}[/]: {t['error'].rstrip()}")
        if logs:
            for a in t["attempts"]:
                for line in a.get("logs") or ():
                    console.print(f"{t['key']}#{a['number']} {line[1]}: {line[2]}", markup=False, highlight=False)


@app.command()
def logs(
    run_id: str,
    task: str = typer.Option(None, "--task", help="Only this task's lines (its key, e.g. `fetch` or `work[3]`)."),
    attempt: int = typer.Option(None, "--attempt", min=1, help="Only this attempt's lines."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the run ends."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Print a run's output lines; with -f, follow them live until the run ends."""
    client = _client(url, token)

    def show(line: dict[str, Any]) -> None:
        typer.echo(f"{line['task']}#{line['attempt']} {line['stream']}: {line['line']}")

    with user_errors():
        if follow:
            for line in client.follow_logs(run_id, task=task, attempt=attempt):
                if "end" in line:
                    typer.echo(f"run {run_id}: {line['end']}", err=True)
                    break
                show(line)
            return
        after = 0
        while True:
            page = client.logs(run_id, task=task, attempt=attempt, after=after)
            for line in page["items"]:
                show(line)
            if not page["items"] and page["next_after"] == after:
                break
            after = page["next_after"]


@app.command()
def cancel(run_id: str, url: str = URL, token: str = TOKEN) -> None:
    """Cancel a pending or running run."""
    client = _client(url, token)
    with user_errors():
        client.cancel(run_id)
    typer.echo(f"run {run_id}: cancelling")


@app.command()
def retry(run_id: str, url: str = URL, token: str = TOKEN) -> None:
    """Re-run a failed or cancelled run's failed, cancelled and upstream_failed tasks."""
    client = _client(url, token)
    with user_errors():
        client.retry(run_id)
    typer.echo(f"run {run_id}: retrying")


@dags_app.command("push")
def dags_push(file: Path, project: str = PROJECT, url: str = URL, token: str = TOKEN) -> None:
    """Store a DAG file as a template (a new version if it changed)."""
    from flowforge import dagfile

    client = _client(url, token)
    with user_errors():
        stored, created = client.push_dag(dagfile.load(file), project=project)
    what = "created" if created else ("stored" if stored.get("stored") else "unchanged: equal to the latest version")
    typer.echo(f"DAG {stored['name']} v{stored['version']} {what} (versions: {', '.join(map(str, stored['versions']))})")


@dags_app.command("list")
def dags_list(project: str = PROJECT, url: str = URL, token: str = TOKEN) -> None:
    """List DAG templates."""
    from rich.table import Table

    client = _client(url, token)
    table = Table()
    for col in ("name", "latest", "versions", "tasks", "description"):
        table.add_column(col)
    cursor = None
    with user_errors():
        while True:
            page = client.dags(limit=500, cursor=cursor, project=project)
            for d in page["items"]:
                table.add_row(d["name"], str(d["version"]), str(d["versions"]), str(d["tasks"]), d["description"] or "")
            cursor = page["next_cursor"]
            if not cursor:
                break
    render.console().print(table)


@dags_app.command("show")
def dags_show(name: str, version: int = typer.Option(None, help="Default: the latest."),
              project: str = PROJECT, url: str = URL, token: str = TOKEN) -> None:
    """Print a template's spec (YAML) and its versions."""
    import yaml

    client = _client(url, token)
    with user_errors():
        dag = client.dag(name, version, project=project)
    typer.echo(f"# {dag['name']} v{dag['version']} (versions: {', '.join(map(str, dag['versions']))})")
    typer.echo(yaml.safe_dump(dag["spec"], sort_keys=False).rstrip())
