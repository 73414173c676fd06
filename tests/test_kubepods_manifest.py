"""The Pod FlowForge asks Kubernetes for, and how it reads a Pod's status: pure functions."""

from __future__ import annotations

import pytest

from agents import kubepods, pods

REQ = pods.PodRequest(
    name="ff-abc-train-1", labels={"flowforge.io/run": "r", "flowforge.io/attempt": "1"},
    command=["python", "-m", "agents.podrun"], args=["--x"], image="registry/agent:1", env={"A": "1"},
    cpu="2", memory="4Gi", gpu=1, node_selector={"pool": "gpu"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "toleration_seconds": 60}],
    timeout_s=90.5,
)


def test_the_pod_is_restricted_and_sized_as_asked():
    opts = kubepods.Options(namespace="jobs", env={"SHIP_LOGS": "1", "A": "overridden by the task"},
                            init_containers=[{"name": "stage", "image": "stager"}],
                            sidecars=[{"name": "logs", "image": "shipper"}],
                            volumes=[{"name": "rt", "emptyDir": {}}], volume_mounts=[{"name": "rt", "mountPath": "/rt"}])
    pod = kubepods.manifest(REQ, opts)
    spec, (task, sidecar) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"] == {"name": "ff-abc-train-1", "namespace": "jobs",
                               "labels": {**REQ.labels, "app.kubernetes.io/managed-by": "flowforge"}}
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] == 91
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert task["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                       "runAsNonRoot": True, "runAsUser": 10001,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert task["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                                 "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}}
    assert task["command"] == REQ.command and task["args"] == ["--x"]
    assert {"name": "A", "value": "1"} in task["env"] and {"name": "SHIP_LOGS", "value": "1"} in task["env"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
                                    "tolerationSeconds": 60}]
    assert spec["initContainers"] == [{"name": "stage", "image": "stager"}] and sidecar["name"] == "logs"
    assert spec["volumes"] == [{"name": "rt", "emptyDir": {}}] and task["volumeMounts"][0]["mountPath"] == "/rt"
    assert "serviceAccountName" not in spec


def test_a_pod_without_an_image_is_refused():
    with pytest.raises(ValueError, match="pods.image"):
        kubepods.manifest(pods.PodRequest(name="x", labels={}, command=["true"]), kubepods.Options())


def _pod(phase="Running", created="2026-01-01T00:00:00Z", **status):
    return {"metadata": {"name": "p", "creationTimestamp": created}, "status": {"phase": phase, **status}}


def _term(reason, code):
    return [{"name": "task", "state": {"terminated": {"reason": reason, "exitCode": code}}}]


@pytest.mark.parametrize("pod, phase", [
    (_pod("Succeeded", containerStatuses=_term("Completed", 0)), "succeeded"),
    (_pod("Failed", containerStatuses=_term("Error", 3)), "failed"),
    (_pod("Failed", containerStatuses=_term("OOMKilled", 137)), "oom_killed"),
    (_pod("Failed", reason="Evicted", message="The node was low on resource: memory."), "infrastructure"),
    (_pod("Failed", reason="DeadlineExceeded"), "deadline"),
    (_pod("Failed", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}],
          containerStatuses=_term("Error", 143)), "infrastructure"),
    (_pod("Pending", containerStatuses=[{"name": "task", "state": {"waiting": {"reason": "InvalidImageName"}}}]),
     "image_pull"),
])
def test_statuses_become_outcomes(pod, phase):
    assert kubepods.classify(pod, now=1767225600.0 + 5, start_timeout_s=300).phase == phase


def test_pull_errors_and_unschedulable_pods_get_a_bounded_wait():
    pulling = _pod("Pending", containerStatuses=[{"name": "task", "state": {"waiting": {"reason": "ImagePullBackOff"}}}])
    stuck = _pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    created = 1767225600.0
    for pod in (pulling, stuck):
        assert kubepods.classify(pod, now=created + 10, start_timeout_s=60) is None
    assert kubepods.classify(pulling, now=created + 61, start_timeout_s=60).phase == "image_pull"
    late = kubepods.classify(stuck, now=created + 61, start_timeout_s=60)
    assert late.phase == "unschedulable" and "Insufficient nvidia.com/gpu" in late.message


def test_logs_and_startup_time_are_read_from_the_api_json():
    lines = kubepods.parse_logs("2026-01-01T00:00:01.500000000Z hello\n2026-01-01T00:00:02Z ::flowforge-result::{}\n")
    assert lines == [(1767225601.5, "stdout", "hello"), (1767225602.0, "stdout", "::flowforge-result::{}")]
    pod = _pod(containerStatuses=[{"name": "task", "state": {"running": {"startedAt": "2026-01-01T00:00:04Z"}}}])
    assert kubepods.startup_seconds(pod) == 4.0
