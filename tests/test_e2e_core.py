"""End-to-end: DAGs run on warm Ray agents through real Postgres and Redis."""

from __future__ import annotations


def diamond() -> dict:
    return {
        "name": "diamond",
        "params": {"x": 5},
        "tasks": [
            {"name": "a", "fn": "tests.tasks:const", "args": ["{{ params.x }}"]},
            {"name": "b", "fn": "tests.tasks:double", "args": ["{{ tasks.a.output }}"], "depends": ["a"]},
            {"name": "c", "fn": "tests.tasks:add", "args": {"a": "{{ tasks.a.output }}", "b": 1}, "depends": ["a"]},
            {"name": "d", "fn": "tests.tasks:add", "args": ["{{ tasks.b.output }}", "{{ tasks.c.output }}"],
             "depends": ["b", "c"]},
        ],
    }


def test_diamond_passes_outputs(client):
    run_id = client.submit(diamond(), {"x": 7})
    run = client.wait(run_id)
    assert run["status"] == "succeeded", run
    outputs = {t["key"]: t["output"] for t in run["tasks"]}
    assert outputs == {"a": 7, "b": 14, "c": 8, "d": 22}
    for t in run["tasks"]:
        assert t["attempt"] == 1
        assert [a["status"] for a in t["attempts"]] == ["succeeded"]
        assert t["attempts"][0]["agent"]
        assert t["started_at"] <= t["finished_at"]


def test_when_true_false_and_skip_propagation(client):
    dag = {
        "name": "branches",
        "params": {"env": "prod"},
        "tasks": [
            {"name": "check", "fn": "tests.tasks:const", "args": [{"ok": True, "n": 3}]},
            {"name": "yes", "fn": "tests.tasks:const", "args": ["ran"], "depends": ["check"],
             "when": "tasks.check.output.ok == true and params.env == 'prod'"},
            {"name": "no", "fn": "tests.tasks:const", "args": ["ran"], "depends": ["check"],
             "when": "tasks.check.output.n > 10"},
            {"name": "after_no", "fn": "tests.tasks:noop", "depends": ["no"]},
            {"name": "after_after", "fn": "tests.tasks:noop", "depends": ["after_no", "yes"]},
            {"name": "after_yes", "fn": "tests.tasks:const", "args": ["{{ tasks.yes.output }}"], "depends": ["yes"]},
        ],
    }
    run = client.wait(client.submit(dag))
    status = {t["key"]: t["status"] for t in run["tasks"]}
    assert status == {
        "check": "succeeded", "yes": "succeeded", "no": "skipped", "after_no": "skipped",
        "after_after": "skipped", "after_yes": "succeeded",
    }
    assert run["status"] == "succeeded"
    assert client.task(run, "after_yes")["output"] == "ran"
    assert client.task(run, "no")["attempts"] == []  # a skipped task never ran
    assert "when was false" in client.task(run, "no")["error"]


def test_failure_propagates_upstream_failed(client):
    dag = {
        "name": "fails",
        "tasks": [
            {"name": "bad", "fn": "tests.tasks:boom"},
            {"name": "child", "fn": "tests.tasks:noop", "depends": ["bad"]},
            {"name": "grandchild", "fn": "tests.tasks:noop", "depends": ["child"]},
            {"name": "independent", "fn": "tests.tasks:noop"},
        ],
    }
    run = client.wait(client.submit(dag))
    assert run["status"] == "failed"
    status = {t["key"]: t["status"] for t in run["tasks"]}
    assert status == {"bad": "failed", "child": "upstream_failed", "grandchild": "upstream_failed",
                      "independent": "succeeded"}
    bad = client.task(run, "bad")
    assert "ValueError: boom" in bad["error"] and "Traceback" in bad["error"]
    assert "task 'bad'" in run["error"]


