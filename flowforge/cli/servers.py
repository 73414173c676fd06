"""Commands that run FlowForge: `up` (everything, embedded), `api`, `coordinator`, `migrate`,
`demo`; and `tokens`, `validate`, which need no server."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path

import typer

from flowforge.cli.base import (
    app, configure_logging, fail, load_settings, redact, run_async, tokens_app, user_errors,
)

ADMIN_TENANT = "default"


def _run_stack(cfg, started, shared: str | None = None, **stack_options) -> None:  # type: ignore[no-untyped-def]
    """Start a Stack, call `started(stack, services)` to announce it, serve until SIGINT or
    SIGTERM, then stop the stack and any embedded servers. `shared` names a command that runs
    beside others and so must be given the services' URLs."""
    from flowforge import runtime

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        services = await asyncio.to_thread(runtime.resolve_services, cfg, embedded_for=shared)
        stack = runtime.Stack(cfg, services, **stack_options)
        try:
            await stack.start()
            # Modules, settings and clients made so far live as long as the process: keep them
            # out of the collector's full passes, which otherwise stall every cycle for tens of ms.
            gc.freeze()
            await started(stack, services)
            await stop.wait()
            typer.echo("stopping…")
        finally:
            try:
                await asyncio.wait_for(stack.stop(), timeout=60)
            finally:
                await asyncio.to_thread(services.stop)

    with user_errors():
        run_async(main())


def _with_api(cfg, port: int | None, host: str | None):  # type: ignore[no-untyped-def]
    api = cfg.api.model_copy(update={k: v for k, v in (("port", port), ("host", host)) if v is not None})
    return cfg.model_copy(update={"api": api})


PORT = typer.Option(None, min=0, max=65535, help="API port (default: api.port, 8080).")
HOST = typer.Option(None, help="API address (default: api.host, 127.0.0.1).")


async def _admin_token(catalog, path: Path, url: str) -> str:  # type: ignore[no-untyped-def]
    """Reuse the token in the credentials file while it is valid; else create one. Either way
    the file ends up naming this server's URL."""
    from flowforge import client as client_mod

    saved = client_mod.read_credentials(path)
    token = saved["token"] if saved else None
    if token is None or await catalog.verify_token(token) is None:
        token = await catalog.create_token(ADMIN_TENANT, "admin (flowforge up)")
    client_mod.write_credentials(path, url, token, ADMIN_TENANT)
    return token


@app.command()
def up(port: int = PORT, host: str = HOST) -> None:
    """Run everything in one process: Postgres, Redis (embedded unless their URLs are set), a
    local Ray, the agent pools, the coordinator and the REST API. Ctrl-C stops it all."""
    from flowforge import client as client_mod

    cfg = _with_api(load_settings(), port, host)
    cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"level": "warning"})})
    configure_logging(cfg)

    async def started(stack, services) -> None:  # type: ignore[no-untyped-def]
        path = client_mod.credentials_path(cfg.data_dir).resolve()
        await _admin_token(stack.catalog, path, stack.api.url)
        typer.echo(f"FlowForge is up at {stack.api.url} (API docs: {stack.api.url}/docs)")
        typer.echo(f"  postgres: {redact(services.database_url)}   redis: {services.redis_url}")
        typer.echo(f"  admin token written to {path} (mode 0600); the flowforge CLI reads it")
        typer.echo("  try: flowforge submit examples/diamond.yaml --wait      stop: Ctrl-C")

    typer.echo("starting Postgres, Redis, Ray, the agent pools, the coordinator and the API…")
    _run_stack(cfg, started, with_api=True)
    typer.echo("stopped")


@app.command()
def api(port: int = PORT, host: str = HOST) -> None:
    """Run the REST API only, against configured Postgres and Redis (scale it out freely)."""
    cfg = _with_api(load_settings(), port, host)
    configure_logging(cfg)

    async def started(stack, services) -> None:  # type: ignore[no-untyped-def]
        typer.echo(f"API listening on {stack.api.url}")

    _run_stack(cfg, started, "flowforge api", with_coordinator=False, with_api=True)


