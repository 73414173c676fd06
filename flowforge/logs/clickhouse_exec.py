"""Where the ClickHouse LogStore's SQL runs: a ClickHouse server (clickhouse-connect, over HTTP)
or chDB, ClickHouse in this process. Both take the same statements, `{name:Type}` parameters
bound by the engine (never spliced into the text) and rows as JSONCompactEachRow, so the store
above them is one piece of code. Calls are blocking: the store runs them on its own threads.

Driver errors are translated here: an unreachable server is `errors.TemporaryError`; a bad
URL, password or database `errors.ConfigError`; anything else `errors.PermanentError`; each
message names where the store is (and `logging.clickhouse_url`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from flowforge import errors

SETTING = "logging.clickhouse_url"
_SCHEMES = {"clickhouse": False, "http": False, "clickhouses": True, "https": True}


class Executor(Protocol):
    threads: int  # how many calls may run at once
    where: str  # for messages: which server or directory

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        """The result, each row a list of JSON values."""

    def insert(self, table: str, columns: tuple[str, ...], body: str) -> None:
        """Insert `body`: rows in JSONCompactEachRow (JSON arrays, separated by whitespace or commas)."""

    def close(self) -> None: ...


def _decode(raw: bytes) -> list[list[Any]]:
    return [json.loads(line) for line in raw.splitlines() if line]


def _locked_elsewhere(path: Path) -> bool:
    """Whether another process holds the directory's `status` lock (its chDB or ClickHouse)."""
    import fcntl

    try:
        with open(path / "status", "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ChdbExecutor:
    """chDB with its data in a directory. chDB holds one data directory per process."""

    threads = 1  # one engine per process; its calls are serialised on one thread

    def __init__(self, path: Path) -> None:
        from chdb import session

        path = path.resolve()  # chDB compares directories by their spelling
        self.where = f"chDB at {path}"
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(path))
        except RuntimeError as exc:
            if _locked_elsewhere(path):
                hint = ("another process has this directory open. chDB lives inside one process: FlowForge "
                        f"processes that run apart (`flowforge api`, `flowforge coordinator`) share logs through a "
                        f"ClickHouse server: set {SETTING}")
            else:
                hint = (f"{_first_line(exc)}. chDB opens one data directory per process: close the other store "
                        f"first, or set {SETTING} to use a ClickHouse server")
            raise errors.ConfigError(f"{self.where}: {hint}") from None

    @contextmanager
    def _translated(self) -> Iterator[None]:
        import chdb

        try:
            yield
        except (chdb.ChdbError, RuntimeError) as exc:
            raise errors.PermanentError(f"{self.where}: {_first_line(exc)}") from exc

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with self._translated():
            self._session.query(sql, "CSV", params=dict(params) if params else None)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        with self._translated():
            result = self._session.query(sql, "JSONCompactEachRow", params=dict(params) if params else None)
        return _decode(result.bytes())

    def insert(self, table: str, columns: tuple[str, ...], body: str) -> None:
        with self._translated():
            self._session.query(f"INSERT INTO {table} ({', '.join(columns)}) FORMAT JSONCompactEachRow\n{body}")

    def close(self) -> None:
        self._session.close()


class ServerExecutor:
    """A ClickHouse server through a clickhouse-connect client."""

    threads = 4  # the client's HTTP pool is thread-safe; no session, so calls may overlap

    def __init__(self, client: Any, where: str) -> None:
        self._client = client
        self.where = where

    @classmethod
    def connect(cls, url: str, *, connect_timeout: float = 10) -> ServerExecutor:
        """Connect to `url`, e.g. `clickhouse://user:password@host:8123/database` (`clickhouses://`
        or `https://` for TLS); the database must exist."""
        import clickhouse_connect

        kwargs, where = parse_url(url)
        try:
            client = clickhouse_connect.get_client(
                **kwargs, connect_timeout=connect_timeout, autogenerate_session_id=False,
            )
        except Exception as exc:
            raise _translate(exc, where) from None
        return cls(client, where)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _translate(exc, self.where) from exc

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._call(self._client.command, sql, parameters=dict(params) if params else None)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        raw = self._call(self._client.raw_query, sql, parameters=dict(params) if params else None,
                         fmt="JSONCompactEachRow")
        return _decode(raw)

    def insert(self, table: str, columns: tuple[str, ...], body: str) -> None:
        self._call(self._client.raw_insert, table, list(columns), insert_block=body.encode(),
                   fmt="JSONCompactEachRow")

    def close(self) -> None:
        self._client.close()


def parse_url(url: str) -> tuple[dict[str, Any], str]:
    """clickhouse-connect's arguments for `url`, and a password-free name of the server."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise errors.ConfigError(  # the URL itself is not repeated: it may hold a password
            f"{SETTING}: not a ClickHouse server URL (scheme {parts.scheme or 'missing'!r}, host "
            f"{parts.hostname or 'missing'!r}); expected clickhouse://user:password@host:8123/database "
            "(clickhouses:// for TLS), or unset for chDB under data_dir"
        )
    secure = _SCHEMES[parts.scheme]
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise errors.ConfigError(f"{SETTING}: the port of {parts.hostname} is not a number") from None
    database = parts.path.strip("/") or "default"
    kwargs = {
        "host": parts.hostname, "port": port, "secure": secure, "database": database,
        "username": unquote(parts.username) if parts.username else "default",
        "password": unquote(parts.password) if parts.password else "",
    }
    return kwargs, f"ClickHouse at {parts.hostname}:{port}/{database} ({SETTING})"


def _translate(exc: BaseException, where: str) -> errors.FlowForgeError:
    from clickhouse_connect.driver import exceptions as ch

    if isinstance(exc, errors.FlowForgeError):
        return exc
    message = _first_line(exc)
    if isinstance(exc, ch.OperationalError) or isinstance(exc, OSError):
        return errors.TemporaryError(
            f"{where} is unreachable: {message}. Check {SETTING} and that the server is up", delay=5.0,
        )
    if "Authentication failed" in message or "UNKNOWN_DATABASE" in message or "REQUIRED_PASSWORD" in message:
        return errors.ConfigError(f"{where}: {message}. Check the user, password and database in {SETTING}")
    return errors.PermanentError(f"{where}: {message}")
