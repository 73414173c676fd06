"""The REST API over real HTTP, against the session's stack (Postgres, Redis, Ray agents)."""

from __future__ import annotations

import uuid

import httpx
import pytest

DIAMOND = {
    "name": "api-diamond",
    "params": {"x": 2},
    "tasks": [
        {"name": "a", "fn": "tests.tasks:const", "args": ["{{ params.x }}"]},
        {"name": "b", "fn": "tests.tasks:double", "args": ["{{ tasks.a.output }}"], "depends": ["a"]},
        {"name": "c", "fn": "tests.tasks:add", "args": ["{{ tasks.a.output }}", 1], "depends": ["a"]},
        {"name": "d", "fn": "tests.tasks:add", "args": ["{{ tasks.b.output }}", "{{ tasks.c.output }}"],
         "depends": ["b", "c"]},
    ],
}


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def _template(api, name: str, **extra) -> dict:
    return {"name": name, "params": {"n": 1}, "tasks": [{"name": "t", "fn": "tests.tasks:const", "args": ["{{ params.n }}"]}], **extra}


# ---- health and auth ------------------------------------------------------------------------


def test_health_and_readiness_need_no_token(api):
    plain = httpx.Client(base_url=api.base_url)
    assert plain.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = plain.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    assert plain.get("/openapi.json").json()["info"]["title"] == "FlowForge"
    assert plain.get("/docs").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer ff_not-a-real-token"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer " + "x" * 500}])
def test_every_api_route_needs_a_valid_token(api, headers):
    plain = httpx.Client(base_url=api.base_url, headers=headers)
    run_id = str(uuid.uuid4())
    for method, path in [("GET", "/api/v1/runs"), ("POST", "/api/v1/runs"), ("GET", f"/api/v1/runs/{run_id}"),
                         ("POST", f"/api/v1/runs/{run_id}/cancel"), ("POST", f"/api/v1/runs/{run_id}/retry"),
                         ("GET", "/api/v1/dags"), ("POST", "/api/v1/dags"), ("GET", "/api/v1/dags/x"),
                         ("PUT", "/api/v1/dags/x"), ("DELETE", "/api/v1/dags/x")]:
        r = plain.request(method, path, json={} if method in ("POST", "PUT") else None)
        body = _problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer", (method, path)
        assert "token" in body["detail"]


def test_a_revoked_token_stops_working(api, stack):
    token = stack.call(stack.stack.catalog.create_token("default", "short-lived"))
    http = httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {token}"})
    assert http.get("/api/v1/runs").status_code == 200
    assert stack.call(stack.stack.catalog.revoke_token(token))
    stack.stack.api.server.config.app.state.ctx._tokens.clear()  # skip the cache's grace period
    _problem(http.get("/api/v1/runs"), 401)


# ---- runs -----------------------------------------------------------------------------------


