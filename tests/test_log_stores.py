"""The LogStore contract, run on every store: Postgres, chDB (the production ClickHouse schema, in
process), and the clickhouse-connect executor on the same chDB engine. Then what is each store's
own: the ClickHouse table as system.tables shows it, Postgres retention under an injected clock,
ClickHouse's no-op purge, and the errors a bad `logging.clickhouse_url` gives."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowforge import errors, settings
from flowforge.backends.postgres import admin
from flowforge.logs import clickhouse, clickhouse_exec, model, postgres, retention, stores

DAY = 86_400.0
STORES = ["postgres", "chdb", "clickhouse-connect"]


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module: the stores' connection pools live on it."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="module")
def pg_store(runner: asyncio.Runner, database_url: str) -> Iterator[postgres.PostgresLogStore]:
    store = postgres.PostgresLogStore.connect(database_url)
    runner.run(store.start())
    yield store
    runner.run(store.close())


@pytest.fixture(scope="module")
def chdb_store(runner: asyncio.Runner, chdb_dir) -> Iterator[clickhouse.ClickHouseLogStore]:
    store = clickhouse.ClickHouseLogStore.embedded(chdb_dir, retention_days=14)
    runner.run(store.start())
    yield store
    runner.run(store.close())  # chDB holds one directory per process: let go of it for other modules


@pytest.fixture(scope="module")
def connect_store(runner: asyncio.Runner, chdb_dir, chdb_store) -> Iterator[clickhouse.ClickHouseLogStore]:
    """The clickhouse-connect executor (as against a server), here on the chDB engine that
    chdb_store opened, in a database of its own."""
    import clickhouse_connect

    dsn = f"chdb://{chdb_dir.resolve()}"
    admin = clickhouse_connect.get_client(dsn=dsn)
    admin.command("CREATE DATABASE IF NOT EXISTS ff_connect")
    admin.close()

    def open_executor() -> clickhouse_exec.Executor:
        return clickhouse_exec.ServerExecutor(clickhouse_connect.get_client(dsn=dsn, database="ff_connect"),
                                              "chDB through clickhouse-connect")

    store = clickhouse.ClickHouseLogStore(open_executor, retention_days=14)
    runner.run(store.start())
    yield store
    runner.run(store.close())


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> model.LogStore:
    return request.getfixturevalue({"postgres": "pg_store", "chdb": "chdb_store",
                                    "clickhouse-connect": "connect_store"}[request.param])


def _run_id() -> str:
    return str(uuid.uuid4())


def _lines(run_id: str, n: int, *, tenant: str = "acme", start: int = 1, task: str = "extract",
           attempt: int = 1, ts: float | None = None) -> list[model.LogLine]:
    t0 = time.time() if ts is None else ts
    return [model.LogLine(tenant, run_id, pos, task, attempt, t0 + pos / 1000, "stdout", f"line {pos}")
            for pos in range(start, start + n)]


def _same(got: list[model.LogLine], want: list[model.LogLine]) -> None:
    """Equal, with timestamps kept to the microsecond."""
    assert [(x.tenant, x.run_id, x.pos, x.task, x.attempt, x.stream, x.line) for x in got] == \
           [(x.tenant, x.run_id, x.pos, x.task, x.attempt, x.stream, x.line) for x in want]
    for g, w in zip(got, want):
        assert g.ts == pytest.approx(w.ts, abs=1e-6)


# ---- the contract ----------------------------------------------------------------------------


def test_lines_come_back_in_pos_order_whatever_the_write_order(runner, store):
    a, b = _run_id(), _run_id()
    mine, other = _lines(a, 50), _lines(b, 20, task="load")
    batch = mine + other
    random.Random(7).shuffle(batch)
    runner.run(store.write(batch[:30]))
    runner.run(store.write(batch[30:]))
    _same(runner.run(store.read("acme", a)), mine)
    _same(runner.run(store.read("acme", b)), other)


def test_after_and_limit_page_through_a_run(runner, store):
    run = _run_id()
    lines = _lines(run, 25)
    runner.run(store.write(lines))
    pages, after = [], 0
    while page := runner.run(store.read("acme", run, after=after, limit=10)):
        pages.append([x.pos for x in page])
        after = page[-1].pos
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    assert runner.run(store.read("acme", run, after=25)) == []
    assert runner.run(store.read("acme", run, limit=0)) == []


def test_task_and_attempt_filters(runner, store):
    run = _run_id()
    lines = [model.LogLine("acme", run, pos, task, attempt, time.time(), "stderr" if pos % 2 else "stdout",
                           f"{task}#{attempt} {pos}")
             for pos, (task, attempt) in enumerate(
                 [("a", 1), ("b", 1), ("a", 2), ("a", 1), ("b", 2), ("map[3]", 1), ("a", 2)], start=1)]
    runner.run(store.write(lines))
    assert [x.pos for x in runner.run(store.read("acme", run, task="a"))] == [1, 3, 4, 7]
    assert [x.pos for x in runner.run(store.read("acme", run, task="a", attempt=2))] == [3, 7]
    assert [x.pos for x in runner.run(store.read("acme", run, attempt=1))] == [1, 2, 4, 6]
    assert [x.pos for x in runner.run(store.read("acme", run, task="map[3]"))] == [6]
    assert [x.pos for x in runner.run(store.read("acme", run, task="a", after=3, limit=1))] == [4]
    assert runner.run(store.read("acme", run, task="zzz")) == []
    assert [x.stream for x in runner.run(store.read("acme", run, task="b"))] == ["stdout", "stderr"]


def test_another_tenant_reads_nothing(runner, store):
    run = _run_id()
    runner.run(store.write(_lines(run, 5, tenant="acme")))
    assert runner.run(store.read("globex", run)) == []
    assert runner.run(store.last_pos("globex", run)) == 0
    assert len(runner.run(store.read("acme", run))) == 5


def test_a_batch_written_again_is_kept_once(runner, store):
    run = _run_id()
    first = _lines(run, 100)
    runner.run(store.write(first))
    runner.run(store.write(first))  # the writer retried after a crash
    runner.run(store.write(first[50:] + _lines(run, 20, start=101)))  # overlapping, then new
    got = runner.run(store.read("acme", run, limit=1000))
    assert [x.pos for x in got] == list(range(1, 121))
    assert [x.pos for x in runner.run(store.read("acme", run, after=90, limit=5))] == [91, 92, 93, 94, 95]
    assert runner.run(store.last_pos("acme", run)) == 120


def test_last_pos(runner, store):
    run = _run_id()
    assert runner.run(store.last_pos("acme", run)) == 0
    runner.run(store.write(_lines(run, 3, start=5) + _lines(run, 2, start=1)))
    assert runner.run(store.last_pos("acme", run)) == 7


def test_unicode_control_and_long_lines_round_trip(runner, store):
    run = _run_id()
    texts = ["héllo wörld — ✓", "日本語のログ", "emoji 😀🚀", "tab\there, quote \" and backslash \\",
             "carriage\rreturn", "a], [b {x:String} '; DROP TABLE log_lines; --", "", " ", "\x1b[31mred\x1b[0m",
             "x" * 100_000, "ü" * 50_000]
    lines = [model.LogLine("acme", run, i, "t", 1, time.time(), "log", text) for i, text in enumerate(texts, 1)]
    runner.run(store.write(lines))
    _same(runner.run(store.read("acme", run)), lines)


def test_timestamps_round_trip_to_the_microsecond(runner, store):
    run = _run_id()
    stamps = [time.time() - 13 * DAY, time.time(), 4_102_444_800.000001]  # the last one in 2100
    lines = [model.LogLine("acme", run, i, "t", 1, ts, "stdout", str(ts)) for i, ts in enumerate(stamps, 1)]
    runner.run(store.write(lines))
    _same(runner.run(store.read("acme", run)), lines)


def test_lines_older_than_any_retention_are_accepted(runner, store):
    """Accepted, and either kept as they were (Postgres, until purged) or dropped by the TTL."""
    run = _run_id()
    stamps = [1.5, 86_400.25, 999_999_999.999999]
    lines = [model.LogLine("acme", run, i, "t", 1, ts, "stdout", str(ts)) for i, ts in enumerate(stamps, 1)]
    runner.run(store.write(lines))
    got = runner.run(store.read("acme", run))
    _same(got, [x for x in lines if x.pos in {g.pos for g in got}])


def test_text_no_database_holds_is_made_storable(runner, store):
    """NUL and lone surrogates (agents clean them already) do not poison a batch."""
    run = _run_id()
    lines = _lines(run, 3)
    lines[1] = model.LogLine("acme", run, 2, "extract", 1, lines[1].ts, "stdout", "nul\x00here")
    lines[2] = model.LogLine("acme", run, 3, "extract", 1, lines[2].ts, "stdout", "half \ud800 pair")
    runner.run(store.write(lines))
    assert [x.line for x in runner.run(store.read("acme", run))] == ["line 1", "nul\ufffdhere", "half ? pair"]


def test_a_10k_line_batch(runner, store):
    run = _run_id()
    lines = [model.LogLine("acme", run, pos, f"map[{pos % 17}]", 1 + pos % 3, time.time(), "stdout",
                           f"{pos:08d} " + "lorem ipsum " * (pos % 20)) for pos in range(1, 10_001)]
    random.Random(3).shuffle(lines)
    runner.run(store.write(lines))
    assert runner.run(store.last_pos("acme", run)) == 10_000
    seen, after = [], 0
    while page := runner.run(store.read("acme", run, after=after, limit=1000)):
        seen.extend(page)
        after = page[-1].pos
    assert [x.pos for x in seen] == list(range(1, 10_001))
    assert seen[4_999].line == "00005000 "
    assert [x.pos for x in runner.run(store.read("acme", run, task="map[16]", attempt=3, limit=3))] == [50, 101, 152]


def test_nothing_to_write_and_ids_that_cannot_exist(runner, store):
    runner.run(store.write([]))
    assert runner.run(store.read("acme", "not-a-uuid")) == []
    assert runner.run(store.last_pos("acme", "not-a-uuid")) == 0


# ---- ClickHouse: the table as the engine sees it ---------------------------------------------


def _table(store: clickhouse.ClickHouseLogStore) -> dict:
    row = store._ex.rows(  # noqa: SLF001 - the test reads the engine's own catalogue
        "SELECT engine, partition_key, sorting_key, primary_key, engine_full, create_table_query "
        "FROM system.tables WHERE database = currentDatabase() AND name = 'log_lines'")[0]
    return dict(zip(("engine", "partition_key", "sorting_key", "primary_key", "engine_full", "create"), row))


def test_chdb_table_is_the_production_schema(chdb_store):
    t = _table(chdb_store)
    assert t["engine"] == "MergeTree"
    assert t["partition_key"] == "toDate(ts)"
    assert t["sorting_key"] == t["primary_key"] == "tenant_id, run_id, task_key, attempt, ts"
    for text in (t["engine_full"], t["create"]):
        assert "TTL toDateTime(ts) + toIntervalDay(14)" in text
    assert "DateTime64(6, \\'UTC\\')" in t["create"] or "DateTime64(6, 'UTC')" in t["create"]
    assert "INDEX pos_minmax pos TYPE minmax GRANULARITY 1" in t["create"]


def test_chdb_ttl_follows_retention_days(runner, chdb_store, chdb_dir):
    for days in (30, 14):  # a restart with another retention_days alters the table; then back
        again = clickhouse.ClickHouseLogStore.embedded(chdb_dir, retention_days=days)
        runner.run(again.start())
        try:
            assert f"TTL toDateTime(ts) + toIntervalDay({days})" in _table(again)["engine_full"]
        finally:
            runner.run(again.close())


def test_clickhouse_purge_deletes_nothing(runner, chdb_store):
    run = _run_id()
    runner.run(chdb_store.write(_lines(run, 10, ts=time.time() - 3 * DAY)))
    worker = retention.RetentionWorker(chdb_store, days=1, clock=FakeClock(time.time()), batch=3)
    assert runner.run(worker.run_once()) == 0
    assert runner.run(chdb_store.last_pos("acme", run)) == 10


def test_one_chdb_directory_per_process(chdb_store, tmp_path):
    with pytest.raises(errors.ConfigError, match="one data directory per process"):
        clickhouse_exec.ChdbExecutor(tmp_path / "elsewhere")


def test_a_chdb_directory_another_process_holds(tmp_path):
    """(Both sides in processes of their own: this one already holds a chDB directory.)"""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from chdb import session; s = session.Session(sys.argv[1]); "
         "print('open', flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        probe = subprocess.run(
            [sys.executable, "-c", "import sys, pathlib; from flowforge.logs import clickhouse_exec as x\n"
             "try: x.ChdbExecutor(pathlib.Path(sys.argv[1]))\nexcept Exception as e: print(type(e).__name__, e)",
             str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    finally:
        holder.communicate("", timeout=30)
    assert probe.stdout.startswith("ConfigError"), probe.stdout + probe.stderr
    assert "another process has this directory open" in probe.stdout and "logging.clickhouse_url" in probe.stdout


# ---- Postgres retention ----------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


class CountingStore:
    """Records how many lines each purge call deleted."""

    def __init__(self, inner: model.LogStore) -> None:
        self.inner = inner
        self.calls: list[tuple[int, int]] = []

    async def purge(self, older_than: float, batch: int = 10_000) -> int:
        gone = await self.inner.purge(older_than, batch)
        self.calls.append((batch, gone))
        return gone


@pytest.fixture()
def own_pg_store(runner: asyncio.Runner, pg_server_url: str) -> Iterator[postgres.PostgresLogStore]:
    """A database of its own: purging is not scoped, and other tests write old lines too."""
    name = f"ff_test_logs_{uuid.uuid4().hex[:8]}"
    store = postgres.PostgresLogStore.connect(admin.create_database(pg_server_url, name))
    try:
        runner.run(store.start())
        yield store
    finally:
        runner.run(store.close())
        admin.drop_database(pg_server_url, name)


def test_postgres_retention_deletes_old_lines_in_bounded_batches(runner, own_pg_store):
    pg_store, now = own_pg_store, time.time()
    old, fresh = _run_id(), _run_id()
    runner.run(pg_store.write(_lines(old, 30, ts=now - 20 * DAY) + _lines(fresh, 5, ts=now - 1 * DAY)))
    counted = CountingStore(pg_store)
    clock = FakeClock(now)
    worker = retention.RetentionWorker(counted, days=14, clock=clock, batch=7)
    assert runner.run(worker.run_once()) == 30
    assert counted.calls == [(7, 7)] * 4 + [(7, 2), (7, 0)]
    assert runner.run(pg_store.read("acme", old)) == []
    assert len(runner.run(pg_store.read("acme", fresh))) == 5

    clock.t = now + 10 * DAY  # the fresh lines are 11 days old: kept
    assert runner.run(worker.run_once()) == 0
    clock.t = now + 14 * DAY  # 15 days old: gone
    assert runner.run(worker.run_once()) == 5
    assert runner.run(pg_store.last_pos("acme", fresh)) == 0


def test_retention_worker_stops_on_request(runner, pg_store):
    async def go() -> None:
        worker = retention.RetentionWorker(pg_store, days=14, clock=FakeClock(time.time()), every_s=3600)
        worker.start()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(worker.stop(), 5)

    runner.run(go())


# ---- configuration ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_clickhouse_server_names_the_setting(runner):
    store = clickhouse.ClickHouseLogStore.server(
        f"clickhouse://flowforge:s3cret@127.0.0.1:{_free_port()}/logs", retention_days=14)
    try:
        with pytest.raises(errors.TemporaryError) as caught:
            runner.run(store.start())
    finally:
        runner.run(store.close())
    message = str(caught.value)
    assert "logging.clickhouse_url" in message and "127.0.0.1" in message and "/logs" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("url", ["postgresql://db:5432/x", "clickhouse:///nohost", "localhost:8123",
                                 "clickhouse://h:port/db"])
def test_a_malformed_clickhouse_url_is_a_config_error(url):
    with pytest.raises(errors.ConfigError, match="logging.clickhouse_url"):
        clickhouse.ClickHouseLogStore.server(url, retention_days=14)


def test_clickhouse_url_forms():
    kwargs, where = clickhouse_exec.parse_url("clickhouses://ops%40acme:p%2Fw@ch.example:9440/flow")
    assert kwargs == {"host": "ch.example", "port": 9440, "secure": True, "database": "flow",
                      "username": "ops@acme", "password": "p/w"}
    assert "p/w" not in where
    kwargs, _ = clickhouse_exec.parse_url("http://ch")
    assert (kwargs["port"], kwargs["secure"], kwargs["database"], kwargs["username"]) == \
           (8123, False, "default", "default")


def test_open_log_store_follows_the_settings(runner, tmp_path, database_url):
    pg = stores.open_log_store(settings.Settings(data_dir=tmp_path), database_url=database_url)
    assert isinstance(pg, postgres.PostgresLogStore)
    runner.run(pg.close())
    with pytest.raises(errors.ConfigError, match="database.url"):
        stores.open_log_store(settings.Settings(data_dir=tmp_path))
    server = stores.open_log_store(settings.Settings(
        data_dir=tmp_path, logging={"storage_driver": "clickhouse", "clickhouse_url": "clickhouse://ch:8123/db",
                                    "retention_days": 3}))
    assert isinstance(server, clickhouse.ClickHouseLogStore) and server.retention_days == 3
    runner.run(server.close())
    embedded = stores.open_log_store(settings.Settings(data_dir=tmp_path, logging={"storage_driver": "clickhouse"}))
    assert isinstance(embedded, clickhouse.ClickHouseLogStore)  # not started: chDB opens its directory then
    runner.run(embedded.close())
