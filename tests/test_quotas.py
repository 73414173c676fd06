"""Quotas through the running stack: a resource quota holds tasks back with the reason on the
task (then lets them go when raised), submissions past max_active_runs or max_dag_tasks get
429 with Retry-After, and limits are validated (422 naming the field)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import Api

ROOT = Path(__file__).resolve().parent.parent
LIMITS_APPLY_S = 1.3  # coordinators and submission read limits every second


def _tenant(api: Api, stack, tenant: str) -> Api:
    stack.call(stack.stack.catalog.ensure_tenant(tenant))
    return Api(api.base_url, stack.call(stack.stack.catalog.create_token(tenant, "tests")))


def _limits(api: Api, tenant: str, **limits) -> dict:
    r = api.put(f"/api/v1/tenants/{tenant}/limits", json={"weight": 1, **limits})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_cpu_quota_holds_tasks_back_with_the_reason_and_a_raise_releases_them(api, stack):
    tenant = "quota-cpu"
    member = _tenant(api, stack, tenant)
    # The default pool's slots reserve no resources, so each light attempt counts 1 core.
    assert _limits(api, tenant, max_cpu="2")["max_cpu"] == "2"
    time.sleep(LIMITS_APPLY_S)
    dag = {"name": "cpu-quota", "tasks": [{"name": f"t{i}", "fn": "tests.tasks:nap", "args": [0.4]} for i in range(14)]}
    run_id = member.post("/api/v1/runs", json={"dag": dag}).json()["id"]
    reason = f"quota: tenant {tenant} max_cpu 2 (2 in use)"
    before, after, reasons = [], [], set()
    raised = threading.Event()

    def raise_quota() -> None:
        _limits(api, tenant, max_cpu="4000m")
        raised.set()

    raiser = threading.Thread(target=raise_quota)
    while True:
        run = member.get(f"/api/v1/runs/{run_id}").json()
        running = sum(t["status"] == "running" for t in run["tasks"])
        (after if raised.is_set() else before).append(running)
        waiting = {t["waiting_for"] for t in run["tasks"] if t.get("waiting_for")}
        assert all(t["status"] == "queued" for t in run["tasks"] if t.get("waiting_for"))
        if not raised.is_set():
            reasons |= waiting
            if reason in waiting and not raiser.is_alive() and raiser.ident is None:
                raiser.start()  # seen held back, with the reason: now raise the quota
        if run["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.03)
    assert run["status"] == "succeeded", run
    assert reason in reasons, reasons  # held back, and the run's JSON said why
    assert before and max(before) <= 2, before
    assert after and 2 < max(after) <= 4, after  # the raised quota let more run at once
    assert not any(t.get("waiting_for") for t in run["tasks"])
    _limits(api, tenant)  # no limits


def test_a_fan_out_held_back_by_a_quota_makes_its_instances_as_they_are_dispatched(api, stack):
    """A map whose tenant may run 2 tasks at once is made a chunk at a time as its pool takes
    the instances, not all up front: the instances made and not yet ended stay within two
    chunks (32 each) and the 2 running, however long the map is; every instance still runs."""
    tenant, items, chunk = "quota-fan", 400, 32
    member = _tenant(api, stack, tenant)
    _limits(api, tenant, max_running_tasks=2)
    time.sleep(LIMITS_APPLY_S)
    fan = {"name": "held-fan", "params": {"items": []}, "tasks": [
        {"name": "nap", "fn": "tests.tasks:nap", "args": ["{{ item }}"], "map": {"over": "{{ params.items }}"}}]}
    run_id = member.post("/api/v1/runs", json={"dag": fan, "params": {"items": [0.002] * items}}).json()["id"]
    ahead, deadline = [], time.monotonic() + 180
    while True:
        run = member.get(f"/api/v1/runs/{run_id}").json()
        made = [t for t in run["tasks"] if t["key"] != "nap"]
        ahead.append(sum(t["status"] in ("queued", "running") for t in made))
        if run["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, run["status"]
        time.sleep(0.05)
    _limits(api, tenant)  # no limits
    assert run["status"] == "succeeded", run["error"]
    assert len(made) == items and all(t["status"] == "succeeded" for t in made)
    # Made all at once, some 400 would wait at the first look.
    assert max(ahead) <= 2 * chunk + 2, ahead


def test_a_cancel_ends_a_fan_out_whose_making_waits_for_its_quota(api, stack):
    """A map whose next chunk waits while its tenant's quota is held by another of its runs is
    cancelled at once: the cancel stops the making without waiting for a slot to open."""
    tenant = "quota-fan-cancel"
    member = _tenant(api, stack, tenant)
    _limits(api, tenant, max_running_tasks=2)
    time.sleep(LIMITS_APPLY_S)
    hold = {"name": "hold", "tasks": [{"name": f"h{i}", "fn": "tests.tasks:spin", "args": [30]} for i in range(2)]}
    holder = member.post("/api/v1/runs", json={"dag": hold}).json()["id"]
    member.wait(holder, timeout=30, until=lambda r: all(t["status"] == "running" for t in r["tasks"]))
    fan = {"name": "held-fan", "params": {"items": []}, "tasks": [
        {"name": "nap", "fn": "tests.tasks:nap", "args": ["{{ item }}"], "map": {"over": "{{ params.items }}"}}]}
    run_id = member.post("/api/v1/runs", json={"dag": fan, "params": {"items": [0] * 400}}).json()["id"]
    member.wait(run_id, timeout=30, until=lambda r: len(r["tasks"]) > 1)
    time.sleep(0.5)  # the next chunk's timer comes due and waits for the queued instances
    assert member.post(f"/api/v1/runs/{run_id}/cancel").status_code == 202
    run = member.wait(run_id, timeout=20)
    still = member.get(f"/api/v1/runs/{holder}").json()["status"]
    member.post(f"/api/v1/runs/{holder}/cancel")
    member.wait(holder, timeout=60)
    _limits(api, tenant)
    made = [t for t in run["tasks"] if t["key"] != "nap"]
    assert run["status"] == "cancelled", run["error"]
    assert still == "running"  # ended while the quota was still held
    assert 0 < len(made) < 400 and all(t["status"] == "cancelled" for t in made)


def test_the_cli_shows_why_a_task_waits(api, stack):
    tenant = "quota-cli"
    member = _tenant(api, stack, tenant)
    _limits(api, tenant, max_gpu=0, max_memory="1Gi")  # a light slot counts 1Gi: one at a time
    time.sleep(LIMITS_APPLY_S)
    dag = {"name": "mem-quota", "tasks": [{"name": f"t{i}", "fn": "tests.tasks:nap", "args": [1.5]} for i in range(3)]}
    run_id = member.post("/api/v1/runs", json={"dag": dag}).json()["id"]
    member.wait(run_id, timeout=30, until=lambda r: any(t.get("waiting_for") for t in r["tasks"]))
    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=member.token)
    out = subprocess.run([sys.executable, "-m", "flowforge", "run", run_id], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "waiting for" in out.stdout and f"quota: tenant {tenant} max_memory 1Gi (1Gi in use)" in out.stdout, out.stdout
    assert member.wait(run_id, timeout=60)["status"] == "succeeded"
    _limits(api, tenant)


def test_max_active_runs_answers_429_with_retry_after_and_holds_under_concurrency(api, stack):
    tenant = "quota-runs"
    member = _tenant(api, stack, tenant)
    _limits(api, tenant, max_active_runs=3)
    time.sleep(LIMITS_APPLY_S)
    dag = {"name": "long", "tasks": [{"name": "a", "fn": "tests.tasks:spin", "args": [30]}]}
    with ThreadPoolExecutor(10) as pool:  # ten at once: the per-tenant lock lets exactly three in
        answers = list(pool.map(lambda _: member.post("/api/v1/runs", json={"dag": dag}), range(10)))
    created = [r.json()["id"] for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code != 201]
    assert len(created) == 3, [r.status_code for r in answers]
    assert {r.status_code for r in refused} == {429}
    r = refused[0]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["type"] == "urn:flowforge:problem:quota-exceeded" and body["status"] == 429
    (problem,) = body["errors"]
    assert problem["path"] == "max_active_runs"
    assert f"tenant {tenant} has 3 active" in problem["message"] and "at most 3" in problem["message"]
    assert "raise max_active_runs" in problem["hint"] and "Retry-After" in problem["hint"]

    # A project's own limit narrows the tenant's.
    r = api.put(f"/api/v1/tenants/{tenant}/projects/default/limits", json={"max_active_runs": 1})
    assert r.status_code == 200 and r.json()["max_active_runs"] == 1, r.text
    assert member.get(f"/api/v1/tenants/{tenant}/projects/default/limits").json()["max_active_runs"] == 1
    _limits(api, tenant, max_active_runs=10)
    time.sleep(LIMITS_APPLY_S)
    r = member.post("/api/v1/runs", json={"dag": dag})
    assert r.status_code == 429 and f"project {tenant}/default has 3 active" in r.json()["errors"][0]["message"]

    # Cancelled runs are no longer active; retrying one makes it active again, so it counts.
    api.put(f"/api/v1/tenants/{tenant}/projects/default/limits", json={})
    _limits(api, tenant, max_active_runs=2)
    for run_id in created:
        assert member.post(f"/api/v1/runs/{run_id}/cancel").status_code == 202
    for run_id in created:
        member.wait(run_id, timeout=30)
    time.sleep(LIMITS_APPLY_S)
    two = [member.post("/api/v1/runs", json={"dag": dag}) for _ in range(2)]
    assert [r.status_code for r in two] == [201, 201]
    r = member.post(f"/api/v1/runs/{created[0]}/retry")
    assert r.status_code == 429 and r.json()["errors"][0]["path"] == "max_active_runs", r.text
    for r in two:
        member.post(f"/api/v1/runs/{r.json()['id']}/cancel")
    _limits(api, tenant)


def test_max_dag_tasks_counts_static_tasks_and_maps_over_params(api, stack):
    tenant = "quota-dag"
    member = _tenant(api, stack, tenant)
    _limits(api, tenant, max_dag_tasks=5)
    time.sleep(LIMITS_APPLY_S)
    six = {"name": "six", "tasks": [{"name": f"t{i}", "fn": "tests.tasks:noop"} for i in range(6)]}
    r = member.post("/api/v1/runs", json={"dag": six})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    (problem,) = r.json()["errors"]
    assert problem["path"] == "max_dag_tasks"
    assert "would have 6 tasks (6 tasks in the spec)" in problem["message"] and "at most 5" in problem["message"]
    assert "split the DAG" in problem["hint"]

    mapped = {"name": "mapped", "params": {"items": [1, 2, 3, 4, 5]}, "tasks": [
        {"name": "each", "fn": "tests.tasks:double", "args": ["{{ item }}"], "map": {"over": "{{ params.items }}"}},
        {"name": "sum", "fn": "tests.tasks:total", "args": ["{{ tasks.each.output }}"], "depends": ["each"]},
    ]}
    r = member.post("/api/v1/runs", json={"dag": mapped})
    assert r.status_code == 429 and "would have 6 tasks" in r.json()["errors"][0]["message"]
    assert "instances of 1 map over params" in r.json()["errors"][0]["message"]
    r = member.post("/api/v1/runs", json={"dag": mapped, "params": {"items": [1, 2, 3, 4]}})
    assert r.status_code == 201, r.text  # four instances and one task: five
    assert member.wait(r.json()["id"])["status"] == "succeeded"
    over_output = {"name": "later", "tasks": [
        {"name": "list", "fn": "tests.tasks:numbers", "args": [50]},
        {"name": "each", "fn": "tests.tasks:double", "args": ["{{ item }}"],
         "map": {"over": "{{ tasks.list.output }}"}, "depends": ["list"]},
    ]}
    r = member.post("/api/v1/runs", json={"dag": over_output})  # its size is unknown at submission
    assert r.status_code == 201, r.text
    member.wait(r.json()["id"])
    _limits(api, tenant)


def test_limits_are_validated_shown_as_quantities_and_set_from_the_cli(api, other_api, stack):
    tenant = "quota-valid"
    _tenant(api, stack, tenant)
    for body, field in (({"max_cpu": "lots"}, "body.max_cpu"), ({"max_cpu": "0.0001"}, "body.max_cpu"),
                        ({"max_memory": "-1Gi"}, "body.max_memory"), ({"max_memory": True}, "body.max_memory"),
                        ({"max_gpu": -1}, "body.max_gpu"), ({"max_active_runs": 0}, "body.max_active_runs"),
                        ({"max_dag_tasks": "many"}, "body.max_dag_tasks")):
        r = api.put(f"/api/v1/tenants/{tenant}/limits", json=body)
        assert r.status_code == 422, (body, r.text)
        assert [e["path"] for e in r.json()["errors"]] == [field], r.json()
    got = _limits(api, tenant, max_cpu=2.5, max_memory=8 * 2**30, max_gpu=1, max_running_tasks=7)
    assert (got["max_cpu"], got["max_memory"], got["max_gpu"], got["max_running_tasks"]) == ("2500m", "8Gi", 1, 7)
    assert api.get(f"/api/v1/tenants/{tenant}/limits").json() == got
    # A project's limits only narrow its tenant's: its tenant-admins may set them, members not.
    member = Api(api.base_url, stack.call(stack.stack.catalog.create_token("other-tenant", "m", "member")))
    r = member.put("/api/v1/tenants/other-tenant/projects/default/limits", json={"max_gpu": 1})
    assert r.status_code == 403 and "tenant-admin" in r.json()["detail"]
    r = other_api.put("/api/v1/tenants/other-tenant/projects/default/limits", json={"max_gpu": 1})
    assert r.status_code == 200 and r.json() == {"tenant": "other-tenant", "project": "default", "max_gpu": 1,
                                                 "max_running_tasks": None, "max_cpu": None, "max_memory": None,
                                                 "max_active_runs": None, "max_dag_tasks": None}
    assert other_api.put("/api/v1/tenants/other-tenant/projects/default/limits", json={}).status_code == 200
    r = api.put(f"/api/v1/tenants/{tenant}/projects/nope/limits", json={"max_gpu": 1})
    assert r.status_code == 404
    assert other_api.get(f"/api/v1/tenants/{tenant}/projects/default/limits").status_code == 404

    env = dict(os.environ, FLOWFORGE_URL=api.base_url, FLOWFORGE_TOKEN=api.token)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowforge", "tenants", "limits", tenant, *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    out = cli("--max-memory", "32Gi", "--max-cpu", "none", "--max-dag-tasks", "100")
    assert out.returncode == 0, out.stderr
    assert "at most 7 attempts in flight" in out.stdout  # kept
    assert "max_cpu unlimited, max_memory 32Gi, max_gpu 1, max_active_runs unlimited, max_dag_tasks 100" in out.stdout
    out = cli("--max-cpu", "lots")
    assert out.returncode == 2 and "max_cpu" in out.stderr and "not a quantity" in out.stderr, out.stderr
    out = cli("--project", "default", "--max-active-runs", "4")
    assert out.returncode == 0 and f"{tenant}/default:" in out.stdout and "max_active_runs 4" in out.stdout, out
    _limits(api, tenant)
