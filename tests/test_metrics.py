"""Metrics: after real runs (light, heavy, one dead-lettered), GET /metrics parses with
Prometheus's own text-format parser and has samples of every metric; label values are bounded
(never a run id or a raw path); the Grafana dashboard asks only for metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowforge import metrics
from flowforge.api import access

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "flowforge-dashboard.json"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)

# Every metric the issue asks for: family name -> labels each sample must carry.
EXPECTED = {
    "flowforge_attempt_ready_to_dispatched_seconds": {"tenant", "pool", "executor"},
    "flowforge_attempt_dispatched_to_started_seconds": {"pool", "executor"},
    "flowforge_stream_length": {"pool", "executor"},
    "flowforge_stream_pending": {"pool", "executor"},
    "flowforge_dead_letter_length": {"pool", "executor"},
    "flowforge_http_request_duration_seconds": {"method", "route", "status"},
    "flowforge_pod_startup_seconds": set(),
    "flowforge_task_duration_seconds": {"pool", "executor", "status"},
    "flowforge_runs": {"tenant", "status"},
    "flowforge_runs_finished": {"tenant", "status"},
    "flowforge_agents": {"pool", "state"},
    "flowforge_reclaimed": {"pool", "executor"},
    "flowforge_dead_lettered": {"pool", "executor"},
    "flowforge_scrape_source_up": {"source"},
    "flowforge_coordinators": set(),
    "flowforge_board_claims": {"outcome"},
}


def _scrape(base_url: str) -> dict:
    r = httpx.get(base_url + "/metrics", timeout=30)  # no token: public, like the probes
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _samples(families: dict, name: str, **labels: str) -> list:
    return [s for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_every_metric_has_samples_after_a_run(api, client):
    # A dead letter: the task kills every agent that runs it, until max_deliveries (3).
    poison = client.submit({"name": "metrics-poison", "tasks": [{"name": "p", "fn": "tests.tasks:crash_agent"}]})
    dag = {"name": "metrics", "tasks": [
        {"name": "light", "fn": "tests.tasks:const", "args": [2]},
        {"name": "heavy", "fn": "tests.tasks:double", "args": ["{{ tasks.light.output }}"], "executor": "heavy",
         "depends": ["light"]},
        {"name": "bad", "fn": "tests.tasks:boom"},
    ]}
    done = api.post("/api/v1/runs", json={"dag": dag}).json()["id"]
    assert api.wait(done, timeout=90)["status"] == "failed"  # `bad` failed; light and heavy succeeded
    assert api.get("/api/v1/runs/not-a-run-id").status_code in (404, 422)
    assert httpx.get(api.base_url + "/nowhere/" + done).status_code == 404
    assert client.wait(poison, timeout=120)["status"] == "failed"
    running = api.post("/api/v1/runs", json={"dag": {"name": "metrics-slow", "tasks": [
        {"name": "nap", "fn": "tests.tasks:nap", "args": [2]}]}}).json()["id"]
    api.wait(running, until=lambda r: r["status"] == "running")

    families = _scrape(api.base_url)
    for name, labels in EXPECTED.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].samples, f"{name} has no samples"
        for s in families[name].samples:
            assert labels <= set(s.labels) - {"le"}, (name, s)

    def count(name: str, **labels: str) -> float:
        return sum(s.value for s in _samples(families, name, **labels) if s.name == name + "_count")

    assert count("flowforge_attempt_ready_to_dispatched_seconds", tenant="default", pool="default") >= 2
    assert count("flowforge_attempt_ready_to_dispatched_seconds", pool="~pods", executor="heavy") >= 1
    assert count("flowforge_attempt_dispatched_to_started_seconds", pool="default", executor="light") >= 2
    assert count("flowforge_attempt_dispatched_to_started_seconds", pool="~pods", executor="heavy") >= 1
    assert count("flowforge_task_duration_seconds", pool="default", status="succeeded") >= 1
    assert count("flowforge_task_duration_seconds", pool="default", status="failed") >= 1
    assert count("flowforge_task_duration_seconds", pool="~pods", executor="heavy", status="succeeded") >= 1
    assert count("flowforge_pod_startup_seconds") >= 1
    assert count("flowforge_http_request_duration_seconds", method="POST", route="/api/v1/runs", status="201") >= 2
    assert count("flowforge_http_request_duration_seconds", method="GET", route="/api/v1/runs/{run_id}") >= 1
    assert count("flowforge_http_request_duration_seconds", route=access.UNMATCHED, status="404") >= 1
    finished = {(s.labels["tenant"], s.labels["status"]): s.value for s in families["flowforge_runs_finished"].samples
                if s.name.endswith("_total")}
    assert finished[("default", "failed")] >= 2
    assert _samples(families, "flowforge_runs", tenant="default", status="running")[0].value >= 1
    agents = {s.labels["state"]: s.value for s in _samples(families, "flowforge_agents", pool="default")}
    assert agents["desired"] >= 1 and agents["ready"] >= 1 and "busy" in agents
    pools = {s.labels["pool"] for s in families["flowforge_stream_length"].samples}
    assert {"default", "~pods"} <= pools
    assert sum(s.value for s in _samples(families, "flowforge_dead_lettered", pool="default")) >= 1
    assert sum(s.value for s in _samples(families, "flowforge_reclaimed", pool="default")) >= 1
    assert sum(s.value for s in _samples(families, "flowforge_dead_letter_length", pool="default")) >= 1
    assert {s.labels["source"]: s.value for s in families["flowforge_scrape_source_up"].samples} == {
        "redis": 1.0, "postgres": 1.0}
    assert families["flowforge_coordinators"].samples[0].value == 1  # the session's one coordinator
    assert api.wait(running)["status"] == "succeeded"
    # Leave the pool as we found it: the agents the poison task killed are back.
    view = lambda: client.bg.stack.manager.status()["default"]  # noqa: E731
    client.wait(running, until=lambda _: view()["ready"] >= view()["desired"] and not view()["starting"], timeout=60)


def test_label_values_are_bounded(api):
    """No sample names a run (or any id), a raw path or a query string."""
    run_id = api.post("/api/v1/runs", json={"dag": {"name": "metrics-ids", "tasks": [
        {"name": "t", "fn": "tests.tasks:noop"}]}}).json()["id"]
    api.wait(run_id)
    api.get(f"/api/v1/runs/{run_id}", params={"logs": "true"})
    api.get(f"/api/v1/runs/{run_id}/logs", params={"ticket": "x.y"})
    families = _scrape(api.base_url)
    routes = set()
    for family in families.values():
        for s in family.samples:
            for key, value in s.labels.items():
                assert not UUID.search(value), (s.name, key, value)
                assert "?" not in value and run_id not in value, (s.name, key, value)
            if "route" in s.labels:
                routes.add(s.labels["route"])
    assert "/api/v1/runs/{run_id}" in routes and "/api/v1/runs/{run_id}/logs" in routes
    assert all(r.startswith("/") or r == access.UNMATCHED for r in routes), routes


def test_metrics_is_public_and_declares_no_security(api):
    doc = httpx.get(api.base_url + "/openapi.json").json()
    assert not doc["paths"]["/metrics"]["get"].get("security")


def _families_of(m: metrics.Metrics) -> set[str]:
    """Every sample name the module can expose (with a reading of every kind of state)."""
    m.dispatched("t", "p", 0.1)
    m.started("p", 0.1)
    m.finished("p", "succeeded", 1.0)
    m.run_ended("t", "succeeded")
    m.pod_started(1.0)
    m.request("GET", "/x", 200, 0.1)

    async def reader(_timeout: float) -> metrics.Reading:
        return metrics.Reading(streams={"p": (1, 1, 1)}, agents={"p": {"ready": 1}}, runs={("t", "running"): 1},
                               reclaimed={"p": 1}, dead_lettered={"p": 1}, up={"redis": True})

    m.reader = reader
    text = asyncio.run(m.render()).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist():
    names = _families_of(metrics.Metrics())
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bflowforge_[a-z_]+", expr):
            assert name in names, f"{name} (in {expr!r}) is not a metric flowforge/metrics.py exposes"
            used.add(name)
    # Every metric family of the issue is on the dashboard.
    for family in EXPECTED:
        if family == "flowforge_scrape_source_up":
            continue
        assert any(u == family or u.startswith(family + "_") for u in used), f"no panel shows {family}"
    assert doc["title"] and all(p.get("title") for p in doc["panels"])


def test_the_coordinator_serves_metrics_without_the_api():
    m = metrics.Metrics()
    m.dispatched("t", "default", 0.002)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=access.exposition_app(m))
        async with httpx.AsyncClient(transport=transport, base_url="http://coordinator") as http:
            return await http.get(path)

    ok = asyncio.run(get("/metrics"))
    assert ok.status_code == 200
    names = {f.name for f in text_string_to_metric_families(ok.text)}
    assert "flowforge_attempt_ready_to_dispatched_seconds" in names
    assert asyncio.run(get("/elsewhere")).status_code == 404


@pytest.mark.parametrize(("value", "bucket"), [(0.0, "0.001"), (0.001, "0.001"), (0.0011, "0.0025"), (-1.0, "0.001"),
                                               (1e9, "+Inf")])
def test_a_histogram_counts_a_value_in_the_first_bucket_that_holds_it(value, bucket):
    m = metrics.Metrics()
    m.dispatched("t", "p", value)
    text = asyncio.run(m.render()).decode()
    fam = next(f for f in text_string_to_metric_families(text)
               if f.name == "flowforge_attempt_ready_to_dispatched_seconds")
    first = next(s.labels["le"] for s in fam.samples if s.name.endswith("_bucket") and s.value == 1)
    assert first == bucket
