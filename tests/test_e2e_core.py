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