@app.command()
def coordinator() -> None:
    """Run the coordinator, the reconciler and the agent pools until SIGINT or SIGTERM."""
    cfg = load_settings()
    configure_logging(cfg)

    async def started(stack, services) -> None:  # type: ignore[no-untyped-def]
        served = f", metrics: {stack.metrics_server.url}/metrics" if stack.metrics_server else ""
        typer.echo(f"coordinator running (postgres: {redact(services.database_url)}, redis: {services.redis_url}"
                   f"{served})")

    _run_stack(cfg, started, "flowforge coordinator", metrics_port=cfg.coordinator.metrics_port)


@app.command()
def migrate() -> None:
    """Create or upgrade the Postgres schema (also done when a server starts)."""
    from flowforge import runtime
    from flowforge.backends.postgres import migrate as migrating

    cfg = load_settings()
    services = runtime.resolve_services(cfg)
    try:
        migrating.upgrade(services.database_url)
        typer.echo("schema is up to date")
    finally:
        services.stop()


@app.command()
def demo(
    examples_dir: Path = typer.Option(Path("examples"), help="Folder of example DAGs."),
    port: int = typer.Option(0, help="API port for the demo (0: any free port)."),
) -> None:
    """Start the embedded stack, run every example DAG over the REST API with live progress,
    print a final table, check each run ended as expected, and shut down."""
    from flowforge import demo as demoing

    cfg = load_settings()
    configure_logging(cfg, "warning")
    with user_errors():
        ok = demoing.run_demo(examples_dir, port=port)
    raise typer.Exit(0 if ok else 1)


@app.command("validate")
def validate(file: Path) -> None:
    """Check a DAG file (YAML, JSON, or a Python SDK module) and print every problem with its path."""
    from flowforge import dagfile
    from flowforge.domain import validation

    with user_errors():
        dag = validation.parse_dag(dagfile.load(file))
    typer.echo(f"{file}: DAG '{dag.name}' is valid ({len(dag.tasks)} tasks)")


@tokens_app.command("create")
def tokens_create(
    tenant: str = typer.Option(..., help="The tenant the token acts for (created if new)."),
    name: str = typer.Option("cli", help="A label to recognise the token by."),
    role: str = typer.Option(None, help="admin (operator's tenant only), tenant-admin, member or viewer "
                                        "(default: admin for tenant default, else tenant-admin)."),
    expires_in: str = typer.Option(None, "--expires-in", help="e.g. 30d, 12h, 90m (default: never)."),
    project: list[str] = typer.Option([], "--project", help="Scope the token to this project (repeatable; "
                                                             "default: every project of the tenant)."),
) -> None:
    """Create an API token and print it (it is shown once; only its hash is stored)."""
    import re

    from flowforge import runtime
    from flowforge.backends.postgres import catalog as catalog_mod, migrate as migrating
    from flowforge.backends.postgres import store as pg_store

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", tenant):
        raise fail("--tenant: use lowercase letters, digits and dashes (at most 63)", 2)
    ttl = None
    if expires_in is not None:
        found = re.fullmatch(r"(\d{1,6})([dhm])", expires_in.strip())
        if found is None:
            raise fail("--expires-in: write a number and d, h or m, e.g. 30d", 2)
        from datetime import timedelta

        ttl = timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[found[2]]: int(found[1])})
    cfg = load_settings()
    services = runtime.resolve_services(cfg)

    async def main() -> str:
        store = pg_store.PostgresStore.connect(services.database_url)
        try:
            return await catalog_mod.Catalog(store.engine).create_token(tenant, name, role, ttl, project or None,
                                                                        field="--project")
        finally:
            await store.close()

    try:
        migrating.upgrade(services.database_url)
        with user_errors():
            typer.echo(run_async(main()))
    finally:
        services.stop()
