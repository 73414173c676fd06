"""Bad results, bad events and bad commands: each fails clearly and nothing stalls."""

from __future__ import annotations

import pytest
import redis

from flowforge import errors, keys, wire


def test_results_postgres_cannot_store_fail_the_attempt_clearly(client):
    run = client.wait(client.submit({"name": "unstorable", "tasks": [
        {"name": "nan", "fn": "tests.tasks:not_a_number"},
        {"name": "nul", "fn": "tests.tasks:nul_output"},
        {"name": "printed", "fn": "tests.tasks:nul_print"},
        {"name": "flood", "fn": "tests.tasks:flood", "args": [3000, 1000]},
    ]}))
    assert run["status"] == "failed"
    nan = client.task(run, "nan")
    assert nan["status"] == "failed" and "not JSON-serialisable" in nan["error"]
    assert nan["attempts"][0]["reason"] == "rejected"
    nul = client.task(run, "nul")
    assert nul["status"] == "failed" and "NUL character" in nul["error"]
    printed = client.task(run, "printed")
    assert printed["status"] == "succeeded"
    assert [line[2] for line in printed["attempts"][0]["logs"]] == ["a\ufffdb"]
    flood = client.task(run, "flood")
    assert flood["status"] == "succeeded"
    logs = flood["attempts"][0]["logs"]
    assert sum(len(line[2]) for line in logs) <= (1 << 20) + 2000  # the per-attempt byte cap
    assert "more lines dropped" in logs[-1][2]


def test_an_event_postgres_rejects_fails_its_attempt_and_the_partition_moves_on(client, redis_url):
    run_id = client.submit({"name": "poison-event", "tasks": [
        {"name": "slow", "fn": "tests.tasks:spin", "args": [3]},
    ]})
    client.wait(run_id, until=lambda r: client.task(r, "slow")["status"] == "running")
    # A forged result whose output Postgres refuses (NUL in JSON text), bypassing the agent.
    redis.Redis.from_url(redis_url).xadd(keys.events(keys.partition_of(run_id, 1)), {
        keys.ENTRY_FIELD: wire.pack(wire.ATTEMPT_FINISHED, run=run_id, task="slow", attempt=1, ok=True,
                                    output="bad\x00output", tenant="default")})
    run = client.wait(run_id, timeout=30)
    slow = client.task(run, "slow")
    assert run["status"] == "failed"
    assert "the attempt's result could not be stored" in slow["error"]
    marker = client.wait(client.submit({"name": "marker", "tasks": [{"name": "m", "fn": "tests.tasks:noop"}]}))
    assert marker["status"] == "succeeded"


def test_run_retry_gives_failed_tasks_a_fresh_retry_budget(client):
    run_id = client.submit({"name": "budget", "tasks": [
        {"name": "f", "fn": "tests.tasks:boom", "retries": {"limit": 1, "base_seconds": 0.05, "jitter": 0}},
    ]})
    run = client.wait(run_id)
    assert [a["number"] for a in client.task(run, "f")["attempts"]] == [1, 2]
    client.retry(run_id)
    run = client.wait(run_id, until=lambda r: r["status"] == "failed" and len(client.task(r, "f")["attempts"]) >= 4)
    assert [a["number"] for a in client.task(run, "f")["attempts"]] == [1, 2, 3, 4]


def test_run_commands_are_checked_against_tenant_and_status(client):
    submitter = client.bg.stack.submitter
    run_id = client.submit({"name": "done", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]})
    assert client.wait(run_id)["status"] == "succeeded"
    with pytest.raises(errors.Conflict, match="is succeeded"):
        client.cancel(run_id)
    with pytest.raises(errors.Conflict, match="failed or cancelled"):
        client.retry(run_id)
    for tenant, rid in (("someone-else", run_id), ("default", "00000000-0000-0000-0000-000000000000"),
                        ("default", "not-a-uuid")):
        with pytest.raises(errors.NotFound):
            client.bg.call(submitter.cancel(rid, tenant=tenant))
    assert client.get(run_id)["cancel_requested"] is False


def test_tasks_that_could_never_run_are_refused_at_submission():
    from flowforge.domain import validation
    from flowforge.engine.submission import Submitter

    sub = Submitter(None, None, None, partitions=1, pools={"default": 8, "empty": 0})  # type: ignore[arg-type]
    dag = {"name": "never", "tasks": [
        {"name": "big", "fn": "m:f", "executor": "heavy"},
        {"name": "idle", "fn": "m:f", "pool": "empty"},
        {"name": "lost", "fn": "m:f", "executor": "auto", "pool": "nowhere"},
        {"name": "fine", "fn": "m:f"},
    ]}
    with pytest.raises(validation.SpecError) as info:
        sub.validate(dag)
    got = {p.path: p.message for p in info.value.problems}
    assert set(got) == {"tasks[0].executor", "tasks[1].pool", "tasks[2].executor"}
    assert "Pod runtime" in got["tasks[0].executor"]
    assert "has no agents" in got["tasks[1].pool"]
    # `auto` sends a task whose pool does not exist to a Pod: refused only without a Pod runtime.
    assert "pool 'nowhere' does not exist" in got["tasks[2].executor"]
    with_pods = Submitter(None, None, None, partitions=1, pools={"default": 8, "empty": 0},  # type: ignore[arg-type]
                          heavy=True)
    with pytest.raises(validation.SpecError) as info:
        with_pods.validate(dag)
    assert {p.path for p in info.value.problems} == {"tasks[1].pool"}  # an explicit light pool stays checked
