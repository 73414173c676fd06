"""Heavy tasks end to end on the embedded default: the router's decisions, a Python `fn` in a
fresh process, a command, and how failures, timeouts, cancels and memory limits come back."""

from __future__ import annotations

import os

import pytest

MIXED = {
    "name": "mixed",
    "tasks": [
        {"name": "prep", "fn": "tests.tasks:const", "args": [3]},
        {"name": "crunch", "fn": "tests.tasks:double", "args": ["{{ tasks.prep.output }}"], "executor": "heavy",
         "depends": ["prep"]},
        {"name": "shell", "image": "busybox:1.36", "command": ["sh", "-c", "echo hello from $WHO; echo $0 >&2"],
         "args": ["{{ tasks.crunch.output }}"], "env": {"WHO": "a pod"}, "executor": "auto", "depends": ["crunch"]},
        {"name": "big", "fn": "tests.tasks:where", "executor": "auto", "resources": {"cpu": 4}},
        {"name": "small", "fn": "tests.tasks:where", "executor": "auto", "resources": {"cpu": "500m"}},
        {"name": "gpu", "fn": "tests.tasks:noop", "executor": "auto", "resources": {"gpu": 1}},
    ],
}


def _task(run: dict, key: str) -> dict:
    return next(t for t in run["tasks"] if t["key"] == key)


def test_light_and_heavy_tasks_share_one_run(api):
    run_id = api.post("/api/v1/runs", json={"dag": MIXED}).json()["id"]
    run = api.wait(run_id, timeout=90)
    assert run["status"] == "succeeded", [(t["key"], t["status"], t["error"]) for t in run["tasks"]]
    routes = {t["key"]: (t["executor"], t["route_reason"]) for t in run["tasks"]}
    assert routes == {
        "prep": ("light", "executor: light"),
        "crunch": ("heavy", "executor: heavy"),
        "shell": ("heavy", "runs the container image busybox:1.36"),
        "big": ("heavy", "requests 4 CPU; a slot of pool 'default' offers 1"),
        "small": ("light", "fits a slot of pool 'default'"),
        "gpu": ("heavy", "requests 1 GPU"),
    }
    assert _task(run, "crunch")["output"] == 6  # an upstream output in, a result out, through the Pod
    big, small = _task(run, "big")["output"], _task(run, "small")["output"]
    assert big["ppid"] == os.getpid()  # a fresh child of the launcher (here: this test's stack)
    assert small["pid"] != os.getpid() and small["ppid"] != os.getpid()  # a warm Ray agent
    logs = api.get(f"/api/v1/runs/{run_id}", params={"logs": "true"}).json()
    lines = [(s, line) for _t, s, line in _task(logs, "shell")["attempts"][0]["logs"]]
    assert ("stdout", "hello from a pod") in lines and ("stderr", "6") in lines
    every_line = [line for t in logs["tasks"] for a in t["attempts"] for _t, _s, line in a["logs"] or ()]
    assert every_line and not any("::flowforge-result::" in line for line in every_line)  # consumed, not shown


def test_a_light_task_cannot_ask_for_a_container_or_a_gpu(api):
    bad = {"name": "bad-light", "tasks": [
        {"name": "a", "image": "busybox", "command": ["true"], "executor": "light"},
        {"name": "b", "fn": "tests.tasks:noop", "resources": {"gpu": 1}},
        {"name": "c", "fn": "tests.tasks:noop", "executor": "heavy", "resources": {"memory": "lots"}},
        {"name": "d", "executor": "heavy"},
        {"name": "e", "image": "busybox", "fn": "tests.tasks:noop", "command": ["true"], "executor": "heavy"},
    ]}
    r = api.post("/api/v1/runs", json={"dag": bad})
    assert r.status_code == 422, r.text
    paths = {e["path"] for e in r.json()["errors"]}
    assert {"tasks[0].image", "tasks[1].resources.gpu", "tasks[2].resources.memory", "tasks[3]",
            "tasks[4].command"} <= paths, paths


@pytest.mark.parametrize("task, status, reason, says", [
    ({"image": "busybox", "command": ["sh", "-c", "echo bad >&2; exit 3"]}, "failed", "error", "exited with code 3"),
    ({"fn": "tests.tasks:boom"}, "failed", "error", "Traceback"),
    ({"fn": "tests.tasks:spin", "args": [30], "timeout_seconds": 1}, "failed", "timeout", "timed out"),
    ({"fn": "tests.tasks:hog", "args": [400], "resources": {"memory": "200Mi"}}, "failed", "oom_killed", "memory"),
    ({"fn": "tests.tasks:not_json"}, "failed", "rejected", "JSON"),
    ({"image": "busybox", "command": ["/no/such/binary"]}, "failed", "image_pull", "cannot start"),
    ({"fn": "os:getcwd"}, "failed", "rejected", "not allowed"),
])
def test_heavy_failures_come_back_with_their_reason(api, task, status, reason, says):
    dag = {"name": "heavy-fail", "tasks": [{"name": "h", "executor": "heavy", **task}]}
    run_id = api.post("/api/v1/runs", json={"dag": dag}).json()["id"]
    run = api.wait(run_id, timeout=60)
    t = run["tasks"][0]
    assert (run["status"], t["attempts"][-1]["reason"]) == (status, reason), t
    assert says in (t["error"] or ""), t["error"]


def test_cancelling_a_heavy_task_stops_its_process(api):
    dag = {"name": "heavy-cancel", "tasks": [{"name": "h", "executor": "heavy", "image": "busybox",
                                              "command": ["sh", "-c", "echo started; sleep 60"]}]}
    run_id = api.post("/api/v1/runs", json={"dag": dag}).json()["id"]
    api.wait(run_id, until=lambda r: r["tasks"][0]["status"] == "running")
    assert api.post(f"/api/v1/runs/{run_id}/cancel").status_code == 202
    run = api.wait(run_id, timeout=30)
    assert run["status"] == "cancelled" and run["tasks"][0]["attempts"][-1]["reason"] == "cancelled"
    import subprocess

    assert "sleep 60" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