def test_inline_run_end_to_end_with_tasks_attempts_and_outputs(api):
    r = api.post("/api/v1/runs", json={"dag": DIAMOND, "params": {"x": 5}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["dag"] == "api-diamond" and created["status"] == "pending"
    assert r.headers["location"] == f"/api/v1/runs/{created['id']}" == created["url"]
    run = api.wait(created["id"])
    assert run["status"] == "succeeded" and run["params"] == {"x": 5} and run["dag_template"] is False
    d = next(t for t in run["tasks"] if t["key"] == "d")
    assert d["output"] == 5 * 2 + 5 + 1
    assert d["executor"] == "light" and d["pool"] == "default"
    assert [a["status"] for a in d["attempts"]] == ["succeeded"]
    assert d["attempts"][0]["agent"] and d["attempts"][0]["logs"] is None
    assert d["started_at"] <= d["finished_at"]
    chatty = api.post("/api/v1/runs", json={"dag": {"name": "api-chatty", "tasks": [
        {"name": "talk", "fn": "tests.tasks:chatty", "args": [2]}]}}).json()["id"]
    assert api.wait(chatty)["tasks"][0]["attempts"][0]["logs"] is None  # only on request
    with_logs = api.get(f"/api/v1/runs/{chatty}", params={"logs": "true"}).json()
    assert [line[1:] for line in with_logs["tasks"][0]["attempts"][0]["logs"]] == [
        ["stdout", "line 0"], ["stdout", "line 1"]]


def test_invalid_dag_gets_422_naming_every_failing_path(api):
    bad = {"name": "bad dag!", "tasks": [
        {"name": "a", "fn": "nocolon", "depends": ["ghost"]},
        {"name": "a", "fn": "m:f", "args": ["{{ tasks.nope.output }}"], "when": "params.x >"},
    ]}
    body = _problem(api.post("/api/v1/runs", json={"dag": bad}), 422)
    paths = {e["path"] for e in body["errors"]}
    assert {"name", "tasks[0].fn", "tasks[0].depends[0]", "tasks[1].name", "tasks[1].when"} <= paths, paths
    assert all(e["message"] and e["hint"] for e in body["errors"])
    cyclic = {"name": "cyc", "tasks": [{"name": "a", "fn": "m:f", "depends": ["b"]},
                                       {"name": "b", "fn": "m:f", "depends": ["a"]}]}
    body = _problem(api.post("/api/v1/runs", json={"dag": cyclic}), 422)
    assert any("cycle" in e["message"] for e in body["errors"])


def test_malformed_requests_get_4xx_problems(api):
    _problem(api.post("/api/v1/runs", content=b"{not json", headers={"content-type": "application/json"}), 400)
    body = _problem(api.post("/api/v1/runs", json={}), 422)
    assert "either `dag`" in body["errors"][0]["message"]
    _problem(api.post("/api/v1/runs", json={"dag": DIAMOND, "name": "x"}), 422)
    body = _problem(api.post("/api/v1/runs", json={"dag": DIAMOND, "surprise": 1}), 422)
    assert body["errors"][0]["path"] == "body.surprise"
    body = _problem(api.post("/api/v1/runs", json={"dag": DIAMOND, "params": {"nope": 1}}), 422)
    assert body["errors"][0]["path"].startswith("params")
    body = _problem(api.get("/api/v1/runs", params={"status": "sideways"}), 422)
    assert body["errors"][0]["path"] == "query.status" and "succeeded" in body["errors"][0]["hint"]
    _problem(api.get("/api/v1/runs", params={"limit": 0}), 422)
    _problem(api.get("/api/v1/runs", params={"cursor": "garbage"}), 422)
    _problem(api.get("/api/v1/runs", params={"created_after": "2026-01-01T00:00:00"}), 422)  # no zone
    body = _problem(api.get("/api/v1/runs", params={"dag": "a\x00b"}), 422)  # Postgres text holds no NUL
    assert body["errors"][0]["path"] == "query"
    _problem(api.get("/api/v1/dags/a%00b"), 422)
    body = _problem(api.post("/api/v1/runs", json={"dag": DIAMOND, "params": {"x": "a\x00"}}), 422)
    assert body["errors"][0]["path"] == "body.params.x" and "NUL" in body["errors"][0]["message"]
    _problem(api.get("/api/v1/nowhere"), 404)
    _problem(api.patch("/api/v1/runs"), 405)


def test_oversized_body_gets_413(api):
    huge = {"dag": {"name": "huge", "tasks": [{"name": "a", "fn": "m:f", "args": ["x" * (3 << 20)]}]}}
    body = _problem(api.post("/api/v1/runs", json=huge), 413)
    assert body["errors"][0]["path"] == "body"


def test_unknown_runs_are_404_and_other_tenants_runs_too(api, other_api):
    run_id = api.post("/api/v1/runs", json={"dag": DIAMOND}).json()["id"]
    for who, rid in ((api, str(uuid.uuid4())), (api, "not-a-uuid"), (other_api, run_id)):
        _problem(who.get(f"/api/v1/runs/{rid}"), 404)
        _problem(who.post(f"/api/v1/runs/{rid}/cancel"), 404)
        _problem(who.post(f"/api/v1/runs/{rid}/retry"), 404)
    assert all(item["id"] != run_id for item in other_api.get("/api/v1/runs").json()["items"])
    assert api.wait(run_id)["status"] == "succeeded"  # untouched by the other tenant


def test_cancel_and_retry_over_rest(api, tmp_path):
    slow = {"name": "api-cancel", "tasks": [
        {"name": "long", "fn": "tests.tasks:spin", "args": [30]},
        {"name": "after", "fn": "tests.tasks:noop", "depends": ["long"]}]}
    run_id = api.post("/api/v1/runs", json={"dag": slow}).json()["id"]
    api.wait(run_id, until=lambda r: r["tasks"][0]["status"] == "running" or r["tasks"][1]["status"] == "running"
             or any(t["status"] == "running" for t in r["tasks"]))
    r = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert r.status_code == 202 and r.json() == {"id": run_id, "action": "cancel", "detail": "cancelling"}
    run = api.wait(run_id, timeout=30)
    assert run["status"] == "cancelled"
    assert {t["key"]: t["status"] for t in run["tasks"]} == {"long": "cancelled", "after": "cancelled"}
    _problem(api.post(f"/api/v1/runs/{run_id}/cancel"), 409)

    marker = tmp_path / "fixed"
    flaky = {"name": "api-retry", "tasks": [
        {"name": "gate", "fn": "tests.tasks:fails_until_exists", "args": [str(marker)]},
        {"name": "after", "fn": "tests.tasks:noop", "depends": ["gate"]}]}
    run_id = api.post("/api/v1/runs", json={"dag": flaky}).json()["id"]
    assert api.wait(run_id)["status"] == "failed"
    _problem(api.post(f"/api/v1/runs/{run_id}/cancel"), 409)
    marker.touch()
    assert api.post(f"/api/v1/runs/{run_id}/retry").status_code == 202
    run = api.wait(run_id, until=lambda r: r["status"] == "succeeded", timeout=30)
    gate = next(t for t in run["tasks"] if t["key"] == "gate")
    assert [a["status"] for a in gate["attempts"]] == ["failed", "succeeded"]  # history kept
    _problem(api.post(f"/api/v1/runs/{run_id}/retry"), 409)


def test_run_list_filters_and_cursor_pagination(api, other_api):
    dag = {"name": "api-page", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}
    ids = [api.post("/api/v1/runs", json={"dag": dag}).json()["id"] for _ in range(7)]
    for run_id in ids:
        api.wait(run_id)
    seen, cursor = [], None
    while True:
        params = {"dag": "api-page", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/runs", params=params).json()
        assert len(page["items"]) <= 3
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:7] == list(reversed(ids))  # newest first, no gaps, no repeats
    assert len(seen) == len(set(seen))
    item = api.get("/api/v1/runs", params={"dag": "api-page", "limit": 1}).json()["items"][0]
    assert item["task_counts"] == {"succeeded": 1} and item["status"] == "succeeded"
    assert api.get("/api/v1/runs", params={"dag": "api-page", "status": "failed"}).json()["items"] == []
    created = item["created_at"]
    after = api.get("/api/v1/runs", params={"dag": "api-page", "created_after": created}).json()["items"]
    assert [i["id"] for i in after] == [ids[-1]]
    before = api.get("/api/v1/runs", params={"dag": "api-page", "created_before": created, "limit": 500}).json()
    assert ids[-1] not in [i["id"] for i in before["items"]] and ids[0] in [i["id"] for i in before["items"]]
    assert other_api.get("/api/v1/runs", params={"dag": "api-page"}).json()["items"] == []


# ---- DAG templates --------------------------------------------------------------------------


def test_templates_are_versioned_and_runnable_by_name(api, other_api):
    name = f"tpl-{uuid.uuid4().hex[:8]}"
    r = api.post("/api/v1/dags", json=_template(api, name))
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["versions"] == [1]
    _problem(api.post("/api/v1/dags", json=_template(api, name)), 409)
    same = api.put(f"/api/v1/dags/{name}", json=_template(api, name))
    assert same.status_code == 200 and same.json()["version"] == 1  # unchanged spec: no new version
    v2 = api.put(f"/api/v1/dags/{name}", json=_template(api, name, description="second"))
    assert v2.status_code == 200 and v2.json()["version"] == 2 and v2.json()["versions"] == [1, 2]
    assert api.get(f"/api/v1/dags/{name}").json()["spec"]["description"] == "second"
    assert api.get(f"/api/v1/dags/{name}", params={"version": 1}).json()["spec"]["description"] == ""
    _problem(api.get(f"/api/v1/dags/{name}", params={"version": 9}), 404)
    _problem(api.put(f"/api/v1/dags/{name}", json=_template(api, "other-name")), 422)

    latest = api.post("/api/v1/runs", json={"name": name, "params": {"n": 41}}).json()
    old = api.post("/api/v1/runs", json={"name": name, "version": 1}).json()
    assert (latest["version"], old["version"]) == (2, 1)
    assert api.wait(latest["id"])["tasks"][0]["output"] == 41
    old_run = api.wait(old["id"])
    assert old_run["tasks"][0]["output"] == 1 and old_run["dag_template"] is True and old_run["dag_version"] == 1
    _problem(api.post("/api/v1/runs", json={"name": name, "params": {"zzz": 1}}), 422)
    _problem(api.post("/api/v1/runs", json={"name": "no-such-dag"}), 404)

    listed = api.get("/api/v1/dags", params={"limit": 500}).json()["items"]
    mine = next(d for d in listed if d["name"] == name)
    assert mine["version"] == 2 and mine["versions"] == 2 and mine["description"] == "second" and mine["tasks"] == 1
    _problem(other_api.get(f"/api/v1/dags/{name}"), 404)
    _problem(other_api.post("/api/v1/runs", json={"name": name}), 404)
    _problem(other_api.delete(f"/api/v1/dags/{name}"), 404)
    assert all(d["name"] != name for d in other_api.get("/api/v1/dags").json()["items"])


def test_template_delete_is_refused_while_runs_are_active(api):
    name = f"del-{uuid.uuid4().hex[:8]}"
    spec = {"name": name, "tasks": [{"name": "slow", "fn": "tests.tasks:spin", "args": [30]}]}
    assert api.put(f"/api/v1/dags/{name}", json=spec).status_code == 201
    run_id = api.post("/api/v1/runs", json={"name": name}).json()["id"]
    body = _problem(api.delete(f"/api/v1/dags/{name}"), 409)
    assert "1 active run" in body["detail"]
    api.post(f"/api/v1/runs/{run_id}/cancel")
    api.wait(run_id, timeout=30)
    assert api.delete(f"/api/v1/dags/{name}").status_code == 204
    _problem(api.get(f"/api/v1/dags/{name}"), 404)
    _problem(api.delete(f"/api/v1/dags/{name}"), 404)
    assert api.get(f"/api/v1/runs/{run_id}").json()["dag_name"] == name  # history stays


def test_template_pagination(api):
    prefix = f"pg-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        api.post("/api/v1/dags", json=_template(api, f"{prefix}-{i}"))
    names, cursor = [], None
    while True:
        page = api.get("/api/v1/dags", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        names += [d["name"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [n for n in names if n.startswith(prefix)] == [f"{prefix}-{i}" for i in range(5)]
    assert names == sorted(names) and len(names) == len(set(names))
