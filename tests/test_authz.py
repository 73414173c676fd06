"""The authorisation matrix: every route x role x own/foreign tenant. No cross-tenant read or
write succeeds; every denial has the right status (401 no token, 403 role, 404 foreign)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Api

DAG = {"name": "authz", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}


@pytest.fixture(scope="module")
def world(api, stack):
    """Tenant acme with a token per role, a foreign tenant's token, and acme's objects."""
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    make = lambda t, role: Api(api.base_url, stack.call(stack.stack.catalog.create_token(t, role, role)))  # noqa: E731
    who = {"operator": api, "tenant-admin": make(tenant, "tenant-admin"), "member": make(tenant, "member"),
           "viewer": make(tenant, "viewer"), "foreign": make(f"other-{tenant}", "tenant-admin")}
    owner = who["tenant-admin"]
    run_id = owner.post("/api/v1/runs", json={"dag": DAG}).json()["id"]
    owner.wait(run_id)
    assert owner.put("/api/v1/dags/authz-tpl", json={**DAG, "name": "authz-tpl"}).status_code == 201
    return {"tenant": tenant, "who": who, "run": run_id}


ROLES = ["operator", "tenant-admin", "member", "viewer", "foreign"]
# (method, path, body, expected status per role). Objects are acme's; the operator is another
# tenant too (objects are tenant-scoped for everyone), with cluster-wide powers on top.
MATRIX = [
    ("GET", "/api/v1/runs/{run}", None, [404, 200, 200, 200, 404]),
    ("GET", "/api/v1/runs", None, [200, 200, 200, 200, 200]),
    ("POST", "/api/v1/runs", {"dag": DAG}, [201, 201, 201, 403, 201]),
    ("POST", "/api/v1/runs/{run}/cancel", None, [404, 409, 409, 403, 404]),
    ("POST", "/api/v1/runs/{run}/retry", None, [404, 409, 409, 403, 404]),
    ("GET", "/api/v1/dags", None, [200, 200, 200, 200, 200]),
    ("GET", "/api/v1/dags/authz-tpl", None, [404, 200, 200, 200, 404]),
    ("POST", "/api/v1/dags", {**DAG, "name": "authz-tpl"}, [201, 409, 403, 403, 201]),
    ("DELETE", "/api/v1/dags/authz-never", None, [404, 404, 403, 403, 404]),
    ("GET", "/api/v1/pools", None, [200, 200, 200, 200, 200]),
    ("POST", "/api/v1/pools/annotations", {"node_group": "nowhere", "counts": {"default": 1}},
     [404, 403, 403, 403, 403]),
    ("GET", "/api/v1/tenants/{tenant}/limits", None, [200, 200, 200, 200, 404]),
    ("PUT", "/api/v1/tenants/{tenant}/limits", {"weight": 1}, [200, 403, 403, 403, 403]),
    ("POST", "/api/v1/tenants/{tenant}/tokens", {"name": "x", "role": "viewer"}, [201, 201, 403, 403, 404]),
    ("GET", "/api/v1/tenants/{tenant}/tokens", None, [200, 200, 403, 403, 404]),
    ("DELETE", "/api/v1/tenants/{tenant}/tokens/00000000-0000-0000-0000-000000000000", None,
     [404, 404, 403, 403, 404]),
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_every_route_for_every_role(world, method, path, body, expected):
    url = path.format(run=world["run"], tenant=world["tenant"])
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
