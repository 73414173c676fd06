"""Service logs: how every FlowForge process (CLI servers, agents, the launcher) writes its own
log lines with structlog. `logging.format=json` gives one JSON object a line, for a log
collector. Context bound with `structlog.contextvars` (an attempt's run, task and attempt
number, in the agent that runs it) is merged into each line.

No secrets: fields named like a credential are replaced by `***`, and inside any text a URL's
password, an API token (`ff_...`) and a bearer credential are masked. (Secret params never
reach service logs: the coordinator does not log arguments, and agents scrub them from what
tasks print.) Task output is not a service log: it goes to the LogStore."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

MASK = "***"
_SECRET_KEYS = frozenset({"token", "password", "secret", "ticket", "authorization", "api_key", "credentials",
                          "ticket_secret", "ticket_key"})
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)")
_TOKEN = re.compile(r"\bff_[A-Za-z0-9_-]{16,}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def mask(text: str) -> str:
    """`text` with URL passwords, API tokens and bearer credentials masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<head>" + MASK, text)
    if "ff_" in text:
        text = _TOKEN.sub("ff_" + MASK, text)
    if "earer" in text:
        text = _BEARER.sub(r"\g<1>" + MASK, text)
    return text


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: no credential leaves in a log line."""
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS and value is not None:
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = mask(value)
    return event


def configure(level: str = "info", fmt: str = "console", *, file: TextIO | None = None,
              stdlib: bool = False) -> None:
    """Set up structlog for this process: `level` and up, as `fmt` (console or json), to `file`
    (standard output as it is now, by default). `stdlib`: also render the standard `logging` records of
    libraries (uvicorn, SQLAlchemy) the same way, through a root handler; only for server
    processes (an agent's root logger belongs to the tasks whose output it captures)."""
    json_lines = fmt == "json"
    lowest = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        shared.append(structlog.processors.format_exc_info)  # a traceback as one field
    shared.append(redact)
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lowest),
        # The stream as it is now: agents and the launcher later route sys.stdout to the captured
        # output of the attempt running in the context, and service lines are no task's output.
        logger_factory=structlog.PrintLoggerFactory(file if file is not None else sys.stdout),
        cache_logger_on_first_use=False,
    )
    if stdlib:
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, "_flowforge", False)]:
            root.removeHandler(old)
        handler = logging.StreamHandler(file if file is not None else sys.stdout)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        ))
        handler._flowforge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(max(lowest, logging.INFO))  # libraries' debug chatter stays off
