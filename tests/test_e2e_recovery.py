"""End-to-end recovery: a killed agent, a flushed Redis, duplicated events."""

from __future__ import annotations

import time

import os
import signal

import redis

from flowforge import keys, wire


def _agent_pid(client, agent_name: str) -> int:
    return client.bg.call(client.bg.stack.manager.pids())[agent_name]


def test_agent_killed_mid_task_is_reclaimed_and_run_succeeds(client, tmp_path):
    marker = str(tmp_path / "marker")
    dag = {"name": "survive-kill", "tasks": [
        {"name": "victim", "fn": "tests.tasks:slow_once", "args": [marker, 30]},
        {"name": "after", "fn": "tests.tasks:const", "args": ["{{ tasks.victim.output }}"], "depends": ["victim"]},
    ]}
    run_id = client.submit(dag)
    run = client.wait(run_id, until=lambda r: client.task(r, "victim")["status"] == "running")
    agent = client.task(run, "victim")["attempts"][0]["agent"]
    restarts = client.bg.stack.manager.restarts
    os.kill(_agent_pid(client, agent), signal.SIGKILL)
    run = client.wait(run_id, timeout=60)
    assert run["status"] == "succeeded", run
    victim = client.task(run, "victim")
    # Same attempt, taken over by another agent after the lease: no retry budget spent.
    assert [a["number"] for a in victim["attempts"]] == [1]
    assert victim["attempts"][0]["agent"] != agent
    assert client.task(run, "after")["output"] == "done"
    client.wait(run_id, until=lambda r: client.bg.stack.manager.restarts > restarts, timeout=30)


def test_redis_flushed_mid_run_still_completes(client, redis_url):
    dag = {"name": "survive-flush", "tasks": [
        {"name": "first", "fn": "tests.tasks:spin", "args": [1.5]},
        {"name": "second", "fn": "tests.tasks:const", "args": ["{{ tasks.first.output }}"], "depends": ["first"]},
        {"name": "third", "fn": "tests.tasks:spin", "args": [0.2], "depends": ["second"]},
    ]}
    run_id = client.submit(dag)
    client.wait(run_id, until=lambda r: client.task(r, "first")["status"] == "running")
    redis.Redis.from_url(redis_url).flushdb()  # every stream, group and pending entry is gone
    run = client.wait(run_id, timeout=60)
    assert run["status"] == "succeeded", run
    assert client.task(run, "second")["output"] == "finished"


def test_submitted_while_redis_lost_the_event_still_runs(client, redis_url):
    """The run_created event never reaches Redis: the reconciler adopts the run from Postgres."""
    stack = client.bg.stack
    run_id = client.submit({"name": "lost-event", "tasks": [{"name": "a", "fn": "tests.tasks:const", "args": [1]}]})
    r = redis.Redis.from_url(redis_url)
    r.delete(keys.events(0))  # lose it (and anything else queued) before or after it was read
    run = client.wait(run_id, timeout=30)
    assert run["status"] == "succeeded"
    assert stack.reconciler.sweeps > 0


def test_duplicated_result_event_changes_nothing(client, redis_url):
    run_id = client.submit({"name": "dup", "tasks": [
        {"name": "a", "fn": "tests.tasks:const", "args": [1]},
        {"name": "b", "fn": "tests.tasks:add", "args": ["{{ tasks.a.output }}", 1], "depends": ["a"]},
    ]})
    before = client.wait(run_id)
    assert before["status"] == "succeeded"
    r = redis.Redis.from_url(redis_url)
    partition = keys.partition_of(run_id, 1)
    # Replay a stale success (different output) and a stale failure for finished attempts.
    for ok, output in ((True, 999), (False, None)):
        r.xadd(keys.events(partition), {keys.ENTRY_FIELD: wire.pack(
            wire.ATTEMPT_FINISHED, run=run_id, task="a", attempt=1, ok=ok, output=output,
            error=None if ok else "late failure", tenant="default")})
    r.xadd(keys.events(partition), {keys.ENTRY_FIELD: wire.pack(wire.RUN_CREATED, run=run_id, tenant="default")})
    # A marker run proves the coordinator has read past the duplicates.
    marker = client.wait(client.submit({"name": "marker", "tasks": [{"name": "m", "fn": "tests.tasks:noop"}]}))
    assert marker["status"] == "succeeded"
    after = client.get(run_id)
    strip = lambda run: [(t["key"], t["status"], t["output"], t["attempt"], len(t["attempts"])) for t in run["tasks"]]  # noqa: E731
    assert strip(after) == strip(before)
    assert after["status"] == "succeeded" and after["finished_at"] == before["finished_at"]


def test_retry_failed_run_reruns_failed_tasks_as_new_attempts(client, tmp_path):
    marker = tmp_path / "fixed"
    dag = {"name": "retry-run", "tasks": [
        {"name": "ok", "fn": "tests.tasks:const", "args": [1]},
        {"name": "bad", "fn": "tests.tasks:flaky", "args": [2], "depends": ["ok"]},
        {"name": "child", "fn": "tests.tasks:noop", "depends": ["bad"]},
    ]}
    run_id = client.submit(dag)
    run = client.wait(run_id)
    assert run["status"] == "failed"
    assert client.task(run, "child")["status"] == "upstream_failed"
    client.retry(run_id)
    run = client.wait(run_id, until=lambda r: r["status"] == "succeeded", timeout=30)
    bad = client.task(run, "bad")
    assert [a["status"] for a in bad["attempts"]] == ["failed", "succeeded"]
    assert len(client.task(run, "ok")["attempts"]) == 1  # succeeded tasks are not re-run
    assert client.task(run, "child")["status"] == "succeeded"


def test_poison_task_is_dead_lettered_after_max_deliveries(client, redis_url):
    run_id = client.submit({"name": "poison", "tasks": [{"name": "p", "fn": "tests.tasks:crash_agent"}]})
    run = client.wait(run_id, timeout=90)
    assert run["status"] == "failed"
    p = client.task(run, "p")
    assert [a["reason"] for a in p["attempts"]] == ["dead_letter"]
    assert "delivered 4 times without a result (max_deliveries=3)" in p["error"]
    r = redis.Redis.from_url(redis_url)
    dead = r.xrange(keys.dead_letter(keys.partition_of(run_id, 1), "default"))
    assert any(wire.unpack(fields[keys.ENTRY_FIELD])["run"] == run_id for _, fields in dead)


def test_agents_run_attempts_concurrently_in_slots(client):
    # Both agents ready first: an earlier test may have just replaced one it killed.
    view = lambda: client.bg.stack.manager.status()["default"]  # noqa: E731
    deadline = time.monotonic() + 60
    while not (view()["ready"] >= 2 and not view()["starting"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    n = 12
    run = client.wait(client.submit({"name": "slots", "tasks": [
        {"name": f"n{i}", "fn": "tests.tasks:nap", "args": [0.4]} for i in range(n)]}), timeout=60)
    assert run["status"] == "succeeded"
    spans = [(a["started_at"], a["finished_at"]) for t in run["tasks"] for a in t["attempts"]]
    # The largest number of attempts running at the same moment.
    edges = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak >= 8, peak  # 2 agents x 8 slots: most of the 12 overlap
    assert len({a["agent"] for t in run["tasks"] for a in t["attempts"]}) == 2
