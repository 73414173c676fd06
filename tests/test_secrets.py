"""A secret param never shows: not in API responses, not in captured output or errors (a
canary value is looked for everywhere), yet the task receives it."""

from __future__ import annotations

import json
import time
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


def test_service_logs_hold_no_secret_and_one_access_line_per_request(api):
    """The service logs (JSON), while a run with a secret param runs and its logs are read with a
    ticket: no canary, no token, no ticket; one access line per request, with the route template."""
    import io

    import httpx
    import structlog

    from flowforge import servicelog

    canary = f"canary-{uuid.uuid4().hex}"
    out = io.StringIO()

    def access_lines(text: str) -> list[dict]:
        lines = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
        return [x for x in lines if x["event"] == "api.request" and x["route"] == "/api/v1/runs/{run_id}/logs"]

    before = structlog.get_config()
    servicelog.configure("debug", "json", file=out)
    try:
        dag = {"name": "secretive-logs", "params": {"token": "x"}, "secret_params": ["token"], "tasks": [
            {"name": "use", "fn": "tests.tasks:leak", "args": ["{{ params.token }}"]},
            {"name": "fail", "fn": "tests.tasks:leak_and_fail", "args": ["{{ params.token }}"]},
        ]}
        run_id = api.post("/api/v1/runs", json={"dag": dag, "params": {"token": canary}}).json()["id"]
        api.wait(run_id, timeout=60)
        ticket = api.post(f"/api/v1/runs/{run_id}/logs/ticket").json()["ticket"]
        logs = f"/api/v1/runs/{run_id}/logs"
        assert httpx.get(api.base_url + logs, params={"ticket": ticket}).status_code == 200
        assert api.get(logs).status_code == 200
        forged = "ff_" + uuid.uuid4().hex * 2
        assert httpx.get(api.base_url + logs, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        # The access line is written once the response is sent, so it may land just after the
        # client has the response: wait for it before putting the log configuration back.
        deadline = time.monotonic() + 10
        while len(access_lines(out.getvalue())) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        structlog.configure(**before)
    text = out.getvalue()
    for secret in (canary, api.token, ticket, ticket.split(".")[1], forged):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    access = access_lines(text)
    assert [(x["method"], x["status"]) for x in access] == [("GET", 200), ("GET", 200), ("GET", 401)]
    assert access[0]["tenant"] == "default"  # the ticket's tenant
    assert access[1]["tenant"] == "default" and access[2]["tenant"] is None
    assert all(x["level"] in ("info", "debug") and isinstance(x["duration_ms"], float) for x in access)
    failed = [x for x in lines if x["event"] == "coordinator.attempt_failed" and x.get("run") == run_id]
    assert failed and failed[0]["task"] == "fail" and failed[0]["attempt"] == 1  # attempt context


def test_service_log_lines_mask_credentials_also_from_library_loggers():
    import io
    import logging

    import structlog

    from flowforge import servicelog

    out, before, root = io.StringIO(), structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        servicelog.configure("info", "json", file=out, stdlib=True)
        token = "ff_" + uuid.uuid4().hex
        structlog.get_logger().info("calling", token=token, url="redis://:hunter2@redis:6379/0",
                                    header=f"Bearer {token}", note=f"sent {token}")
        logging.getLogger("uvicorn.error").warning("cannot reach %s", "postgresql://ff:hunter2@db/ff")
    finally:
        structlog.configure(**before)
        root.handlers[:], root.level = handlers, level
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "hunter2" not in out.getvalue() and token not in out.getvalue()
    assert lines[0]["token"] == "***" and lines[0]["url"] == "redis://:***@redis:6379/0"
    assert lines[1]["logger"] == "uvicorn.error" and lines[1]["event"] == "cannot reach postgresql://ff:***@db/ff"
