"""A secret param never shows: not in API responses, not in captured output or errors (a
canary value is looked for everywhere), yet the task receives it."""

from __future__ import annotations

import json
import uuid


def test_a_secret_param_is_redacted_everywhere_it_could_show(api, caplog):
    canary = f"canary-{uuid.uuid4().hex}"
    dag = {"name": "secretive", "params": {"token": "placeholder", "region": "eu"}, "secret_params": ["token"],
           "tasks": [
               {"name": "use", "fn": "tests.tasks:leak", "args": ["{{ params.token }}"]},
               {"name": "heavy", "fn": "tests.tasks:leak", "args": ["{{ params.token }}"], "executor": "heavy"},
               {"name": "fail", "fn": "tests.tasks:leak_and_fail", "args": ["{{ params.token }}"]},
           ]}
    run_id = api.post("/api/v1/runs", json={"dag": dag, "params": {"token": canary}}).json()["id"]
    api.wait(run_id, timeout=60)
    run = api.get(f"/api/v1/runs/{run_id}", params={"logs": "true"}).json()
    text = json.dumps(run)
    assert canary not in text  # params, outputs, errors, logs: nowhere
    assert run["params"] == {"token": "***", "region": "eu"}
    tasks = {t["key"]: t for t in run["tasks"]}
    assert tasks["use"]["output"] == {"echo": "***", "length": len(canary)}  # the task did get it
    lines = [line for _t, _s, line in tasks["use"]["attempts"][0]["logs"]]
    assert "calling the API with ***" in lines
    heavy = [line for _t, _s, line in tasks["heavy"]["attempts"][0]["logs"]]
    assert "calling the API with ***" in heavy
    assert "the service refused ***" in tasks["fail"]["error"]
    listed = api.get("/api/v1/runs", params={"dag": "secretive"}).json()
    assert canary not in json.dumps(listed)
    assert canary not in caplog.text  # nor in what FlowForge logged meanwhile


def test_secret_params_must_be_declared(api):
    dag = {"name": "undeclared", "params": {"a": 1}, "secret_params": ["token"],
           "tasks": [{"name": "t", "fn": "tests.tasks:noop"}]}
    r = api.post("/api/v1/runs", json={"dag": dag})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "secret_params[0]"
