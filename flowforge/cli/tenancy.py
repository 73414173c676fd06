"""`flowforge tenants create|list` (the operator's admin token) and `flowforge projects`
(the operator, or the tenant's tenant-admins; listing: any token of the tenant)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import typer

from flowforge.cli import render
from flowforge.cli.base import projects_app, tenants_app, user_errors
from flowforge.cli.commands import TOKEN, URL, _client

TENANT = typer.Option(..., "--tenant", envvar="FLOWFORGE_TENANT", help="The tenant the project belongs to.")
AS_JSON = typer.Option(False, "--json", help="Print the API's JSON.")


def _every(fetch: Callable[[str | None], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        page = fetch(cursor)
        yield from page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    from rich.table import Table

    table = Table()
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def _when(value: str) -> str:
    return value[:19].replace("T", " ")


@tenants_app.command("create")
def tenants_create(
    tenant: str = typer.Argument(..., help="The id: lowercase letters, digits and dashes."),
    name: str = typer.Option(None, help="A display name (default: the id)."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Create a tenant with its `default` project (operator's admin token)."""
    client = _client(url, token)
    with user_errors():
        made = client.create_tenant(tenant, name)
    typer.echo(f"tenant {made['id']} created (project default); give it a token: "
               f"flowforge tokens create --tenant {made['id']}")


@tenants_app.command("list")
def tenants_list(as_json: bool = AS_JSON, url: str = URL, token: str = TOKEN) -> None:
    """List every tenant (operator's admin token)."""
    client = _client(url, token)
    with user_errors():
        found = list(_every(lambda c: client.tenants(cursor=c)))
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    render.console().print(_table(("tenant", "name", "created"),
                                  [(t["id"], t["name"], _when(t["created_at"])) for t in found]))


@projects_app.command("create")
def projects_create(
    project: str = typer.Argument(..., help="The id: lowercase letters, digits and dashes."),
    tenant: str = TENANT,
    name: str = typer.Option(None, help="A display name (default: the id)."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Create a project in a tenant."""
    client = _client(url, token)
    with user_errors():
        made = client.create_project(tenant, project, name)
    typer.echo(f"project {made['id']} created in tenant {made['tenant']}")


@projects_app.command("list")
def projects_list(tenant: str = TENANT, as_json: bool = AS_JSON, url: str = URL, token: str = TOKEN) -> None:
    """List a tenant's projects (a project-scoped token sees its own)."""
    client = _client(url, token)
    with user_errors():
        found = list(_every(lambda c: client.projects(tenant, cursor=c)))
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    render.console().print(_table(("project", "name", "created"),
                                  [(p["id"], p["name"], _when(p["created_at"])) for p in found]))


@projects_app.command("show")
def projects_show(project: str, tenant: str = TENANT, url: str = URL, token: str = TOKEN) -> None:
    """Show a project and how many of its runs are active."""
    client = _client(url, token)
    with user_errors():
        found = client.project(tenant, project)
    typer.echo(f"{found['tenant']}/{found['id']} ({found['name']}): {found['active_runs']} active run(s), "
               f"created {_when(found['created_at'])}")


@projects_app.command("delete")
def projects_delete(
    project: str,
    tenant: str = TENANT,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    url: str = URL,
    token: str = TOKEN,
) -> None:
    """Delete a project with its DAG templates and finished runs (refused while runs are active)."""
    if not yes:
        typer.confirm(f"delete project {project} of tenant {tenant}, its templates and its runs' history?",
                      abort=True)
    client = _client(url, token)
    with user_errors():
        client.delete_project(tenant, project)
    typer.echo(f"project {project} deleted from tenant {tenant}")
