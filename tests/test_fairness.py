"""Fair share through the running stack: a tenant arriving while another's attempts fill a
pool (its slots and the prefetch beyond them) runs next, not after the other's prefetched
attempts already in the pool's stream."""

from __future__ import annotations

import time
from datetime import datetime

from tests.conftest import Api

SLOTS = 16  # the test pool: 2 agents x 8 slots; prefetch 1.0 doubles what may be in flight


def _tenant(api: Api, stack, tenant: str) -> Api:
    stack.call(stack.stack.catalog.ensure_tenant(tenant))
    return Api(api.base_url, stack.call(stack.stack.catalog.create_token(tenant, "tests")))


def _started(run: dict) -> list[datetime]:
    return [datetime.fromisoformat(a["started_at"]) for t in run["tasks"] for a in t["attempts"] if a["started_at"]]


def _wait(member: Api, run_id: str, done, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = member.get(f"/api/v1/runs/{run_id}").json()
        if done(run):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.02)


def test_a_newcomer_runs_before_the_prefetched_attempts_of_a_flooding_tenant(api, stack):
    a, b = _tenant(api, stack, "flood-a"), _tenant(api, stack, "flood-b")
    flood = {"name": "flood", "params": {"items": []}, "tasks": [
        {"name": "nap", "fn": "tests.tasks:nap", "args": ["{{ item }}"], "map": {"over": "{{ params.items }}"}}]}
    # Naps long enough that B arrives within the first wave even on a loaded machine.
    a_run = a.post("/api/v1/runs", json={"dag": flood, "params": {"items": [1.5] * (3 * SLOTS)}}).json()["id"]
    # A fills the pool: its slots run, and as many attempts again wait in the stream.
    _wait(a, a_run, lambda run: sum(bool(t["attempts"]) for t in run["tasks"]) >= 2 * SLOTS)
    b_run = b.post("/api/v1/runs", json={"dag": {"name": "quick", "tasks": [
        {"name": "t", "fn": "tests.tasks:nap", "args": [0]}]}}).json()["id"]
    b_done = _wait(b, b_run, lambda run: run["status"] == "succeeded")
    (b_start,) = _started(b_done)
    a_done = _wait(a, a_run, lambda run: run["status"] == "succeeded")
    ahead = sum(s < b_start for s in _started(a_done))
    # First come, first served in the stream, B would start after all 2 x SLOTS of A's
    # attempts in flight when it arrived. Taken back, A's prefetched ones go after B: B starts
    # with the second wave, on the first agent to read; the other agent's share of that wave
    # (SLOTS / 2) may start a moment before it.
    assert ahead <= 2 * SLOTS - SLOTS // 2, ahead
    assert len(_started(a_done)) == 3 * SLOTS  # every attempt taken back ran exactly once


def test_a_large_fan_out_does_not_hold_up_another_tenants_run(api, stack):
    """A's fan-out is made a chunk of instances per coordinator cycle, so B's run, submitted
    right after it, is handled in between: it ends while A's instances are still being made.
    Made all at once, A's instances would all exist before B's run was even read."""
    a, b = _tenant(api, stack, "fan-a"), _tenant(api, stack, "fan-b")
    items = 3000
    fan = {"name": "fan", "params": {"items": []}, "tasks": [
        {"name": "nap", "fn": "tests.tasks:nap", "args": ["{{ item }}"],
         "map": {"over": "{{ params.items }}", "max_items": items}}]}
    a_run = a.post("/api/v1/runs", json={"dag": fan, "params": {"items": [0] * items}}).json()["id"]
    b_run = b.post("/api/v1/runs", json={"dag": {"name": "quick", "tasks": [
        {"name": "t", "fn": "tests.tasks:nap", "args": [0]}]}}).json()["id"]
    b_done = _wait(b, b_run, lambda run: run["status"] == "succeeded")
    a_done = _wait(a, a_run, lambda run: run["status"] != "running", timeout=180)
    assert a_done["status"] == "succeeded"
    parent = next(t for t in a_done["tasks"] if t["key"] == "nap")
    assert parent["instances"] == items and len(a_done["tasks"]) == items + 1
    # An instance is queued as it is made: A's last ones were made after B's run had ended.
    made_last = max(datetime.fromisoformat(t["queued_at"]) for t in a_done["tasks"] if t["key"] != "nap")
    assert made_last > datetime.fromisoformat(b_done["finished_at"]), (made_last, b_done["finished_at"])
