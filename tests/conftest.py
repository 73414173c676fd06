"""Shared fixtures: real Postgres and Redis (this machine's, or embedded servers when absent),
one local Ray per session, and one running FlowForge stack for the end-to-end tests."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from flowforge import embedded, settings
from flowforge.backends.postgres import admin
from flowforge.runtime import BackgroundStack, Services

ROOT = Path(__file__).resolve().parent.parent

# Property tests check what happens, never how fast: the machine is shared and noisy, so no
# per-example deadline (speed is measured by the benchmarks in bench/).
hypothesis_settings.register_profile("flowforge", deadline=None)
hypothesis_settings.load_profile("flowforge")
TERMINAL = {"succeeded", "failed", "cancelled"}


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _use_embedded() -> bool:
    return embedded.env_flag("FLOWFORGE_TEST_EMBEDDED")


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres server URL (admin database): configured, local, or embedded."""
    url = os.environ.get("FLOWFORGE_TEST_DATABASE_URL")
    if url and not _use_embedded():
        yield url
        return
    if not _use_embedded() and _reachable("127.0.0.1", 5432):
        yield "postgresql://127.0.0.1:5432/test"
        return
    svc = embedded.start_postgres(tmp_path_factory.mktemp("pg"), keep=False)
    try:
        yield svc.url.replace("postgresql+psycopg://", "postgresql://", 1)
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    name = f"ff_test_{uuid.uuid4().hex[:10]}"
    url = admin.create_database(pg_server_url, name)
    try:
        yield url
    finally:
        admin.drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("FLOWFORGE_TEST_REDIS_URL")
    if url and not _use_embedded():
        yield url
        return
    if not _use_embedded() and _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/13"  # a database of our own on the shared server
        return
    svc = embedded.start_redis(tmp_path_factory.mktemp("redis"), persist=False)
    try:
        yield svc.url
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pool-config")
    (d / "default.yaml").write_text(
        "name: default\nagents_per_node: 2\nslots_per_agent: 8\n"
        "allowed_functions: ['tests.*', 'examples.*']\nprewarm: ['tests.tasks']\n"
    )
    # Agents recycled after 3 attempts (tests/test_pools.py).
    (d / "recycled.yaml").write_text(
        "name: recycled\nagents_per_node: 1\nmax_agents: 1\nslots_per_agent: 1\nmax_tasks_per_agent: 3\n"
        "allowed_functions: ['tests.*']\n"
    )
    return d


@pytest.fixture(scope="session")
def stack_settings(database_url: str, redis_url: str, pool_dir: Path, tmp_path_factory) -> settings.Settings:
    return settings.Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database={"url": database_url},
        redis={"url": redis_url},
        ray={"num_cpus": 2},
        api={"port": 0, "rate_limit": 100_000, "rate_burst": 100_000},  # the rate limit has its own test
        agents={"pool_config_dir": pool_dir, "lease": timedelta(seconds=2), "max_deliveries": 3,
                "heartbeat_timeout": timedelta(seconds=3)},
        coordinator={
            "reconcile_interval": timedelta(seconds=1),
            "redispatch_after": timedelta(seconds=2),
            "cancel_grace": timedelta(seconds=3),
            "deadline_grace": timedelta(seconds=3),
            "block": timedelta(milliseconds=200),
        },
    )


@pytest.fixture(scope="session")
def stack(stack_settings: settings.Settings, redis_url: str) -> Iterator[BackgroundStack]:
    import redis as redis_sync

    redis_sync.Redis.from_url(redis_url).flushdb()
    os.chdir(ROOT)  # agents import test task modules relative to the repository root
    bg = BackgroundStack(stack_settings, Services(stack_settings.database.url, redis_url), with_api=True).start()
    try:
        yield bg
    finally:
        bg.stop()


def alive(pid: int) -> bool:
    """Whether process `pid` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Client:
    """Blocking helpers over a running stack, as a test would use FlowForge."""

    def __init__(self, bg: BackgroundStack) -> None:
        self.bg = bg

    def submit(self, dag, params=None) -> str:
        return self.bg.call(self.bg.stack.submitter.submit(dag, params))

    def cancel(self, run_id: str) -> None:
        self.bg.call(self.bg.stack.submitter.cancel(run_id))

    def retry(self, run_id: str) -> None:
        self.bg.call(self.bg.stack.submitter.retry(run_id))

    def get(self, run_id: str) -> dict:
        run = self.bg.call(self.bg.stack.catalog.get_run(run_id, "default"))
        assert run is not None, run_id
        return run

    def wait(self, run_id: str, timeout: float = 60, until=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(run_id)
            if (until(run) if until else run["status"] in TERMINAL):
                return run
            if time.monotonic() > deadline:
                states = {t["key"]: t["status"] for t in run["tasks"][:20]}
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s: {states}")
            time.sleep(0.05)

    @staticmethod
    def task(run: dict, key: str) -> dict:
        return next(t for t in run["tasks"] if t["key"] == key)


@pytest.fixture(scope="session")
def client(stack: BackgroundStack) -> Client:
    bg = stack
    bg.call(bg.stack.catalog.ensure_tenant("default"))
    return Client(bg)


class Api:
    """The REST API of the session's stack, over real HTTP, as one tenant's token sees it."""

    def __init__(self, base_url: str, token: str) -> None:
        import httpx

        self.base_url = base_url
        self.token = token
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def __getattr__(self, name: str):  # get, post, put, delete, request
        return getattr(self.http, name)

    def wait(self, run_id: str, timeout: float = 60, until=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.http.get(f"/api/v1/runs/{run_id}")
            assert r.status_code == 200, r.text
            run = r.json()
            if until(run) if until else run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def api(stack: BackgroundStack, client: Client) -> Api:
    token = stack.call(stack.stack.catalog.create_token("default", "tests"))
    return Api(stack.stack.api.url, token)


@pytest.fixture(scope="session")
def other_api(stack: BackgroundStack) -> Api:
    token = stack.call(stack.stack.catalog.create_token("other-tenant", "tests"))
    return Api(stack.stack.api.url, token)