def test_flaky_task_succeeds_on_third_attempt_with_growing_delays(client):
    dag = {
        "name": "flaky",
        "tasks": [{"name": "f", "fn": "tests.tasks:flaky", "args": [3],
                   "retries": {"limit": 4, "backoff": "exponential", "base_seconds": 0.3, "factor": 3,
                               "jitter": 0}}],
    }
    run = client.wait(client.submit(dag))
    f = client.task(run, "f")
    assert run["status"] == "succeeded"
    assert f["output"] == {"attempt": 3}
    attempts = f["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "failed", "succeeded"]
    assert "flaky failure on attempt 1" in attempts[0]["error"]
    gap1 = (attempts[1]["queued_at"] - attempts[0]["finished_at"]).total_seconds()
    gap2 = (attempts[2]["queued_at"] - attempts[1]["finished_at"]).total_seconds()
    assert 0.25 <= gap1 < 0.9, gap1  # base 0.3s
    assert 0.85 <= gap2 < 2.0, gap2  # 0.3 * 3
    assert gap2 > gap1


def test_retries_exhausted_fails(client):
    dag = {"name": "exhaust", "tasks": [
        {"name": "f", "fn": "tests.tasks:boom", "retries": {"limit": 2, "base_seconds": 0.05, "jitter": 0}}]}
    run = client.wait(client.submit(dag))
    f = client.task(run, "f")
    assert run["status"] == "failed" and f["status"] == "failed"
    assert [a["number"] for a in f["attempts"]] == [1, 2, 3]


def test_timeout_stops_sync_and_async_tasks(client):
    dag = {"name": "timeouts", "tasks": [
        {"name": "sync", "fn": "tests.tasks:spin", "args": [60], "timeout_seconds": 0.5},
        {"name": "coro", "fn": "tests.tasks:async_sleep", "args": [60], "timeout_seconds": 0.5},
        {"name": "fast", "fn": "tests.tasks:spin", "args": [0.01], "timeout_seconds": 5},
    ]}
    run = client.wait(client.submit(dag), timeout=30)
    assert run["status"] == "failed"
    for key in ("sync", "coro"):
        t = client.task(run, key)
        assert t["status"] == "failed", t
        assert t["attempts"][0]["reason"] == "timeout"
        assert "timed out after 0.5s" in t["error"]
        took = (t["attempts"][0]["finished_at"] - t["attempts"][0]["started_at"]).total_seconds()
        assert took < 10, took
    assert client.task(run, "fast")["status"] == "succeeded"


def test_cancel_mid_run(client):
    dag = {"name": "cancel-me", "tasks": [
        {"name": "long", "fn": "tests.tasks:spin", "args": [120]},
        {"name": "coro", "fn": "tests.tasks:async_sleep", "args": [120]},
        {"name": "later", "fn": "tests.tasks:noop", "depends": ["long"]},
    ]}
    run_id = client.submit(dag)
    client.wait(run_id, until=lambda r: all(client.task(r, k)["status"] == "running" for k in ("long", "coro")))
    client.cancel(run_id)
    run = client.wait(run_id, timeout=20)
    assert run["status"] == "cancelled"
    status = {t["key"]: t["status"] for t in run["tasks"]}
    assert status == {"long": "cancelled", "coro": "cancelled", "later": "cancelled"}
    long = client.task(run, "long")["attempts"][0]
    assert long["status"] == "cancelled"
    took = (long["finished_at"] - long["started_at"]).total_seconds()
    assert took < 10  # stopped cooperatively within the bound, not after 120 s


def test_map_over_1000_items(client):
    dag = {"name": "map1000", "tasks": [
        {"name": "nums", "fn": "tests.tasks:numbers", "args": [1000]},
        {"name": "dbl", "fn": "tests.tasks:double", "args": ["{{ item }}"], "depends": ["nums"],
         "map": {"over": "{{ tasks.nums.output }}", "max_items": 1000}},
        {"name": "sum", "fn": "tests.tasks:total", "args": ["{{ tasks.dbl.output }}"], "depends": ["dbl"]},
    ]}
    run = client.wait(client.submit(dag), timeout=120)
    assert run["status"] == "succeeded"
    assert client.task(run, "dbl")["output"] == [2 * i for i in range(1000)]
    assert client.task(run, "sum")["output"] == 999_000
    instances = [t for t in run["tasks"] if t["map_index"] is not None]
    assert len(instances) == 1000 and all(t["status"] == "succeeded" for t in instances)


def test_map_over_too_many_items_fails_clearly(client):
    dag = {"name": "map-cap", "tasks": [
        {"name": "nums", "fn": "tests.tasks:numbers", "args": [20]},
        {"name": "dbl", "fn": "tests.tasks:double", "args": ["{{ item }}"], "depends": ["nums"],
         "map": {"over": "{{ tasks.nums.output }}", "max_items": 10}},
    ]}
    run = client.wait(client.submit(dag))
    assert run["status"] == "failed"
    assert "20 items, over map.max_items=10" in client.task(run, "dbl")["error"]


def test_agent_rejections_are_clear(client):
    dag = {"name": "rejections", "tasks": [
        {"name": "forbidden", "fn": "os:getcwd", "retries": {"limit": 3}},
        {"name": "notjson", "fn": "tests.tasks:not_json"},
        {"name": "big", "fn": "tests.tasks:huge", "args": [2_000_000]},
        {"name": "missing", "fn": "tests.tasks:no_such_function"},
    ]}
    run = client.wait(client.submit(dag))
    errs = {t["key"]: t["error"] for t in run["tasks"]}
    assert "not allowed in pool 'default'" in errs["forbidden"]
    assert len(client.task(run, "forbidden")["attempts"]) == 1  # not retried: it cannot succeed
    assert "not JSON-serialisable" in errs["notjson"]
    assert "over the 1,048,576-byte limit" in errs["big"]
    assert "has no attribute 'no_such_function'" in errs["missing"]


def test_output_lines_are_captured_per_attempt(client):
    run = client.wait(client.submit({"name": "chatty", "tasks": [
        {"name": "talk", "fn": "tests.tasks:chatty", "args": [3]}]}))
    logs = client.task(run, "talk")["attempts"][0]["logs"]
    assert [line[1:] for line in logs] == [["stdout", "line 0"], ["stdout", "line 1"], ["stdout", "line 2"]]


def test_pool_stream_stays_shallow_while_a_large_map_runs(client, redis_url):
    import redis

    from flowforge import keys

    r = redis.Redis.from_url(redis_url)
    stream = keys.pool_stream(0, "default")
    run_id = client.submit({"name": "shallow", "tasks": [
        {"name": "nums", "fn": "tests.tasks:numbers", "args": [300]},
        {"name": "nap", "fn": "tests.tasks:nap", "args": [0.01], "depends": ["nums"],
         "map": {"over": "{{ tasks.nums.output }}", "max_items": 300}}]})
    # Entries delivered but unacknowledged plus entries not yet delivered, read atomically.
    depth = r.register_script("""
        for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
          local f = {}
          for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
          if f['name'] == ARGV[1] then
            return f['pending'] + #redis.call('XRANGE', KEYS[1], '(' .. f['last-delivered-id'], '+')
          end
        end
        return 0""")
    deepest = 0
    while client.get(run_id)["status"] not in ("succeeded", "failed", "cancelled"):
        deepest = max(deepest, depth(keys=[stream], args=["agents"]))
    run = client.get(run_id)
    assert run["status"] == "succeeded"
    slots = 2 * 8
    assert 0 < deepest <= slots * 2, deepest  # in flight: free slots plus a prefetch of 1x slots
