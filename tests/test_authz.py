"""The authorisation matrix: every route x role x own/foreign tenant. No cross-tenant read or
write succeeds; every denial has the right status (401 no token, 403 role, 404 foreign)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.conftest import Api

DAG = {"name": "authz", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}


@pytest.fixture(scope="module")
def world(api, stack):
    """Tenant acme with a token per role, a member token scoped to its project alpha, a foreign
    tenant's token, and acme's objects: a run and a template in `default` and in alpha."""
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    catalog = stack.stack.catalog
    make = lambda t, role, ps=None: Api(api.base_url, stack.call(catalog.create_token(t, role, role, None, ps)))  # noqa: E731
    who = {"operator": api, "tenant-admin": make(tenant, "tenant-admin"), "member": make(tenant, "member"),
           "viewer": make(tenant, "viewer"), "foreign": make(f"other-{tenant}", "tenant-admin")}
    owner = who["tenant-admin"]
    for project in (ALPHA, BETA):
        assert owner.post(f"/api/v1/tenants/{tenant}/projects", json={"id": project}).status_code == 201
    who["scoped"] = make(tenant, "member", [ALPHA])
    run_id = owner.post("/api/v1/runs", json={"dag": DAG}).json()["id"]
    alpha_run = owner.post("/api/v1/runs", json={"dag": DAG, "project": ALPHA}).json()["id"]
    owner.wait(run_id)
    owner.wait(alpha_run)
    assert owner.put("/api/v1/dags/authz-tpl", json={**DAG, "name": "authz-tpl"}).status_code == 201
    assert owner.put(f"/api/v1/dags/authz-tpl?project={ALPHA}", json={**DAG, "name": "authz-tpl"}).status_code == 201
    return {"tenant": tenant, "who": who, "run": run_id, "alpha_run": alpha_run}


ALPHA, BETA = "authz-alpha", "authz-beta"
ROLES = ["operator", "tenant-admin", "member", "viewer", "foreign", "scoped"]
# (method, path, body, expected status per role). Objects are acme's; the operator is another
# tenant too (objects are tenant-scoped for everyone), with cluster-wide powers on top.
# `scoped` is an acme member token scoped to project alpha: other projects' runs and templates
# answer 404 to it, and acting in another project 403.
MATRIX = [
    ("GET", "/api/v1/runs/{run}", None, [404, 200, 200, 200, 404, 404]),
    ("GET", "/api/v1/runs/{alpha_run}", None, [404, 200, 200, 200, 404, 200]),
    ("GET", "/api/v1/runs", None, [200, 200, 200, 200, 200, 200]),
    ("GET", f"/api/v1/runs?project={ALPHA}", None, [422, 200, 200, 200, 422, 200]),
    ("GET", "/api/v1/runs?project=default", None, [200, 200, 200, 200, 200, 404]),
    ("POST", "/api/v1/runs", {"dag": DAG}, [201, 201, 201, 403, 201, 403]),
    ("POST", "/api/v1/runs", {"dag": DAG, "project": ALPHA}, [422, 201, 201, 403, 422, 201]),
    ("POST", "/api/v1/runs", {"dag": DAG, "project": BETA}, [422, 201, 201, 403, 422, 403]),
    ("POST", "/api/v1/runs", {"dag": DAG, "project": "authz-never"}, [422, 422, 422, 403, 422, 403]),
    ("POST", "/api/v1/runs/{run}/cancel", None, [404, 409, 409, 403, 404, 404]),
    ("POST", "/api/v1/runs/{alpha_run}/cancel", None, [404, 409, 409, 403, 404, 409]),
    ("POST", "/api/v1/runs/{run}/retry", None, [404, 409, 409, 403, 404, 404]),
    ("POST", "/api/v1/runs/{alpha_run}/retry", None, [404, 409, 409, 403, 404, 409]),
    ("GET", "/api/v1/dags", None, [200, 200, 200, 200, 200, 404]),
    ("GET", f"/api/v1/dags?project={ALPHA}", None, [422, 200, 200, 200, 422, 200]),
    ("GET", "/api/v1/dags/authz-tpl", None, [404, 200, 200, 200, 404, 404]),
    ("GET", f"/api/v1/dags/authz-tpl?project={ALPHA}", None, [422, 200, 200, 200, 422, 200]),
    ("POST", "/api/v1/dags", {**DAG, "name": "authz-tpl"}, [201, 409, 403, 403, 201, 403]),
    ("DELETE", "/api/v1/dags/authz-never", None, [404, 404, 403, 403, 404, 403]),
    ("DELETE", f"/api/v1/dags/authz-never?project={BETA}", None, [422, 404, 403, 403, 422, 403]),
    ("GET", "/api/v1/pools", None, [200, 200, 200, 200, 200, 200]),
    ("POST", "/api/v1/pools/annotations", {"node_group": "nowhere", "counts": {"default": 1}},
     [404, 403, 403, 403, 403, 403]),
    ("GET", "/api/v1/tenants/{tenant}/limits", None, [200, 200, 200, 200, 404, 200]),
    ("PUT", "/api/v1/tenants/{tenant}/limits", {"weight": 1}, [200, 403, 403, 403, 403, 403]),
    ("POST", "/api/v1/tenants/{tenant}/tokens", {"name": "x", "role": "viewer"}, [201, 201, 403, 403, 404, 403]),
    ("POST", "/api/v1/tenants/{tenant}/tokens", {"name": "x", "role": "viewer", "projects": [BETA]},
     [201, 201, 403, 403, 404, 403]),
    ("GET", "/api/v1/tenants/{tenant}/tokens", None, [200, 200, 403, 403, 404, 403]),
    ("DELETE", "/api/v1/tenants/{tenant}/tokens/00000000-0000-0000-0000-000000000000", None,
     [404, 404, 403, 403, 404, 403]),
    ("POST", "/api/v1/tenants", {"id": "{tenant}-new"}, [201, 403, 403, 403, 403, 403]),
    ("GET", "/api/v1/tenants", None, [200, 403, 403, 403, 403, 403]),
    ("POST", "/api/v1/tenants/{tenant}/projects", {"id": "authz-made"}, [201, 409, 403, 403, 404, 403]),
    ("GET", "/api/v1/tenants/{tenant}/projects", None, [200, 200, 200, 200, 404, 200]),
    ("GET", f"/api/v1/tenants/{{tenant}}/projects/{ALPHA}", None, [200, 200, 200, 200, 404, 200]),
    ("GET", f"/api/v1/tenants/{{tenant}}/projects/{BETA}", None, [200, 200, 200, 200, 404, 404]),
    ("DELETE", "/api/v1/tenants/{tenant}/projects/default", None, [409, 409, 403, 403, 404, 403]),
    ("DELETE", "/api/v1/tenants/{tenant}/projects/authz-never", None, [404, 404, 403, 403, 404, 403]),
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_every_route_for_every_role(world, method, path, body, expected):
    url = path.format(run=world["run"], alpha_run=world["alpha_run"], tenant=world["tenant"])
    if body is not None:
        body = json.loads(json.dumps(body).replace("{tenant}", world["tenant"]))
    got = [world["who"][role].request(method, url, json=body).status_code for role in ROLES]
    assert got == expected, dict(zip(ROLES, got))
    anonymous = httpx.request(method, world["who"]["viewer"].base_url + url, json=body)
    assert anonymous.status_code == 401


def test_nothing_of_acme_changed_and_nothing_leaked(world):
    owner, foreign = world["who"]["tenant-admin"], world["who"]["foreign"]
    assert owner.get("/api/v1/dags/authz-tpl").json()["versions"] == [1]  # the foreign POST made its own
    assert all(r["id"] != world["run"] for r in foreign.get("/api/v1/runs").json()["items"])
    assert owner.get(f"/api/v1/runs/{world['run']}").json()["status"] == "succeeded"


def test_tokens_carry_a_valid_role_and_may_expire(stack, api):
    from datetime import timedelta

    from flowforge import errors

    catalog = stack.stack.catalog
    with pytest.raises(errors.InvalidInput, match="operator's tenant"):
        stack.call(catalog.create_token("acme-x", "x", "admin"))
    with pytest.raises(errors.InvalidInput, match="unknown role"):
        stack.call(catalog.create_token("acme-x", "x", "root"))
    expired = stack.call(catalog.create_token("acme-x", "x", "viewer", timedelta(seconds=-1)))
    assert stack.call(catalog.verify_token(expired)) is None
    fresh = stack.call(catalog.create_token("acme-x", "x", "viewer", timedelta(hours=1)))
    assert stack.call(catalog.verify_token(fresh)).role == "viewer"
    assert len(fresh) >= 43  # 32 random bytes, URL-safe


def test_a_tenant_admin_manages_its_own_tokens(world, stack):
    owner = world["who"]["tenant-admin"]
    tenant = world["tenant"]
    made = owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "ci", "role": "member",
                                                               "expires_in_seconds": 3600})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["role"] == "member" and body["expires_at"] and len(body["token"]) >= 43
    member = Api(owner.base_url, body["token"])
    assert member.post("/api/v1/runs", json={"dag": DAG}).status_code == 201
    listed = owner.get(f"/api/v1/tenants/{tenant}/tokens").json()["items"]
    assert any(t["id"] == body["id"] for t in listed) and all("token" not in t for t in listed)
    r = owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "x", "role": "admin"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "role"
    assert owner.delete(f"/api/v1/tenants/{tenant}/tokens/{body['id']}").status_code == 204
    assert stack.call(stack.stack.catalog.verify_token(body["token"])) is None  # revoked


def test_a_project_scoped_token_sees_only_its_projects(world):
    owner, scoped, tenant = world["who"]["tenant-admin"], world["who"]["scoped"], world["tenant"]
    runs = scoped.get("/api/v1/runs").json()["items"]
    assert runs and {r["project"] for r in runs} == {ALPHA}
    assert any(r["id"] == world["alpha_run"] for r in runs) and all(r["id"] != world["run"] for r in runs)
    assert {r["project"] for r in owner.get("/api/v1/runs").json()["items"]} >= {"default", ALPHA}
    assert [p["id"] for p in scoped.get(f"/api/v1/tenants/{tenant}/projects").json()["items"]] == [ALPHA]
    denied = scoped.post("/api/v1/runs", json={"dag": DAG, "project": BETA})
    assert denied.status_code == 403 and BETA in denied.json()["detail"] and ALPHA in denied.json()["detail"]
    hidden = scoped.get("/api/v1/dags")  # the default project is not its
    assert hidden.status_code == 404 and "default" in hidden.json()["detail"]
    made = scoped.post("/api/v1/runs", json={"dag": DAG, "project": ALPHA}).json()
    assert made["project"] == ALPHA and scoped.get(f"/api/v1/runs/{made['id']}").json()["project"] == ALPHA
    tokens = owner.get(f"/api/v1/tenants/{tenant}/tokens").json()["items"]
    assert [t["projects"] for t in tokens if t["name"] == "member" and t["projects"]] == [[ALPHA]]
    r = owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "x", "projects": ["authz-never"]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "body.projects"
    assert "projects create authz-never" in r.json()["errors"][0]["hint"]
    assert owner.post(f"/api/v1/tenants/{tenant}/tokens", json={"name": "x", "projects": []}).status_code == 422
