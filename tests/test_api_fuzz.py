"""Schema-driven fuzzing of every route: valid and malformed requests, generated from the
API's own OpenAPI document by schemathesis, never get a 5xx, and every error is a problem."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

OPERATIONS = [
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
    ("POST", "/api/v1/dags"), ("GET", "/api/v1/dags"), ("GET", "/api/v1/dags/{name}"),
    ("PUT", "/api/v1/dags/{name}"), ("DELETE", "/api/v1/dags/{name}"),
    ("POST", "/api/v1/runs"), ("GET", "/api/v1/runs"), ("GET", "/api/v1/runs/{run_id}"),
    ("POST", "/api/v1/runs/{run_id}/cancel"), ("POST", "/api/v1/runs/{run_id}/retry"),
    ("GET", "/api/v1/runs/{run_id}/logs"), ("POST", "/api/v1/runs/{run_id}/logs/ticket"),
    ("GET", "/api/v1/pools"), ("POST", "/api/v1/pools/annotations"),
    ("GET", "/api/v1/tenants/{tenant}/limits"), ("PUT", "/api/v1/tenants/{tenant}/limits"),
    ("POST", "/api/v1/tenants/{tenant}/tokens"), ("GET", "/api/v1/tenants/{tenant}/tokens"),
    ("DELETE", "/api/v1/tenants/{tenant}/tokens/{token_id}"),
    ("POST", "/api/v1/tenants"), ("GET", "/api/v1/tenants"),
    ("POST", "/api/v1/tenants/{tenant}/projects"), ("GET", "/api/v1/tenants/{tenant}/projects"),
    ("GET", "/api/v1/tenants/{tenant}/projects/{project}"), ("DELETE", "/api/v1/tenants/{tenant}/projects/{project}"),
    ("GET", "/api/v1/tenants/{tenant}/projects/{project}/limits"),
    ("PUT", "/api/v1/tenants/{tenant}/projects/{project}/limits"),
]
# Routes that change the running system are fuzzed with a token that may not change it: a
# generated request that happened to be valid would otherwise resize the test's agent pools.
READ_ONLY_TOKEN = {("POST", "/api/v1/pools/annotations"), ("PUT", "/api/v1/tenants/{tenant}/limits"),
                   ("POST", "/api/v1/tenants/{tenant}/tokens"), ("DELETE", "/api/v1/tenants/{tenant}/tokens/{token_id}"),
                   ("POST", "/api/v1/tenants"), ("POST", "/api/v1/tenants/{tenant}/projects"),
                   ("DELETE", "/api/v1/tenants/{tenant}/projects/{project}"),
                   ("PUT", "/api/v1/tenants/{tenant}/projects/{project}/limits")}


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(api.base_url + "/openapi.json")


def test_the_fuzzed_operations_are_every_route(api_schema):
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Negative (malformed) generation needs something to get wrong: the health routes take nothing.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or p not in ("/healthz", "/readyz", "/metrics")]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_request_gets_a_server_error(api, stack, api_schema, method, path, mode):
    operation = api_schema[path][method]
    token = api.token
    if (method, path) in READ_ONLY_TOKEN:
        token = stack.call(stack.stack.catalog.create_token("default", "fuzz", role="viewer"))
    auth = {"Authorization": f"Bearer {token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=int(os.environ.get("FLOWFORGE_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        for headers in (auth, {}):
            response = case.call(headers=headers)
            assert response.status_code < 500, (method, case.formatted_path, response.status_code, response.text[:500])
            if response.status_code >= 400:
                content_type = (response.headers.get("content-type") or [""])[0]
                assert content_type.startswith("application/problem+json"), response.text[:300]

    check()
