"""Tenants and projects through the API and the CLI: creating and listing them, runs and DAG
templates per project, the 409s and 422s, deleting a project, and tokens scoped to projects."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import Api

ROOT = Path(__file__).resolve().parent.parent
DAG = {"name": "proj", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}


def _tenant(api: Api) -> tuple[str, Api]:
    """A new tenant, and a tenant-admin token of it."""
    tenant = f"pt-{uuid.uuid4().hex[:8]}"
    assert api.post("/api/v1/tenants", json={"id": tenant}).status_code == 201
    made = api.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "admin", "role": "tenant-admin"})
    assert made.status_code == 201, made.text
    return tenant, Api(api.base_url, made.json()["token"])


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


def test_the_operator_creates_and_lists_tenants(api, other_api):
    tenant = f"pt-{uuid.uuid4().hex[:8]}"
    made = api.post("/api/v1/tenants", json={"id": tenant, "name": "Acme Corp"})
    assert made.status_code == 201 and made.json()["name"] == "Acme Corp" and made.json()["created_at"]
    assert f"tenant '{tenant}' exists" in _error(api.post("/api/v1/tenants", json={"id": tenant}), 409)["detail"]
    bad = _error(api.post("/api/v1/tenants", json={"id": "Not_An_Id"}), 422)
    assert bad["errors"][0]["path"] == "body.id"
    listed = api.get("/api/v1/tenants", params={"limit": 500}).json()
    assert {tenant, "default"} <= {t["id"] for t in listed["items"]}
    first = api.get("/api/v1/tenants", params={"limit": 1}).json()
    second = api.get("/api/v1/tenants", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert first["next_cursor"] and first["items"][0]["id"] < second["items"][0]["id"]
    # A new tenant has its default project.
    assert [p["id"] for p in api.get(f"/api/v1/tenants/{tenant}/projects").json()["items"]] == ["default"]
    assert "operator" in _error(other_api.post("/api/v1/tenants", json={"id": f"{tenant}-x"}), 403)["detail"]
    assert _error(other_api.get("/api/v1/tenants"), 403)
    assert _error(api.get("/api/v1/tenants/pt-no-such-tenant/projects"), 404)
    assert _error(api.post("/api/v1/tenants/pt-no-such-tenant/projects", json={"id": "x"}), 404)


def test_projects_hold_their_own_templates_and_runs(api):
    tenant, owner = _tenant(api)
    made = owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "etl", "name": "ETL jobs"})
    assert made.status_code == 201 and made.headers["Location"] == f"/api/v1/tenants/{tenant}/projects/etl"
    assert made.json() == {**made.json(), "tenant": tenant, "id": "etl", "name": "ETL jobs"}
    assert "exists" in _error(owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "etl"}), 409)["detail"]
    assert _error(owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "-x"}), 422)["errors"][0]["path"] \
        == "body.id"
    assert [p["id"] for p in owner.get(f"/api/v1/tenants/{tenant}/projects").json()["items"]] == ["default", "etl"]
    assert owner.get(f"/api/v1/tenants/{tenant}/projects/etl").json()["active_runs"] == 0
    assert _error(owner.get(f"/api/v1/tenants/{tenant}/projects/nope"), 404)

    # Templates are per project: the same name in two projects are two templates.
    tpl = {**DAG, "name": "flow"}
    put = owner.put("/api/v1/dags/flow?project=etl", json=tpl)
    assert put.status_code == 201 and put.json()["versions"] == [1]
    assert "PUT /api/v1/dags/flow?project=etl" in _error(owner.post("/api/v1/dags?project=etl", json=tpl), 409)["detail"]
    assert _error(owner.get("/api/v1/dags/flow"), 404)
    assert [d["name"] for d in owner.get("/api/v1/dags", params={"project": "etl"}).json()["items"]] == ["flow"]
    assert owner.get("/api/v1/dags").json()["items"] == []
    run = owner.post("/api/v1/runs", json={"name": "flow", "project": "etl"})
    assert run.status_code == 201 and run.json()["project"] == "etl"
    assert _error(owner.post("/api/v1/runs", json={"name": "flow"}), 404)  # not in `default`
    plain = owner.post("/api/v1/runs", json={"dag": DAG}).json()
    assert plain["project"] == "default"
    assert owner.wait(run.json()["id"])["project"] == "etl"
    listed = owner.get("/api/v1/runs", params={"project": "etl"}).json()["items"]
    assert [r["id"] for r in listed] == [run.json()["id"]] and listed[0]["project"] == "etl"
    assert {r["project"] for r in owner.get("/api/v1/runs").json()["items"]} == {"default", "etl"}

    # An unknown project names the field and how to create it.
    for response, path in [
        (owner.post("/api/v1/runs", json={"dag": DAG, "project": "nope"}), "body.project"),
        (owner.get("/api/v1/runs", params={"project": "nope"}), "query.project"),
        (owner.get("/api/v1/dags", params={"project": "nope"}), "query.project"),
        (owner.put("/api/v1/dags/flow", params={"project": "nope"}, json=tpl), "query.project"),
    ]:
        problem = _error(response, 422)["errors"][0]
        assert problem["path"] == path and "nope" in problem["message"], problem
        assert f"projects create nope --tenant {tenant}" in problem["hint"]
    assert _error(owner.post("/api/v1/runs", json={"dag": DAG, "project": "Bad!"}), 422)["errors"][0]["path"] \
        == "body.project"


def test_deleting_a_project(api, stack):
    tenant, owner = _tenant(api)
    assert owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "tmp"}).status_code == 201
    assert owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "keep"}).status_code == 201
    only = owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "only", "projects": ["tmp"]}).json()
    both = owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "both", "role": "member",
                                                                 "projects": ["tmp", "keep"]}).json()
    assert both["projects"] == ["keep", "tmp"]
    assert owner.put("/api/v1/dags/flow?project=tmp", json={**DAG, "name": "flow"}).status_code == 201
    done = owner.post("/api/v1/runs", json={"dag": DAG, "project": "tmp"}).json()["id"]
    owner.wait(done)
    long = {"name": "long", "tasks": [{"name": "a", "fn": "tests.tasks:spin", "args": [30]}]}
    active = owner.post("/api/v1/runs", json={"dag": long, "project": "tmp"}).json()["id"]

    refused = _error(owner.delete(f"/api/v1/tenants/{tenant}/projects/tmp"), 409)["detail"]
    assert "1 active run" in refused and "cancel" in refused
    assert owner.get(f"/api/v1/tenants/{tenant}/projects/tmp").json()["active_runs"] == 1
    assert "default project cannot be deleted" in _error(
        owner.delete(f"/api/v1/tenants/{tenant}/projects/default"), 409)["detail"]
    assert owner.post(f"/api/v1/runs/{active}/cancel").status_code == 202
    owner.wait(active)
    assert owner.delete(f"/api/v1/tenants/{tenant}/projects/tmp").status_code == 204

    assert _error(owner.get(f"/api/v1/tenants/{tenant}/projects/tmp"), 404)
    assert _error(owner.get(f"/api/v1/runs/{done}"), 404)
    assert _error(owner.delete(f"/api/v1/tenants/{tenant}/projects/tmp"), 404)
    catalog = stack.stack.catalog
    assert stack.call(catalog.verify_token(only["token"])) is None  # scoped to it alone: revoked
    assert stack.call(catalog.verify_token(both["token"])).projects == frozenset({"keep"})
    tokens = {t["name"]: t for t in owner.get(f"/api/v1/tenants/{tenant}/tokens").json()["items"]}
    assert tokens["only"]["revoked_at"] and tokens["both"]["projects"] == ["keep"]

    # Made anew, it starts empty; the same inline DAG submitted before runs again.
    assert owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "tmp"}).status_code == 201
    assert _error(owner.get("/api/v1/dags/flow", params={"project": "tmp"}), 404)
    again = owner.post("/api/v1/runs", json={"dag": DAG, "project": "tmp"})
    assert again.status_code == 201, again.text
    assert owner.wait(again.json()["id"])["status"] == "succeeded"


def test_token_scopes_are_checked(api, stack):
    tenant, owner = _tenant(api)
    assert owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "web"}).status_code == 201
    r = api.post("/api/v1/tenants/default/tokens", json={"name": "x", "role": "admin", "projects": ["default"]})
    assert _error(r, 422)["errors"][0]["path"] == "body.projects"
    scoped = owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "s", "role": "tenant-admin",
                                                                   "projects": ["web"]}).json()
    admin = Api(api.base_url, scoped["token"])
    # A scoped tenant-admin manages its projects' templates, but neither tokens nor projects.
    assert admin.put("/api/v1/dags/site?project=web", json={**DAG, "name": "site"}).status_code == 201
    assert "scoped" in _error(admin.put("/api/v1/dags/site", json={**DAG, "name": "site"}), 403)["detail"]
    assert "scoped" in _error(admin.get(f"/api/v1/tenants/{tenant}/tokens"), 403)["detail"]
    assert "scoped" in _error(admin.post(f"/api/v1/tenants/{tenant}/projects", json={"id": "x"}), 403)["detail"]
    assert _error(admin.get(f"/api/v1/tenants/{tenant}/projects/default"), 404)
    run = owner.post("/api/v1/runs", json={"dag": DAG}).json()["id"]
    assert _error(admin.get(f"/api/v1/runs/{run}"), 404)
    assert _error(admin.post(f"/api/v1/runs/{run}/cancel"), 404)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowforge", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_tenants_projects_and_scoped_tokens(api, stack_settings, redis_url):
    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=api.token, COLUMNS="200",
               FLOWFORGE_DATABASE__URL=stack_settings.database.url, FLOWFORGE_REDIS__URL=redis_url)
    tenant, project = f"pc-{uuid.uuid4().hex[:8]}", f"cli-{uuid.uuid4().hex[:6]}"

    def ok(*args: str) -> str:
        out = _cli(*args, env=env)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stdout, out.stderr)
        return out.stdout

    def refused(says: str, *args: str) -> None:
        out = _cli(*args, env=env)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)

    assert f"tenant {tenant} created" in ok("tenants", "create", tenant)
    refused("exists", "tenants", "create", tenant)
    assert tenant in ok("tenants", "list")
    assert f"project web created in tenant {tenant}" in ok("projects", "create", "web", "--tenant", tenant)
    refused("exists", "projects", "create", "web", "--tenant", tenant)
    listed = ok("projects", "list", "--tenant", tenant)
    assert "default" in listed and "web" in listed
    refused("--project: tenant", "tokens", "create", "--tenant", tenant, "--project", "nope")
    token = ok("tokens", "create", "--tenant", tenant, "--role", "member", "--project", "web").strip()
    assert [p["id"] for p in Api(api.base_url, token).get(f"/api/v1/tenants/{tenant}/projects").json()["items"]] \
        == ["web"]

    # --project on submit, runs and dags, in the operator's own tenant.
    ok("projects", "create", project, "--tenant", "default")
    refused("body.project", "submit", "examples/diamond.yaml", "--project", "no-such-project")
    started = ok("submit", "examples/diamond.yaml", "--project", project, "--wait")
    assert f"in project {project}" in started
    run_id = started.split()[1]
    assert run_id in ok("runs", "--project", project)
    assert run_id not in ok("runs", "--project", "default", "--limit", "500")
    assert "created" in ok("dags", "push", "examples/diamond.yaml", "--project", project)
    assert "diamond" in ok("dags", "list", "--project", project)
    assert "diamond" in ok("dags", "show", "diamond", "--project", project)
    refused("query.project", "dags", "show", "diamond", "--project", "no-such-project")
    ok("projects", "show", project, "--tenant", "default")
    assert "deleted" in ok("projects", "delete", project, "--tenant", "default", "--yes")
    refused("cannot be deleted", "projects", "delete", "default", "--tenant", "default", "--yes")
