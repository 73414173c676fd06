"""Authorisation, property-based: the OpenAPI document declares the bearer scheme on every
/api/v1 operation, and requests generated from that document (schemathesis, positive mode) for
every such operation never get past it:

- no token, a malformed one, a revoked one or an expired one: always 401;
- a viewer's token (of tenant A, or of the operator's tenant): no write succeeds;
- tenant B's tenant-admin and member tokens, the operator's admin token (outside its by-design
  powers over tenants and pools) and a token of A confined to another project, with path
  parameters, query parameters and body fields bound to A's real run ids, token ids, tenant
  id, projects and DAG name: nothing of A's is answered with 2xx or shows up in any 2xx body;
- A's runs (not cancelled, not retried), DAG template versions, tokens (none revoked or
  added), limits and projects are unchanged after each of these;
- and never a 5xx.

The operations come from the live /openapi.json, so a new route is fuzzed without editing this
file. FLOWFORGE_FUZZ_EXAMPLES sets the examples per operation (default 25)."""

from __future__ import annotations

import os
import string
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from flowforge.api import limits
from tests.conftest import Api

EXAMPLES = int(os.environ.get("FLOWFORGE_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PROTECTED = "/api/"  # every route under it needs a token; anything else is public (health, metrics)


def _openapi(api: Api) -> dict[str, Any]:
    response = httpx.get(api.base_url + "/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method in HTTP_METHODS)


# ---- the OpenAPI document ------------------------------------------------------------------


def test_the_openapi_document_declares_bearer_auth_on_every_api_route(api):
    doc = _openapi(api)
    schemes = doc.get("components", {}).get("securitySchemes", {})
    bearer = {name for name, s in schemes.items()
              if s.get("type") == "http" and s.get("scheme", "").lower() == "bearer"}
    assert bearer, f"no HTTP bearer security scheme in components.securitySchemes: {schemes}"
    protected = public = 0
    for method, path in _operations(doc):
        op = doc["paths"][path][method.lower()]
        requirements = op.get("security", doc.get("security")) or []
        if path.startswith(PROTECTED):
            protected += 1
            # The bearer scheme is one way in, and there is no empty {} alternative (which would
            # say "or no credentials at all").
            assert any(set(r) & bearer for r in requirements), (method, path, requirements)
            assert all(r for r in requirements), (method, path, requirements)
            assert "401" in op.get("responses", {}), f"{method} {path} does not document its 401"
        else:
            public += 1
            assert not requirements, f"{method} {path} is public but declares {requirements}"
    assert protected >= 10 and {"/healthz", "/readyz"} <= set(doc["paths"]), (protected, public)


# ---- tenant A, whose objects the others go after -------------------------------------------


@dataclass
class World:
    tenant: str  # tenant A
    other: str  # tenant B
    owner: Api  # A's tenant-admin
    template: str  # A's DAG template
    projects: list[str]  # A's projects
    marker: str  # in A's template's description: no one else ever sees it
    runs: list[str]  # A's runs: one running, one failed, one succeeded
    token_ids: list[str]  # A's tokens
    tokens: dict[str, str]  # principal -> token
    dead: dict[str, str] = field(default_factory=dict)  # revoked and expired tokens
    snapshot: Any = None

    def unique(self) -> set[str]:
        """Values that name A's objects and nothing else: a 2xx for a request naming one of
        them, or a 2xx body mentioning one, is a cross-tenant leak."""
        forms = set()
        for run in self.runs:
            forms |= {run, run.upper(), "{" + run + "}", run.replace("-", ""), f"urn:uuid:{run}"}
        return forms | set(self.token_ids) | {self.tenant}

    def secrets(self) -> set[str]:
        return set(self.runs) | set(self.token_ids) | {self.tenant, self.marker}

    def bindings(self, *callers: str) -> dict[str, list[str]]:
        """Real values for path parameters, query parameters and body fields, by name (a tenant:
        A, or the caller's own); for a name not listed here (a new route's), any of A's values."""
        runs = sorted(self.unique() - set(self.token_ids) - {self.tenant})  # each run in every form
        tenants = [self.tenant, *callers]
        return {"run_id": runs, "token_id": self.token_ids, "tenant": tenants, "name": [self.template],
                "project": self.projects}

    def state(self) -> dict[str, Any]:
        """What A has, as A's tenant-admin sees it: nothing another token does may change it."""
        out: dict[str, Any] = {}
        for run in self.runs:
            r = self.owner.get(f"/api/v1/runs/{run}")
            assert r.status_code == 200, r.text
            body = r.json()
            out[run] = (body["status"], body["cancel_requested"],
                        sorted((t["key"], t["status"], t["attempt"]) for t in body["tasks"]))
        runs = self.owner.get("/api/v1/runs", params={"limit": 500}).json()
        out["runs"] = sorted(r["id"] for r in runs["items"])
        dag = self.owner.get(f"/api/v1/dags/{self.template}")
        assert dag.status_code == 200, dag.text
        out["dag"] = (dag.json()["versions"], dag.json()["spec"])
        out["dags"] = sorted((d["name"], d["versions"]) for d in self.owner.get("/api/v1/dags").json()["items"])
        tokens = self.owner.get(f"/api/v1/tenants/{self.tenant}/tokens")
        assert tokens.status_code == 200, tokens.text
        out["tokens"] = sorted((t["id"], t["role"], t["expires_at"], t["revoked_at"]) for t in tokens.json()["items"])
        out["limits"] = self.owner.get(f"/api/v1/tenants/{self.tenant}/limits").json()
        projects = self.owner.get(f"/api/v1/tenants/{self.tenant}/projects", params={"limit": 500})
        out["projects"] = projects.json() if projects.status_code == 200 else projects.status_code
        return out


def _dag(name: str, fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "tasks": [{"name": "t", "fn": fn, "args": list(args)}], **extra}


@pytest.fixture(scope="module")
def world(api, stack) -> Iterable[World]:
    catalog = stack.stack.catalog
    tag = uuid.uuid4().hex[:8]
    a, b = f"fuzz-a-{tag}", f"fuzz-b-{tag}"

    def token(tenant: str, role: str, ttl: timedelta | None = None) -> str:
        return stack.call(catalog.create_token(tenant, f"fuzz-{role}", role, ttl))

    owner = Api(api.base_url, token(a, "tenant-admin"))
    tokens = {"a-member": token(a, "member"), "a-viewer": token(a, "viewer"),  # A's member: one more to revoke
              "b-tenant-admin": token(b, "tenant-admin"), "b-member": token(b, "member"),
              "operator": api.token, "operator-viewer": token("default", "viewer")}
    dead = {}
    for tenant, role in ((a, "tenant-admin"), ("default", "admin")):
        dead[f"expired {role}"] = token(tenant, role, timedelta(seconds=-1))
        revoked = token(tenant, role)
        assert stack.call(catalog.verify_token(revoked)) is not None  # it worked until now
        assert stack.call(catalog.revoke_token(revoked))
        dead[f"revoked {role}"] = revoked

    template, marker = f"tpl-{tag}", f"only-tenant-a-sees-this-{tag}"
    projects = ["default"]
    if owner.post(f"/api/v1/tenants/{a}/projects", json={"id": f"proj-{tag}"}).status_code == 201:
        projects.append(f"proj-{tag}")  # one more of A's to aim at, and a token confined to it
        tokens["a-scoped-tenant-admin"] = stack.call(
            catalog.create_token(a, "fuzz-scoped", "tenant-admin", projects=[f"proj-{tag}"]))
    made = owner.put(f"/api/v1/dags/{template}", json={**_dag(template, "tests.tasks:noop"), "description": marker})
    assert made.status_code == 201, made.text

    def start(body: dict[str, Any]) -> str:
        r = owner.post("/api/v1/runs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    ran = start({"name": template})
    failed = start({"dag": _dag(f"fails-{tag}", "tests.tasks:boom")})  # a stranger's retry would restart it
    running = start({"dag": _dag(f"sleeps-{tag}", "tests.tasks:async_sleep", 900)})  # ... and cancel this
    assert owner.wait(ran)["status"] == "succeeded"
    assert owner.wait(failed)["status"] == "failed"
    owner.wait(running, until=lambda r: r["tasks"] and r["tasks"][0]["status"] == "running")
    token_ids = [t["id"] for t in stack.call(catalog.list_tokens(a))]
    w = World(tenant=a, other=b, owner=owner, template=template, projects=projects, marker=marker,
              runs=[running, failed, ran], token_ids=token_ids, tokens=tokens, dead=dead)
    w.snapshot = w.state()
    yield w
    owner.post(f"/api/v1/runs/{running}/cancel")


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(api.base_url + "/openapi.json")


@pytest.fixture(scope="module")
def protected(api) -> list[tuple[str, str]]:
    """Every /api/v1 operation of the live OpenAPI document."""
    found = [(m, p) for m, p in _operations(_openapi(api)) if p.startswith(PROTECTED)]
    assert len(found) >= 10, found
    return found


# ---- generation ----------------------------------------------------------------------------


@st.composite
def bound_cases(draw, operation, bindings: dict[str, list[str]]):
    """A positive case of `operation`; three path parameters in four (and, half the time, a query
    parameter or body field of the same name) replaced by one of A's real values."""
    case = draw(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    anything = sorted({v for values in bindings.values() for v in values})
    for name in list(case.path_parameters or {}):
        if draw(st.integers(0, 3)):
            case.path_parameters[name] = draw(st.sampled_from(bindings.get(name) or anything))
    for fields in (case.query, case.body):
        for key in [k for k in fields if k in bindings] if isinstance(fields, dict) else ():
            if draw(st.booleans()):
                fields[key] = draw(st.sampled_from(bindings[key]))
    return case


def _sent(response) -> str:
    return f"{response.request.method} {response.request.url} body={str(response.request.body)[:300]!r}"


def _problem(response) -> None:
    """Never a 5xx; every error is a problem document."""
    assert response.status_code < 500, (response.status_code, _sent(response), response.text[:500])
    if response.status_code >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/problem+json"), (_sent(response), response.text[:300])


def _call(case, authorization: str | None):
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = case.call(headers=headers, timeout=30)
    assert response.request.headers.get("Authorization") == authorization, "the request did not carry our credentials"
    return response


def _fuzz(api_schema, operations: list[tuple[str, str]], strategy: Callable, check: Callable) -> None:
    """Run `check(method, path, case)` on generated cases of every operation; report every
    operation that failed, not only the first."""
    failures = []
    for method, path in operations:
        operation = api_schema[path][method]

        def one(case, method=method, path=path):
            check(method, path, case)

        try:
            FUZZ(given(strategy(operation))(lambda case: one(case)))()
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            inner = [f"\n    {e!s}" for e in getattr(exc, "exceptions", ())]  # e.g. Hypothesis' FlakyFailure
            failures.append(f"{method} {path}: {type(exc).__name__}: {exc}{''.join(inner)}")
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)


def _refused_before_any_route(response) -> bool:
    """Whether the request guard (flowforge.api.limits) refuses this request before routing,
    and so before authentication: a NUL in the URL, or a body Postgres could not store. It
    answers 400/422 and reveals nothing."""
    url = urlsplit(response.request.url)
    body = response.request.body or b""
    body = body.encode() if isinstance(body, str) else body
    return "\x00" in unquote(url.path) or "%00" in url.query or limits.body_problem(body) is not None


# ---- the properties ------------------------------------------------------------------------

TOKEN_CHARS = string.ascii_letters + string.digits + "-_.~+/="


def malformed(valid: str):
    """Authorization headers that must not authenticate, some built around a valid token."""
    return st.one_of(
        st.sampled_from(["", "Bearer", "Bearer ", "Bearer ff_", f"Bearer {'x' * 201}", f"Basic {valid}",
                         f"Token {valid}", valid, f"Bearer {valid}x", f"Bearer {valid[:-1]}", f"Bearer x{valid}",
                         f"Bearer {valid.swapcase()}", f"Bearer {valid} {valid}", f"Bearer {valid}{'A' * 200}"]),
        st.text(TOKEN_CHARS, max_size=260).map(lambda t: f"Bearer {t}"),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80),
    )


def test_no_credentials_or_bad_ones_always_get_401(world, api_schema, protected):
    """No token or a malformed one, and a revoked or an expired one (A's tenant-admin's or the
    operator's), on any operation, with A's real ids in the path: 401, with a Bearer challenge."""
    seen: Counter[str] = Counter()
    strategy = lambda op: st.tuples(  # noqa: E731
        bound_cases(op, world.bindings()), st.sampled_from(["none", "malformed", "generated"]),
        malformed(world.tokens["operator"]), st.sampled_from(sorted(world.dead)))

    def check(method: str, path: str, drawn) -> None:
        case, kind, bad, dead = drawn
        generated = (case.headers or {}).get("Authorization")  # schemathesis' own guess at a token
        first = {"none": None, "malformed": bad, "generated": generated or bad}[kind]
        for what, authorization in ((kind, first), (dead, f"Bearer {world.dead[dead]}")):
            response = _call(case, authorization)
            seen[f"{what} {response.status_code}"] += 1
            _problem(response)
            if _refused_before_any_route(response):
                assert response.status_code in (400, 413, 422), (what, _sent(response), response.text[:300])
                continue
            assert response.status_code == 401, (what, authorization, _sent(response), response.text[:300])
            assert "Bearer" in (response.headers.get("www-authenticate") or [""])[0], _sent(response)

    _fuzz(api_schema, protected, strategy, check)
    every = {"none", "malformed", "generated", *world.dead}
    assert {k.rsplit(" ", 1)[0] for k in seen if k.endswith(" 401")} == every, seen
    assert world.state() == world.snapshot


# Operations that are not GET but only read, so a viewer may call them (on its own tenant's
# objects). Every other non-GET operation, present or future, is a write to a viewer.
READS_BY_POST = {("POST", "/api/v1/runs/{run_id}/logs/ticket")}


def _still_valid(stack, token: str) -> None:
    assert stack.call(stack.stack.catalog.verify_token(token)) is not None, "a fuzzing token was revoked"


def test_a_viewer_writes_nothing(world, stack, api_schema, protected):
    """A viewer's token, of A itself and of the operator's tenant, on every operation that is
    not a read, with A's real ids in the path: never 2xx (403, or another 4xx); A unchanged."""
    viewers = {"a-viewer": set(), "operator-viewer": world.unique()}  # -> what is another tenant's
    writes = [(m, p) for m, p in protected if m != "GET"]
    assert writes, protected
    seen: Counter[int] = Counter()

    def check(method: str, path: str, case) -> None:
        for who, foreign in viewers.items():
            response = _call(case, f"Bearer {world.tokens[who]}")
            status = response.status_code
            seen[status] += 1
            _problem(response)
            if (method, path) in READS_BY_POST:  # a read: only never on another tenant's objects
                named = set((case.path_parameters or {}).values()) & foreign
                assert not (named and 200 <= status < 300), (f"a {who} token got {status}", _sent(response))
                continue
            assert 400 <= status < 500, (f"a {who} token got {status}", _sent(response), response.text[:300])

    _fuzz(api_schema, writes, lambda op: bound_cases(op, world.bindings("default")), check)
    assert seen[403] > 0 and seen[401] < sum(seen.values()) / 4, seen
    for who in viewers:
        _still_valid(stack, world.tokens[who])
    assert world.state() == world.snapshot


def _operator_may_fuzz(method: str, path: str) -> bool:
    """The operator manages every tenant (/api/v1/tenants...) and sizes pools by design, so it
    is fuzzed on reads elsewhere, and on writes to DAGs and runs only: for it too those are its
    own tenant's. (Its writes to cluster state would resize the shared test stack.)"""
    if path.startswith("/api/v1/tenants"):
        return False
    return method == "GET" or path.startswith(("/api/v1/dags", "/api/v1/runs"))


def test_another_tenant_never_reaches_tenant_a(world, stack, api_schema, protected):
    """Tenant B's tenant-admin and member tokens, the operator's (outside its by-design powers),
    and a tenant-admin token of A confined to another project than A's objects', on every
    operation, with path parameters, query parameters and body fields mixing generated values
    with A's real run ids, token ids, tenant id, project ids and DAG name: never a 2xx for a
    request naming A's objects, never one of A's ids or its template's contents in a 2xx body,
    never a 5xx; A unchanged afterwards."""
    callers = {"b-tenant-admin": world.other, "b-member": world.other, "operator": "default",
               "a-scoped-tenant-admin": world.tenant}  # -> its own tenant, which is no secret to it
    callers = {who: tenant for who, tenant in callers.items() if who in world.tokens}
    unique, secrets = world.unique(), world.secrets()
    seen: Counter[str] = Counter()

    def check(method: str, path: str, case) -> None:
        named_any = set((case.path_parameters or {}).values())
        for who, own in callers.items():
            if who == "operator" and not _operator_may_fuzz(method, path):
                continue
            response = _call(case, f"Bearer {world.tokens[who]}")
            status = response.status_code
            _problem(response)
            seen[f"{who} {status}"] += 1
            named = sorted(named_any & (unique - {own}))
            if named:
                seen[f"{who} named"] += 1
                assert not 200 <= status < 300, (f"{who} got {status} for A's {named}", _sent(response),
                                                 response.text[:300])
            if 200 <= status < 300:
                leaked = sorted(s for s in secrets - {own} if s in response.text)
                assert not leaked, (f"{who} saw A's {leaked}", _sent(response), response.text[:300])

    _fuzz(api_schema, protected, lambda op: bound_cases(op, world.bindings(world.other)), check)
    for who in callers:
        # Meaningful: A's objects were named, and the token was not simply refused (a 401 is
        # right only where a request also carries another credential, e.g. a log ticket).
        total = sum(n for k, n in seen.items() if k.startswith(f"{who} ") and k != f"{who} named")
        assert seen[f"{who} named"] > 0 and seen[f"{who} 401"] < total / 4, (who, seen)
        _still_valid(stack, world.tokens[who])
    assert world.state() == world.snapshot
