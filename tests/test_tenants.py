"""Tenant limits through the API: a quota of attempts in flight holds (sampled), a change
applies to the next dispatch, and only the operator may set them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import Api

ROOT = Path(__file__).resolve().parent.parent


def _running(api: Api, run_id: str) -> int:
    run = api.get(f"/api/v1/runs/{run_id}").json()
    return sum(t["status"] == "running" for t in run["tasks"])


def test_a_concurrency_quota_holds_and_a_change_applies_to_the_next_dispatch(api, stack):
    tenant = "quota-t"
    stack.call(stack.stack.catalog.ensure_tenant(tenant))
    member = Api(api.base_url, stack.call(stack.stack.catalog.create_token(tenant, "tests")))
    assert api.put(f"/api/v1/tenants/{tenant}/limits", json={"max_running_tasks": 2, "weight": 1}).status_code == 200
    time.sleep(1.5)  # coordinators read limits every second
    dag = {"name": "quota", "tasks": [{"name": f"t{i}", "fn": "tests.tasks:nap", "args": [0.3]} for i in range(30)]}
    run_id = member.post("/api/v1/runs", json={"dag": dag}).json()["id"]
    samples: list[int] = []
    raised = threading.Event()

    def raise_quota() -> None:
        time.sleep(1.0)
        r = api.put(f"/api/v1/tenants/{tenant}/limits", json={"max_running_tasks": 4, "weight": 1})
        assert r.status_code == 200
        raised.set()

    threading.Thread(target=raise_quota).start()
    before, after = [], []
    while True:
        run = member.get(f"/api/v1/runs/{run_id}").json()
        n = sum(t["status"] == "running" for t in run["tasks"])
        (after if raised.is_set() else before).append(n)
        if run["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.03)
    assert run["status"] == "succeeded"
    assert before and max(before) <= 2, before  # never more than the quota
    assert max(after) > 2, after  # the raised quota took effect while the run went on
    samples = before + after
    assert max(samples) <= 4
    api.put(f"/api/v1/tenants/{tenant}/limits", json={"max_running_tasks": None, "weight": 1})


def test_only_the_operator_sets_limits_and_tenants_see_only_theirs(api, other_api, stack):
    other = "other-tenant"
    r = other_api.put(f"/api/v1/tenants/{other}/limits", json={"max_running_tasks": 5, "weight": 1})
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert other_api.get(f"/api/v1/tenants/{other}/limits").json()["tenant"] == other
    assert other_api.get("/api/v1/tenants/default/limits").status_code == 404  # not its own
    r = api.put(f"/api/v1/tenants/{other}/limits", json={"max_running_tasks": 0, "weight": 1})
    assert r.status_code == 422
    assert api.put("/api/v1/tenants/no-such-tenant/limits", json={"weight": 2}).status_code == 404
    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=api.token)
    out = subprocess.run([sys.executable, "-m", "flowforge", "tenants", "limits", other, "--weight", "3"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "unlimited attempts in flight, weight 3" in out.stdout, out.stderr
    assert httpx.get(f"{api.base_url}/api/v1/tenants/{other}/limits").status_code == 401
    api.put(f"/api/v1/tenants/{other}/limits", json={"weight": 1})
