"""Heavy tasks on the Kubernetes Pod runtime, end to end: a coordinator configured with a
kubeconfig that points at an in-test API server, whose kubelet really runs the Pod-side
runtime for Python tasks and scripts containers from their image name."""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from flowforge import settings
from flowforge.backends.postgres import admin
from flowforge.runtime import BackgroundStack, Services
from tests.conftest import Client
from tests.kube_fake import FakeKube

ROOT = Path(__file__).resolve().parent.parent
NS = "flowforge-jobs"


def _kubelet(fake: FakeKube):
    """Script each Pod: Python tasks run `python -m agents.podrun` for real (their output is the
    Pod's log); `test/<kind>-once` images misbehave on attempt 1 only; the rest by image."""
    scripted = fake.by_image(step=0.02)

    def behaviour(pod: dict) -> list:
        task = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value", "") for e in task.get("env") or ()}
        if "FLOWFORGE_ATTEMPT" in env:
            done = subprocess.run([sys.executable, "-m", "agents.podrun"], cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=60)
            logs = (done.stdout + done.stderr).splitlines()
            end = ("succeed", {"logs": logs}) if done.returncode == 0 else \
                ("fail", {"exit_code": done.returncode, "logs": logs})
            return [(0.02, "schedule", {}), (0.02, "run", {}), (0.02, *end)]
        image = task["image"]
        once = re.fullmatch(r"test/(\w+)-once", image)
        if once:
            first = pod["metadata"]["labels"]["flowforge.io/attempt"] == "1"
            pod = copy.deepcopy(pod)
            pod["spec"]["containers"][0]["image"] = f"test/{once[1]}" if first else "test/ok"
        return scripted(pod)

    return behaviour


@pytest.fixture(scope="module")
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        fake.behaviour = _kubelet(fake)
        yield fake
        assert not fake.errors, fake.errors


