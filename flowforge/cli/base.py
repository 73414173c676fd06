"""The Typer app and what every command shares: settings, logging, the event loop, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from flowforge import errors, servicelog, settings as settings_mod

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="FlowForge: DAGs on warm agents and fresh Pods.")
dags_app = typer.Typer(no_args_is_help=True, help="DAG templates: push, list, show.")
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens (talks to Postgres directly).")
pools_app = typer.Typer(help="Agent pools: status, node-group annotations, config checks.")
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants: create, list, quotas and fair-share weights.")
projects_app = typer.Typer(no_args_is_help=True, help="A tenant's projects: create, list, show, delete.")
app.add_typer(dags_app, name="dags")
app.add_typer(tokens_app, name="tokens")
app.add_typer(pools_app, name="pools")
app.add_typer(tenants_app, name="tenants")
app.add_typer(projects_app, name="projects")
T = TypeVar("T")


def configure_logging(cfg: settings_mod.Settings, level: str | None = None) -> None:
    servicelog.configure(level or cfg.logging.level, cfg.logging.format, stdlib=True)


def load_settings() -> settings_mod.Settings:
    try:
        return settings_mod.load()
    except Exception as exc:  # pydantic ValidationError, YAML errors: show them, not a traceback
        typer.echo(f"error: invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Known failures become a message and exit code, never a traceback."""
    from flowforge.client import ApiError
    from flowforge.domain import validation

    try:
        yield
    except validation.SpecError as exc:
        typer.echo(f"error: {len(exc.problems)} problem(s)", err=True)
        for p in exc.problems:
            typer.echo(f"  {p.path}: {p.message}" + (f" (fix: {p.hint})" if p.hint else ""), err=True)
        raise typer.Exit(2) from None
    except errors.InvalidInput as exc:
        raise fail(f"{exc.field}: {exc.message}" + (f" (fix: {exc.hint})" if exc.hint else ""), 2) from None
    except ApiError as exc:
        raise fail(str(exc), 2 if exc.status and 400 <= exc.status < 500 else 1) from None
    except errors.FlowForgeError as exc:
        raise fail(str(exc)) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where available: the coordinator's loop is on every task's critical path."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        user = rest.split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return url


