"""The `flowforge` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import structlog
import typer

from flowforge import errors, settings as settings_mod

app = typer.Typer(add_completion=False, no_args_is_help=True, help="FlowForge: DAGs on warm agents and fresh Pods.")


def _configure_logging(cfg: settings_mod.Settings) -> None:
    level = getattr(logging, cfg.logging.level.upper(), logging.INFO)
    renderer = (
        structlog.processors.JSONRenderer() if cfg.logging.format == "json" else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )


def _load_settings() -> settings_mod.Settings:
    try:
        return settings_mod.load()
    except Exception as exc:  # pydantic ValidationError, YAML errors: show them, not a traceback
        typer.echo(f"error: invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def coordinator() -> None:
    """Run the coordinator, the reconciler and the agent pools until SIGINT or SIGTERM."""
    from flowforge import runtime

    cfg = _load_settings()
    _configure_logging(cfg)

    async def main() -> None:
        services = await asyncio.to_thread(runtime.resolve_services, cfg)
        stack = runtime.Stack(cfg, services)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stack.start()
            typer.echo(f"coordinator running (postgres: {_redact(services.database_url)}, redis: {services.redis_url})")
            await stop.wait()
            typer.echo("stopping…")
        finally:
            await asyncio.wait_for(stack.stop(), timeout=30)
            services.stop()

    try:
        _run(main())
    except errors.FlowForgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def migrate() -> None:
    """Create or upgrade the Postgres schema (also done at coordinator start)."""
    from flowforge import runtime
    from flowforge.backends.postgres import migrate as migrating

    cfg = _load_settings()
    services = runtime.resolve_services(cfg)
    try:
        migrating.upgrade(services.database_url)
        typer.echo("schema is up to date")
    finally:
        services.stop()


@app.command()
def demo(examples_dir: Path = typer.Option(Path("examples"), help="Folder of example DAGs.")) -> None:
    """Run every example DAG on the embedded stack, with live progress and a final table."""
    from flowforge import demo as demoing

    cfg = _load_settings()
    _configure_logging(cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"level": "warning"})}))
    try:
        ok = demoing.run_demo(examples_dir)
    except errors.FlowForgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if ok else 1)


@app.command("validate")
def validate(file: Path) -> None:
    """Check a DAG file (YAML or JSON) and print every problem with its path."""
    from flowforge.domain import validation

    try:
        text = file.read_text()
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    try:
        dag = validation.parse_dag(text)
    except validation.SpecError as exc:
        typer.echo(f"{file}: {len(exc.problems)} problem(s)", err=True)
        for p in exc.problems:
            typer.echo(f"  {p.path}: {p.message}" + (f" (fix: {p.hint})" if p.hint else ""), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: DAG '{dag.name}' is valid ({len(dag.tasks)} tasks)")


def _run(coro) -> None:  # type: ignore[no-untyped-def]
    """Run on uvloop where available: the coordinator's loop is on every task's critical path."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        user = rest.split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return url


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
