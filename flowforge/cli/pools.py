"""`flowforge pools`: what each pool has, node-group annotations that size pools, config checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from flowforge.cli import render
from flowforge.cli.base import fail, pools_app, tenants_app
from flowforge.cli.commands import TOKEN, URL, _client


def pools_table(pools: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table()
    for col in ("pool", "desired", "ready", "starting", "draining", "busy", "free slots", "backlog", "pending",
                "node groups"):
        table.add_column(col)
    for p in pools:
        groups = ", ".join(f"{g}={n}" for g, n in sorted(p["node_groups"].items())) or "-"
        table.add_row(p["name"], "-" if p["desired"] is None else str(p["desired"]), str(p["ready"]),
                      str(p["starting"]), str(p["draining"]), str(p["busy_agents"]), str(p["free_slots"]),
                      str(p["backlog"]), str(p["pending_entries"]), groups if p["managed"] else "no manager")
    return table


@pools_app.callback(invoke_without_command=True)
def pools(ctx: typer.Context, url: str = URL, token: str = TOKEN,
          as_json: bool = typer.Option(False, "--json", help="Print the API's JSON.")) -> None:
    """Show every pool: desired, ready and busy agents, free slots, backlog, node groups."""
    if ctx.invoked_subcommand is not None:
        return
    from flowforge.cli.base import user_errors

    client = _client(url, token)
    with user_errors():
        found = client.pools()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    else:
        render.console().print(pools_table(found))


@pools_app.command("annotate")
def annotate(
    node_group: str = typer.Argument(..., help="The node group (flowforge.io/node-group; `local` when embedded)."),
    counts: list[str] = typer.Argument(..., help="POOL=COUNT agents per node, e.g. default=4 etl=2."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Show the pools until they converge."),
    timeout: float = typer.Option(120, help="With --wait: give up after this many seconds."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Set agents per node of these pools on every node of NODE_GROUP; the pools resize live."""
    from rich.live import Live

    from flowforge.cli.base import user_errors

    wanted: dict[str, int] = {}
    for item in counts:
        pool, sep, n = item.partition("=")
        if not sep or not pool or not n.isdigit():
            raise fail(f"{item!r}: write POOL=COUNT, e.g. default=4", 2)
        wanted[pool] = int(n)
    client = _client(url, token)
    with user_errors():
        done = client.annotate_pools(node_group, wanted)
    typer.echo(f"annotated {len(done['nodes'])} node(s) of {node_group}: {', '.join(done['nodes'])}")
    if not wait:
        return
    console = render.console()
    deadline = time.monotonic() + timeout
    with user_errors(), Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            found = [p for p in client.pools() if p["name"] in wanted]
            live.update(pools_table(found))
            if all(p["managed"] and (p["nodes_seen_at"] or 0) > done["at"] and p["desired"] == p["ready"]
                   and not p["starting"] and not p["draining"] for p in found):
                break
            if time.monotonic() > deadline:
                raise fail(f"the pools did not converge within {timeout:g}s", 1)
            time.sleep(0.25)
    typer.echo("converged")


@pools_app.command("validate")
def validate(directory: Path = typer.Argument(Path("pool-config"), help="A folder of pool YAML files.")) -> None:
    """Check every pool file; print each pool, or every problem (exit 2)."""
    from agents import pools as pooling

    try:
        found = pooling.load_dir(directory)
    except pooling.PoolConfigError as exc:
        raise fail(str(exc), 2) from None
    for name, p in sorted(found.items()):
        typer.echo(f"{name}: {p.min_agents}..{p.max_agents} agents ({p.agents_per_node} per node without an "
                   f"annotation), {p.slots_per_agent} slots each, functions from {', '.join(p.allowed_functions) or 'nowhere'}")


@pools_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a pool file (for editors: yaml-language-server)."""
    from agents import pools as pooling

    typer.echo(json.dumps(pooling.PoolConfig.model_json_schema(), indent=2))


_QUOTA_OPTIONS = ("max_cpu", "max_memory", "max_gpu", "max_active_runs", "max_dag_tasks")


def _quota_value(option: str, value: str) -> Any:
    """An option's value as the API takes it: `none` removes the limit; numbers stay numbers."""
    if value.strip().lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        if option in ("max_gpu", "max_active_runs", "max_dag_tasks"):
            raise fail(f"--{option.replace('_', '-')}: {value!r} is not a whole number (or none)", 2) from None
        return value  # a quantity: "500m", "8Gi"; the API checks it


def describe_limits(now: dict[str, Any]) -> str:
    def shown(name: str) -> str:
        value = now.get(name)
        return "unlimited" if value is None else str(value)

    return ", ".join(f"{name} {shown(name)}" for name in _QUOTA_OPTIONS)


@tenants_app.command("limits")
def tenant_limits(
    tenant: str = typer.Argument(..., help="The tenant."),
    max_running: int = typer.Option(None, "--max-running", min=1, help="Attempts in flight at once."),
    no_limit: bool = typer.Option(False, "--no-limit", help="Remove the quota of attempts in flight."),
    weight: float = typer.Option(None, "--weight", min=0.001, help="Fair-share weight (default 1)."),
    max_cpu: str = typer.Option(None, "--max-cpu", help="Cores of attempts in flight: 8, 2.5, 500m (none: no limit)."),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory of attempts in flight: 32Gi, 512Mi (none: no limit)."),
    max_gpu: str = typer.Option(None, "--max-gpu", help="GPUs of attempts in flight (none: no limit)."),
    max_active_runs: str = typer.Option(None, "--max-active-runs", help="Pending or running runs (none: no limit)."),
    max_dag_tasks: str = typer.Option(None, "--max-dag-tasks", help="Tasks of one run (none: no limit)."),
    project: str = typer.Option(None, "--project", help="Show or set this project's limits (they narrow the tenant's)."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Show a tenant's (or a project's) quotas and weight; with options, change those given and
    keep the others (the operator's admin token; a project's also its tenant-admins)."""
    from flowforge.cli.base import user_errors

    if no_limit and max_running is not None:
        raise fail("give --max-running N or --no-limit, not both", 2)
    if project is not None and weight is not None:
        raise fail("--weight is a tenant's; a project has no weight of its own (drop --project or --weight)", 2)
    given = {name: _quota_value(name, value) for name, value in (
        ("max_cpu", max_cpu), ("max_memory", max_memory), ("max_gpu", max_gpu),
        ("max_active_runs", max_active_runs), ("max_dag_tasks", max_dag_tasks)) if value is not None}
    client = _client(url, token)
    with user_errors():
        now = client.tenant_limits(tenant) if project is None else client.project_limits(tenant, project)
        if max_running is not None or no_limit or weight is not None or given:
            quotas = {name: now.get(name) for name in _QUOTA_OPTIONS} | given
            running = None if no_limit else (max_running if max_running is not None else now["max_running_tasks"])
            if project is None:
                now = client.set_tenant_limits(tenant, running, weight if weight is not None else now["weight"],
                                               **quotas)
            else:
                now = client.set_project_limits(tenant, project, max_running_tasks=running, **quotas)
    limit = now["max_running_tasks"]
    running_text = f"at most {limit if limit is not None else 'unlimited'} attempts in flight"
    if project is None:
        typer.echo(f"{tenant}: {running_text}, weight {now['weight']:g}")
    else:
        typer.echo(f"{tenant}/{project}: {running_text}")
    typer.echo(f"  {describe_limits(now)}")