@pytest.fixture(scope="module")
def kclient(kube, pg_server_url, redis_url, pool_dir, tmp_path_factory) -> Iterator[Client]:
    import redis as redis_sync

    tmp = tmp_path_factory.mktemp("kube")
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: test, cluster: {{server: '{kube.url}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: test, user: {token: test-token}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )
    db = f"ff_kube_{uuid.uuid4().hex[:8]}"
    db_url = admin.create_database(pg_server_url, db)
    redis = re.sub(r"/\d+$", "", redis_url) + "/7"
    redis_sync.Redis.from_url(redis).flushdb()
    cfg = settings.Settings(
        data_dir=tmp / "data",
        database={"url": db_url},
        redis={"url": redis},
        agents={"pool_config_dir": pool_dir, "lease": timedelta(seconds=3)},
        coordinator={"reconcile_interval": timedelta(seconds=1), "block": timedelta(milliseconds=200),
                     "cancel_grace": timedelta(seconds=5)},
        pods={"runtime": "kubernetes", "kubeconfig": kubeconfig, "namespace": NS, "image": "registry/agent:1",
              "start_timeout": timedelta(seconds=1), "stop_grace": timedelta(seconds=1), "infra_retries": 2,
              "inject": {"sidecars": [{"name": "ship-logs", "image": "fluent-bit:3"}], "env": {"REGION": "eu"}}},
    )
    bg = BackgroundStack(cfg, Services(db_url, redis), with_agents=False).start()
    bg.call(bg.stack.catalog.ensure_tenant("default"))
    try:
        yield Client(bg)
    finally:
        bg.stop()
        admin.drop_database(pg_server_url, db)


def _one(kclient: Client, task: dict, timeout: float = 30) -> dict:
    dag = {"name": f"k-{uuid.uuid4().hex[:6]}", "tasks": [{"name": "h", "executor": "heavy", **task}]}
    run = kclient.wait(kclient.submit(dag), timeout=timeout)
    return run["tasks"][0] | {"run_status": run["status"]}


def test_a_python_task_and_a_container_run_in_pods(kclient, kube):
    dag = {"name": "k-mixed", "tasks": [
        {"name": "py", "fn": "tests.tasks:add", "args": [2, 3], "executor": "heavy",
         "resources": {"cpu": "500m", "memory": "256Mi", "gpu": 1}, "node_selector": {"accelerator": "a100"},
         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        {"name": "box", "image": "test/ok", "command": ["run"], "args": ["{{ tasks.py.output }}"],
         "executor": "auto", "depends": ["py"]},
    ]}
    run_id = kclient.submit(dag)
    run = kclient.wait(run_id, timeout=60)
    assert run["status"] == "succeeded", [(t["key"], t["error"]) for t in run["tasks"]]
    by_key = {t["key"]: t for t in run["tasks"]}
    py, box = by_key["py"], by_key["box"]
    assert py["output"] == 5 and box["output"] is None
    assert (box["executor"], box["route_reason"]) == ("heavy", "runs the container image test/ok")
    pod = kube.created[next(n for n in kube.created if "-py-" in n and run_id.replace("-", "")[:12] in n)]
    labels = pod["metadata"]["labels"]
    assert labels["flowforge.io/run"] == run_id and labels["flowforge.io/tenant"] == "default"
    assert labels["flowforge.io/attempt"] == "1" and labels["app.kubernetes.io/managed-by"] == "flowforge"
    task, sidecar = pod["spec"]["containers"]
    assert task["image"] == "registry/agent:1" and task["command"] == ["python", "-m", "agents.podrun"]
    assert task["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi", "nvidia.com/gpu": "1"}
    assert task["securityContext"]["runAsNonRoot"] is True and sidecar["name"] == "ship-logs"
    assert {"name": "REGION", "value": "eu"} in task["env"]
    assert pod["spec"]["nodeSelector"] == {"accelerator": "a100"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # Pod logs (the container's stdout) are the attempt's logs; the result line is consumed.
    box_pod = next(n for n in kube.created if "-box-" in n and run_id.replace("-", "")[:12] in n)
    assert kube.created[box_pod]["spec"]["containers"][0]["args"] == ["5"]
    detail = kclient.get(run_id)
    box_detail = next(t for t in detail["tasks"] if t["key"] == "box")
    logs = [line for _t, _s, line in box_detail["attempts"][0]["logs"]]
    assert "starting test/ok" in logs and "done" in logs


def test_a_non_zero_exit_fails_with_its_code(kclient):
    t = _one(kclient, {"image": "test/exit:3", "command": ["run"]})
    assert t["run_status"] == "failed" and "exited with code 3" in t["error"]
    assert t["attempts"][-1]["reason"] == "error"


def test_oom_killed_then_retried(kclient):
    t = _one(kclient, {"image": "test/oom-once", "command": ["run"], "retries": {"limit": 1, "base_seconds": 0}})
    assert t["run_status"] == "succeeded"
    assert [a["reason"] for a in t["attempts"]] == ["oom_killed", None]


def test_evicted_then_retried_without_spending_the_retry_budget(kclient):
    t = _one(kclient, {"image": "test/evict-once", "command": ["run"]})  # retries.limit is 0
    assert t["run_status"] == "succeeded", t
    assert [a["reason"] for a in t["attempts"]] == ["infrastructure", None]
    assert "evicted" in t["attempts"][0]["error"]


def test_an_image_that_cannot_be_pulled_fails_without_retries(kclient, kube):
    t = _one(kclient, {"image": "test/pull-error", "command": ["run"], "retries": {"limit": 3, "base_seconds": 0}})
    assert t["run_status"] == "failed" and len(t["attempts"]) == 1
    assert t["attempts"][0]["reason"] == "image_pull" and ("ImagePullBackOff" in t["error"] or "ErrImagePull" in t["error"])


def test_a_timeout_stops_the_pod(kclient, kube):
    t = _one(kclient, {"image": "test/forever", "command": ["run"], "timeout_seconds": 1})
    assert t["run_status"] == "failed" and t["attempts"][-1]["reason"] == "timeout"
    assert any(d.name.endswith("-1") for d in kube.deletions), kube.deletions


def test_cancel_deletes_the_pod_with_a_grace_period(kclient, kube):
    dag = {"name": "k-cancel", "tasks": [{"name": "h", "executor": "heavy", "image": "test/forever",
                                          "command": ["run"]}]}
    run_id = kclient.submit(dag)
    kclient.wait(run_id, until=lambda r: r["tasks"][0]["status"] == "running")
    kclient.cancel(run_id)
    run = kclient.wait(run_id, timeout=30)
    assert run["status"] == "cancelled" and run["tasks"][0]["attempts"][-1]["reason"] == "cancelled"
    prefix = f"ff-{run_id.replace('-', '')[:12]}-"
    graces = [d for d in kube.deletions if d.name.startswith(prefix)]
    assert graces and graces[0].grace_period_seconds == 1, graces


