"""Two coordinators splitting the partitions, as replicas of the coordinator StatefulSet do:
together they hold a tenant to its quota and fill a pool's slots once, through the board."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis as redis_sync
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from flowforge import keys, settings
from flowforge.backends.postgres import admin
from flowforge.runtime import BackgroundStack, Services

PARTITIONS = 2


@pytest.fixture(scope="module")
def pair(pg_server_url, redis_url, tmp_path_factory) -> Iterator[tuple[BackgroundStack, BackgroundStack, str]]:
    """Coordinators owning partition 0 and 1 of one deployment (no agents: light attempts are
    dispatched and stay in their streams; heavy ones run as local processes)."""
    db_url = admin.create_database(pg_server_url, f"ff_pair_{uuid.uuid4().hex[:8]}")
    redis = re.sub(r"/\d+$", "", redis_url) + "/9"
    redis_sync.Redis.from_url(redis).flushdb()
    pool_dir = tmp_path_factory.mktemp("pair-pools")
    (pool_dir / "default.yaml").write_text("name: default\nallowed_functions: ['tests.*']\n")
    (pool_dir / "narrow.yaml").write_text("name: narrow\nmax_agents: 2\nslots_per_agent: 4\nallowed_functions: ['tests.*']\n")
    stacks = []
    try:
        for owned in ([0], [1]):
            cfg = settings.Settings(
                data_dir=tmp_path_factory.mktemp("pair"),
                database={"url": db_url},
                redis={"url": redis},
                agents={"pool_config_dir": pool_dir},
                pods={"max_concurrent": 8},
                coordinator={"partitions": PARTITIONS, "owned_partitions": owned, "block": timedelta(milliseconds=200),
                             "reconcile_interval": timedelta(seconds=1)},
            )
            stacks.append(BackgroundStack(cfg, Services(db_url, redis), with_agents=False).start())
        yield stacks[0], stacks[1], db_url
    finally:
        for bg in stacks:
            bg.stop()
        admin.drop_database(pg_server_url, db_url.rsplit("/", 1)[1])


def _submit_across_partitions(bg: BackgroundStack, dag: dict, tenant: str, n: int) -> list[str]:
    """`n` runs at least, until both partitions have a third of them."""
    runs: list[str] = []
    while len(runs) < n or min(sum(1 for r in runs if keys.partition_of(r, PARTITIONS) == p)
                               for p in range(PARTITIONS)) < n // 3:
        runs.append(bg.call(bg.stack.submitter.submit(dag, {}, tenant=tenant)))
    return runs


def test_two_coordinators_hold_a_tenant_to_its_quota_together(pair):
    one, two, db_url = pair
    one.call(one.stack.catalog.ensure_tenant("shared"))
    one.call(one.stack.catalog.set_tenant_limits("shared", 2, 1.0))
    time.sleep(1.5)  # each coordinator follows the limits within a second
    dag = {"name": "held", "tasks": [{"name": "h", "fn": "tests.tasks:nap", "args": [0.5], "executor": "heavy"}]}
    runs = _submit_across_partitions(one, dag, "shared", 8)
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    most, deadline = 0, time.monotonic() + 120
    try:
        with engine.connect() as conn:
            while True:
                in_flight = conn.execute(text(
                    "SELECT count(*) FROM attempts WHERE tenant_id = 'shared' AND dispatched_at IS NOT NULL"
                    " AND finished_at IS NULL")).scalar_one()
                most = max(most, in_flight)
                ended = dict(conn.execute(text(
                    "SELECT status, count(*) FROM runs WHERE tenant_id = 'shared' GROUP BY status")).all())
                conn.commit()
                done = ended.get("succeeded", 0)
                assert set(ended) <= {"pending", "running", "succeeded"}, ended
                if done == len(runs):
                    break
                assert time.monotonic() < deadline, f"{done} of {len(runs)} runs succeeded"
                time.sleep(0.01)
    finally:
        engine.dispose()
    assert most == 2  # never more, across both coordinators; and the quota was used
    # Both coordinators dispatched under the quota, each claiming on the board first; their
    # metrics say so, and that they see each other.
    for bg in (one, two):
        families = {f.name: f for f in text_string_to_metric_families(
            generate_latest(bg.stack.metrics.registry).decode())}
        assert families["flowforge_coordinators"].samples[0].value == 2
        claims = {s.labels["outcome"]: s.value for s in families["flowforge_board_claims"].samples
                  if s.name.endswith("_total")}
        assert claims["stored"] > 0, claims


def test_two_coordinators_fill_a_pools_slots_and_prefetch_once(pair):
    one, two, _ = pair
    free = one.stack.coordinator.scheduler.free("narrow")  # slots + prefetch of the idle pool
    assert free == 16
    dag = {"name": "wide", "tasks": [{"name": "t", "fn": "tests.tasks:noop", "pool": "narrow"}]}
    one.call(one.stack.catalog.ensure_tenant("wide"))
    runs = _submit_across_partitions(one, dag, "wide", 2 * free + 6)
    r = redis_sync.Redis.from_url(one.stack.services.redis_url)
    try:
        deadline = time.monotonic() + 30
        while sum(r.xlen(keys.pool_stream(p, "narrow")) for p in range(PARTITIONS)) < free:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # several exchanges and cycles later: no more than the pool takes
        depths = [r.xlen(keys.pool_stream(p, "narrow")) for p in range(PARTITIONS)]
        assert sum(depths) == free, depths
        assert min(depths) > 0, depths  # both coordinators dispatch, into one budget
        # Each sees what waits on both, as the pool manager sizing the pool must.
        for bg in (one, two):
            s = bg.stack.coordinator.scheduler
            assert s.backlog("narrow") < len(runs) - free == s.backlog_everywhere("narrow")
    finally:
        for run in runs:
            one.call(one.stack.submitter.cancel(run, tenant="wide"))
        r.close()
