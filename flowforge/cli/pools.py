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


@tenants_app.command("limits")
def tenant_limits(
    tenant: str = typer.Argument(..., help="The tenant."),
    max_running: int = typer.Option(None, "--max-running", min=1, help="Attempts in flight at once."),
    no_limit: bool = typer.Option(False, "--no-limit", help="Remove the quota of attempts in flight."),
    weight: float = typer.Option(None, "--weight", min=0.001, help="Fair-share weight (default 1)."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Show a tenant's quota and weight; with options, set them (operator's admin token)."""
    from flowforge.cli.base import user_errors

    if no_limit and max_running is not None:
        raise fail("give --max-running N or --no-limit, not both", 2)
    client = _client(url, token)
    with user_errors():
        now = client.tenant_limits(tenant)
        if max_running is not None or no_limit or weight is not None:
            now = client.set_tenant_limits(
                tenant, None if no_limit else (max_running if max_running is not None else now["max_running_tasks"]),
                weight if weight is not None else now["weight"],
            )
    limit = now["max_running_tasks"]
    typer.echo(f"{tenant}: at most {limit if limit is not None else 'unlimited'} attempts in flight, weight {now['weight']:g}")
