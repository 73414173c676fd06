"""FakeKube driven through the real ``kubernetes`` client: the API surface FlowForge's Pod
runtime and pool manager rely on, and the status JSON the simulated kubelet reports."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator

import kubernetes
import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.kube_fake import FakeKube

NS = "default"


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


def _fake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fakekube") or
            "process_request_thread" in t.name]


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as kube:
        yield kube
    assert kube.errors == []
    assert _fake_threads() == [], "FakeKube leaked threads"


@pytest.fixture
def v1(fake: FakeKube) -> Iterator[client.CoreV1Api]:
    with client.ApiClient(fake.client_config()) as api_client:
        yield client.CoreV1Api(api_client)


def pod_body(name: str, image: str = "busybox:1.36", *, labels: dict | None = None,
             restart_policy: str = "Never", **spec: object) -> dict:
    """A Pod manifest like FlowForge's runtime sends (plain JSON)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "flowforge"}},
        "spec": {"restartPolicy": restart_policy,
                 "containers": [{"name": "main", "image": image}], **spec},
    }


def create(v1: client.CoreV1Api, name: str, **kw: object) -> client.V1Pod:
    return v1.create_namespaced_pod(NS, pod_body(name, **kw))


def api_error(excinfo: pytest.ExceptionInfo) -> dict:
    """The Status object the server sent with an ApiException."""
    return json.loads(excinfo.value.body)


def events(v1: client.CoreV1Api, until: Callable[[list[dict]], bool], timeout: int = 5,
           func: Callable | None = None, **kwargs: object) -> list[dict]:
    """Collect watch events through kubernetes.watch until ``until(events)`` or timeout."""
    w = watch.Watch()
    stream = w.stream(func or v1.list_namespaced_pod, *([] if func else [NS]),
                      timeout_seconds=timeout, **kwargs)
    seen: list[dict] = []
    try:
        for event in stream:
            seen.append(event)
            if until(seen):
                break
    finally:
        w.stop()
        stream.close()
    return seen


def condition(pod: client.V1Pod, ctype: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == ctype), None)


def main_state(pod: client.V1Pod) -> client.V1ContainerState:
    return pod.status.container_statuses[0].state


def state_of(pod: client.V1Pod) -> client.V1ContainerState:
    """The first container's state, or an empty state before the kubelet reported any."""
    statuses = pod.status.container_statuses
    return statuses[0].state if statuses else client.V1ContainerState()


# ---------------------------------------------------------------------------
# server, configuration, requests
# ---------------------------------------------------------------------------


def test_client_config_points_at_the_fake_and_token_is_recorded(fake: FakeKube, v1: client.CoreV1Api) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.url)
    config = fake.client_config()
    assert config.host == fake.url and config.verify_ssl is False
    create(v1, "p1")
    request = fake.requests[-1]
    assert (request.method, request.path, request.token) == ("POST", f"/api/v1/namespaces/{NS}/pods", "fake-token")
    assert request.body["metadata"]["name"] == "p1"
    v1.list_namespaced_pod(NS, label_selector="app=flowforge")
    assert fake.requests[-1].query == {"labelSelector": "app=flowforge"}


def test_required_token_rejects_other_tokens_with_401() -> None:
    with FakeKube(token="s3cret") as kube:
        with client.ApiClient(kube.client_config(token="wrong")) as bad:
            with pytest.raises(ApiException) as excinfo:
                client.CoreV1Api(bad).list_namespaced_pod(NS)
        assert excinfo.value.status == 401
        assert api_error(excinfo)["reason"] == "Unauthorized"
        with client.ApiClient(kube.client_config()) as good:
            assert client.CoreV1Api(good).list_namespaced_pod(NS).items == []


# ---------------------------------------------------------------------------
# create / get / list
# ---------------------------------------------------------------------------


def test_create_assigns_metadata_applies_defaults_and_keeps_the_body_as_sent(
        fake: FakeKube, v1: client.CoreV1Api) -> None:
    resources = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    security = {"runAsNonRoot": True, "allowPrivilegeEscalation": False}
    body = pod_body("task-1")
    body["spec"]["containers"][0].update(resources=resources, securityContext=security)
    first = v1.create_namespaced_pod(NS, body)
    second = create(v1, "task-2")

    assert first.metadata.namespace == NS and first.metadata.uid
    assert first.metadata.creation_timestamp is not None
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert first.status.phase == "Pending" and first.status.qos_class == "Burstable"
    assert first.spec.termination_grace_period_seconds == 30
    assert first.spec.containers[0].termination_message_path == "/dev/termination-log"
    assert first.spec.containers[0].image_pull_policy == "IfNotPresent"
    # the body FlowForge sent, untouched by defaulting
    assert fake.created["task-1"]["spec"]["containers"][0] == {
        "name": "main", "image": "busybox:1.36", "resources": resources, "securityContext": security}
    assert "terminationGracePeriodSeconds" not in fake.created["task-1"]["spec"]


def test_generate_name(fake: FakeKube, v1: client.CoreV1Api) -> None:
    body = pod_body("unused")
    body["metadata"] = {"generateName": "ff-task-"}
    pod = v1.create_namespaced_pod(NS, body)
    assert re.fullmatch(r"ff-task-[a-z0-9]{5}", pod.metadata.name)
    assert pod.metadata.name in fake.created


def test_duplicate_create_is_409_already_exists(v1: client.CoreV1Api) -> None:
    create(v1, "dup")
    with pytest.raises(ApiException) as excinfo:
        create(v1, "dup")
    assert excinfo.value.status == 409
    assert api_error(excinfo) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "dup" already exists', "reason": "AlreadyExists",
        "details": {"name": "dup", "kind": "pods"}, "code": 409}


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b["metadata"].pop("name"), "metadata.name"),
    (lambda b: b["spec"].update(containers=[]), "spec.containers"),  # the client itself rejects a missing list
    (lambda b: b["metadata"].update(name="Task_1"), "metadata.name"),
    (lambda b: b["metadata"]["labels"].update(run="not a label value"), "metadata.labels"),
])
def test_invalid_pod_is_422_with_causes(v1: client.CoreV1Api, mutate: Callable, field: str) -> None:
    body = pod_body("bad")
    mutate(body)
    with pytest.raises(ApiException) as excinfo:
        v1.create_namespaced_pod(NS, body)
    status = api_error(excinfo)
    assert excinfo.value.status == 422 and status["reason"] == "Invalid" and status["kind"] == "Status"
    assert field in [c["field"] for c in status["details"]["causes"]]


def test_get_missing_pod_is_404_not_found(v1: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as excinfo:
        v1.read_namespaced_pod("nope", NS)
    assert excinfo.value.status == 404
    status = api_error(excinfo)
    assert (status["reason"], status["message"], status["code"]) == ("NotFound", 'pods "nope" not found', 404)


def test_list_with_label_and_field_selectors(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "a", labels={"app": "ff", "pool": "cpu"})
    create(v1, "b", labels={"app": "ff", "pool": "gpu"})
    create(v1, "c", labels={"app": "other"})
    v1.create_namespaced_pod("team-x", pod_body("d", labels={"app": "ff", "pool": "cpu"}))
    fake.run("a")

    def names(**kw: object) -> list[str]:
        return [p.metadata.name for p in v1.list_namespaced_pod(NS, **kw).items]

    assert names(label_selector="app=ff,pool=cpu") == ["a"]
    assert names(label_selector="pool in (cpu, gpu)") == ["a", "b"]
    assert names(label_selector="app=ff,pool notin (gpu)") == ["a"]
    assert names(label_selector="app!=ff") == ["c"]
    assert names(label_selector="pool") == ["a", "b"]
    assert names(label_selector="!pool") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="status.phase=Running") == ["a"]
    assert names(field_selector="status.phase!=Running", label_selector="app=ff") == ["b"]
    everywhere = v1.list_pod_for_all_namespaces(label_selector="pool=cpu")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [(NS, "a"), ("team-x", "d")]
    assert everywhere.metadata.resource_version == str(fake.resource_version)
    with pytest.raises(ApiException) as excinfo:
        v1.list_namespaced_pod(NS, field_selector="spec.bogus=1")
    assert excinfo.value.status == 400 and api_error(excinfo)["reason"] == "BadRequest"


def test_list_pagination_with_limit_and_continue(v1: client.CoreV1Api) -> None:
    for i in range(5):
        create(v1, f"p{i}")
    page = v1.list_namespaced_pod(NS, limit=2)
    seen = [p.metadata.name for p in page.items]
    while page.metadata._continue:
        page = v1.list_namespaced_pod(NS, limit=2, _continue=page.metadata._continue)
        seen += [p.metadata.name for p in page.items]
    assert seen == [f"p{i}" for i in range(5)]


# ---------------------------------------------------------------------------
# patch / replace
# ---------------------------------------------------------------------------


def test_pod_label_patch_and_forbidden_spec_change(fake: FakeKube, v1: client.CoreV1Api) -> None:
    pod = create(v1, "p")
    patched = v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"flowforge.io/claimed": "yes"}}})
    assert patched.metadata.labels == {"app": "flowforge", "flowforge.io/claimed": "yes"}
    assert int(patched.metadata.resource_version) > int(pod.metadata.resource_version)
    with pytest.raises(ApiException) as excinfo:
        v1.patch_namespaced_pod("p", NS, {"spec": {"restartPolicy": "Always"}})
    assert excinfo.value.status == 422 and "pod updates may not change" in api_error(excinfo)["message"]
    stale = {"metadata": {"resourceVersion": pod.metadata.resource_version, "labels": {"x": "y"}}}
    with pytest.raises(ApiException) as excinfo:
        v1.patch_namespaced_pod("p", NS, stale)
    assert excinfo.value.status == 409 and api_error(excinfo)["reason"] == "Conflict"


def test_replace_node_needs_the_current_resource_version(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n")
    node = v1.read_node("n")
    node.metadata.labels["pool"] = "cpu"
    replaced = v1.replace_node("n", node)
    assert replaced.metadata.labels["pool"] == "cpu"
    assert int(replaced.metadata.resource_version) > int(node.metadata.resource_version)
    node.metadata.labels["pool"] = "gpu"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as excinfo:
        v1.replace_node("n", node)
    assert excinfo.value.status == 409


# ---------------------------------------------------------------------------
# delete
# ---------------------------------------------------------------------------


def test_delete_collection_by_label(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "a", labels={"app": "ff"})
    create(v1, "b", labels={"app": "ff"})
    create(v1, "keep", labels={"app": "other"})
    v1.delete_collection_namespaced_pod(NS, label_selector="app=ff")
    assert [p["metadata"]["name"] for p in fake.pods()] == ["keep"]
    assert [(d.name, d.effective_grace_seconds) for d in fake.deletions] == [("a", 0), ("b", 0)]


def test_graceful_delete_of_a_running_pod(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p")
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    answer = v1.delete_namespaced_pod("p", NS, grace_period_seconds=20)
    assert answer.metadata.deletion_timestamp is not None
    assert answer.metadata.deletion_grace_period_seconds == 20

    seen = events(v1, lambda evs: evs[-1]["type"] == "DELETED", resource_version=rv)
    assert [e["type"] for e in seen] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert seen[0]["object"].metadata.deletion_timestamp is not None
    terminated = main_state(seen[1]["object"]).terminated
    assert (terminated.exit_code, terminated.reason) == (143, "Error")  # SIGTERM
    assert seen[1]["object"].status.phase == "Failed"
    record = fake.deletions[-1]
    assert (record.grace_period_seconds, record.source, record.effective_grace_seconds) == (20, "query", 20)


def test_delete_options_body_wins_over_the_query_string(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p")
    v1.delete_namespaced_pod("p", NS, grace_period_seconds=20, body=client.V1DeleteOptions(grace_period_seconds=0))
    record = fake.deletions[-1]
    assert (record.grace_period_seconds, record.source) == (0, "body")
    assert record.options["gracePeriodSeconds"] == 0
    with pytest.raises(ApiException) as excinfo:  # grace 0: gone at once
        v1.read_namespaced_pod("p", NS)
    assert excinfo.value.status == 404


def test_container_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    with FakeKube(sigterm_exit_delay=None) as kube, client.ApiClient(kube.client_config()) as api_client:
        v1 = client.CoreV1Api(api_client)
        create(v1, "stubborn")
        kube.run("stubborn")
        rv = v1.list_namespaced_pod(NS).metadata.resource_version
        started = time.monotonic()
        v1.delete_namespaced_pod("stubborn", NS, grace_period_seconds=1)
        seen = events(v1, lambda evs: evs[-1]["type"] == "DELETED", resource_version=rv)
        assert time.monotonic() - started >= 0.9
        assert [e["type"] for e in seen] == ["MODIFIED", "DELETED"]
        assert main_state(seen[-1]["object"]).terminated.exit_code == 137


def test_unscheduled_pod_is_deleted_immediately_whatever_the_grace(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "pending")
    v1.delete_namespaced_pod("pending", NS, grace_period_seconds=30)
    assert fake.deletions[-1].effective_grace_seconds == 0
    assert fake.pods() == []


def test_delete_with_uid_precondition_conflict(v1: client.CoreV1Api) -> None:
    create(v1, "p")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as excinfo:
        v1.delete_namespaced_pod("p", NS, body=options)
    assert excinfo.value.status == 409 and "Precondition failed" in api_error(excinfo)["message"]


# ---------------------------------------------------------------------------
# watch
# ---------------------------------------------------------------------------


def test_watch_from_resource_version_sees_added_modified_deleted(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "before")
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    create(v1, "w")
    fake.run("w")
    fake.succeed("w")
    v1.delete_namespaced_pod("w", NS)  # terminal pods go at once

    seen = events(v1, lambda evs: evs[-1]["type"] == "DELETED", resource_version=rv)
    assert [(e["type"], e["object"].metadata.name) for e in seen] == [
        ("ADDED", "w"), ("MODIFIED", "w"), ("MODIFIED", "w"), ("MODIFIED", "w"), ("MODIFIED", "w"),
        ("DELETED", "w")]  # schedule binds + kubelet acks, run, succeed, delete
    assert seen[-2]["object"].status.phase == "Succeeded"
    versions = [int(e["object"].metadata.resource_version) for e in seen]
    assert versions == sorted(versions) and versions[0] > int(rv)


def test_watch_without_resource_version_starts_with_synthetic_added(v1: client.CoreV1Api) -> None:
    create(v1, "x")
    create(v1, "y")
    seen = events(v1, lambda evs: len(evs) == 2, timeout=1)
    assert [(e["type"], e["object"].metadata.name) for e in seen] == [("ADDED", "x"), ("ADDED", "y")]


def test_watch_with_selector_sees_objects_enter_and_leave(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p", labels={"app": "ff"})
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"claimed": "yes"}}})
    v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"claimed": None}}})
    seen = events(v1, lambda evs: len(evs) == 2, resource_version=rv, label_selector="claimed=yes")
    assert [e["type"] for e in seen] == ["ADDED", "DELETED"]


def test_watch_from_a_compacted_resource_version_is_410_expired() -> None:
    with FakeKube(history_size=3) as kube, client.ApiClient(kube.client_config()) as api_client:
        v1 = client.CoreV1Api(api_client)
        create(v1, "p")
        for _ in range(4):  # rv 2..5; only 3..5 are retained
            v1.patch_namespaced_pod("p", NS, {"metadata": {"annotations": {"n": str(time.monotonic())}}})

        # with timeoutSeconds the client does not retry: the ERROR event surfaces at once
        with pytest.raises(ApiException) as excinfo:
            events(v1, lambda evs: False, resource_version="1", timeout=2)
        assert excinfo.value.status == 410
        assert excinfo.value.reason == "Expired: too old resource version: 1 (2)"

        # without it, the client retries once from the same version, then raises
        before = len(kube.requests_to("GET"))
        w = watch.Watch()
        with pytest.raises(ApiException) as excinfo:
            for _ in w.stream(v1.list_namespaced_pod, NS, resource_version="1"):
                pass
        assert excinfo.value.status == 410
        assert len(kube.requests_to("GET")) - before == 2

        # the documented recovery: relist, then watch from the list's resourceVersion
        listed = v1.list_namespaced_pod(NS)
        v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"after": "relist"}}})
        seen = events(v1, lambda evs: True, resource_version=listed.metadata.resource_version)
        assert seen[0]["type"] == "MODIFIED" and seen[0]["object"].metadata.labels["after"] == "relist"


def test_informer_style_loop_relists_after_410_and_stops_from_another_thread() -> None:
    """list -> watch(rv, timeout, bookmarks) -> on 410 relist -> Watch.stop() from outside."""
    with FakeKube(history_size=2, bookmark_interval=30) as kube, \
            client.ApiClient(kube.client_config()) as api_client:
        v1 = client.CoreV1Api(api_client)
        seen: list[tuple[str, str]] = []
        relists: list[str] = []
        current: dict[str, watch.Watch] = {}
        closed = threading.Event()

        def loop() -> None:
            version = None
            while not closed.is_set():
                try:
                    if version is None:
                        version = v1.list_namespaced_pod(NS, label_selector="app=ff").metadata.resource_version
                        relists.append(version)
                    current["w"] = watch.Watch()
                    for event in current["w"].stream(v1.list_namespaced_pod, NS, label_selector="app=ff",
                                                     resource_version=version, timeout_seconds=5,
                                                     allow_watch_bookmarks=True):
                        version = current["w"].resource_version
                        if event["type"] != "BOOKMARK":
                            seen.append((event["type"], event["object"].metadata.name))
                except ApiException as exc:
                    assert exc.status == 410
                    version = None
                except Exception:  # noqa: BLE001 - Watch.stop() can cut a read short; reconnect
                    continue

        thread = threading.Thread(target=loop)
        kube.add_node("n")  # rv 1
        thread.start()
        assert kube.wait_for(lambda: kube.open_streams == 1, timeout=2)
        create(v1, "a", labels={"app": "ff"})
        assert kube.wait_for(lambda: ("ADDED", "a") in seen, timeout=2)
        # the watcher is now parked at "a"'s version; churn nodes past the retained history and
        # force the stream to reconnect from that (now too old) version
        version_of_a = str(kube.resource_version)
        for i in range(3):
            kube.set_node_ready("n", i % 2 == 0)
        current["w"].stop()  # the loop reconnects from the version it holds: 410, then relist
        assert kube.wait_for(lambda: len(relists) == 2, timeout=3)
        assert int(relists[1]) > int(version_of_a)
        create(v1, "b", labels={"app": "ff"})
        assert kube.wait_for(lambda: ("ADDED", "b") in seen, timeout=2)
        closed.set()
        deadline = time.monotonic() + 5
        while thread.is_alive() and time.monotonic() < deadline:  # a stop() between streams is lost
            current["w"].stop()
            thread.join(timeout=0.1)
        assert not thread.is_alive()


def test_watch_bookmarks_carry_the_resource_version() -> None:
    with FakeKube(bookmark_interval=0.05) as kube, client.ApiClient(kube.client_config()) as api_client:
        v1 = client.CoreV1Api(api_client)
        create(v1, "p")
        rv = kube.resource_version
        w = watch.Watch()
        stream = w.stream(v1.list_namespaced_pod, NS, resource_version=str(rv), allow_watch_bookmarks=True,
                          timeout_seconds=2)
        event = next(stream)
        stream.close()
        assert event["type"] == "BOOKMARK"
        assert event["raw_object"] == {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}
        assert w.resource_version == str(rv)


def test_watch_times_out_after_timeout_seconds(v1: client.CoreV1Api) -> None:
    started = time.monotonic()
    assert events(v1, lambda evs: False, resource_version="0", timeout=1) == []
    assert 0.9 <= time.monotonic() - started < 3


def test_stop_closes_open_watch_streams_and_joins_threads() -> None:
    kube = FakeKube().start()
    api_client = client.ApiClient(kube.client_config())
    v1 = client.CoreV1Api(api_client)
    create(v1, "p")
    finished = threading.Event()

    def watch_forever() -> None:
        try:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version="1"):
                pass
        except Exception:  # noqa: BLE001 - the stream closing is all we need
            pass
        finished.set()

    thread = threading.Thread(target=watch_forever)
    thread.start()
    assert kube.wait_for(lambda: kube.open_streams == 1, timeout=2)
    started = time.monotonic()
    kube.stop()
    thread.join(timeout=5)
    api_client.close()
    assert finished.is_set() and time.monotonic() - started < 3
    assert _fake_threads() == []


def test_node_watch(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n1")
    rv = v1.list_node().metadata.resource_version
    fake.add_node("n2", labels={"pool": "gpu"})
    fake.set_node_ready("n1", False)
    fake.remove_node("n2")
    seen = events(v1, lambda evs: len(evs) == 3, func=v1.list_node, resource_version=rv)
    assert [(e["type"], e["object"].metadata.name) for e in seen] == [
        ("ADDED", "n2"), ("MODIFIED", "n1"), ("DELETED", "n2")]
    ready = next(c for c in seen[1]["object"].status.conditions if c.type == "Ready")
    assert ready.status == "Unknown"


# ---------------------------------------------------------------------------
# logs
# ---------------------------------------------------------------------------


def test_log_read_with_container_tail_and_timestamps(fake: FakeKube, v1: client.CoreV1Api) -> None:
    body = pod_body("p")
    body["spec"]["containers"].append({"name": "sidecar", "image": "fluent-bit"})
    v1.create_namespaced_pod(NS, body)
    fake.run("p", logs={"main": ["one", "two", "three"], "sidecar": "shipping"})
    assert v1.read_namespaced_pod_log("p", NS, container="main") == "one\ntwo\nthree\n"
    assert v1.read_namespaced_pod_log("p", NS, container="main", tail_lines=2) == "two\nthree\n"
    assert v1.read_namespaced_pod_log("p", NS, container="main", limit_bytes=6) == "one\ntw"
    stamped = v1.read_namespaced_pod_log("p", NS, container="sidecar", timestamps=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z shipping\n", stamped)
    with pytest.raises(ApiException) as excinfo:
        v1.read_namespaced_pod_log("p", NS)
    assert excinfo.value.status == 400
    assert "a container name must be specified" in api_error(excinfo)["message"]


def test_log_of_a_container_waiting_to_start_is_400(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.schedule("p")
    with pytest.raises(ApiException) as excinfo:
        v1.read_namespaced_pod_log("p", NS)
    assert excinfo.value.status == 400
    assert api_error(excinfo)["message"] == 'container "main" in pod "p" is waiting to start: ContainerCreating'


def test_log_follow_streams_until_the_container_terminates(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p", logs="first")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(
        watch.Watch().stream(v1.read_namespaced_pod_log, name="p", namespace=NS)))
    reader.start()
    assert fake.wait_for(lambda: fake.open_streams == 1, timeout=2)
    fake.append_log("p", ["second", "third"])
    fake.succeed("p", logs="last words")
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert lines == ["first", "second", "third", "last words"]


# ---------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------


def test_nodes_seeded_listed_and_read(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("cpu-1", labels={"flowforge.io/pool": "cpu"}, allocatable={"cpu": "8", "memory": "32Gi"})
    fake.add_node("gpu-1", labels={"flowforge.io/pool": "gpu"}, annotations={"owner": "pool-manager"})
    assert [n.metadata.name for n in v1.list_node(label_selector="flowforge.io/pool=gpu").items] == ["gpu-1"]
    node = v1.read_node("cpu-1")
    assert node.status.allocatable == {"cpu": "8", "memory": "32Gi"}
    assert node.metadata.labels["kubernetes.io/hostname"] == "cpu-1"
    assert next(c for c in node.status.conditions if c.type == "Ready").status == "True"
    assert v1.read_node("gpu-1").metadata.annotations == {"owner": "pool-manager"}
    with pytest.raises(ApiException) as excinfo:
        v1.read_node("nope")
    assert excinfo.value.status == 404 and api_error(excinfo)["details"] == {"name": "nope", "kind": "nodes"}


def test_node_merge_patch(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n", labels={"a": "1", "b": "2"})
    node = v1.patch_node("n", {"metadata": {"labels": {"a": None, "c": "3"}, "annotations": {"k": "v"}}},
                         _content_type="application/merge-patch+json")
    assert {k: v for k, v in node.metadata.labels.items() if not k.startswith("kubernetes.io")} == {"b": "2", "c": "3"}
    assert node.metadata.annotations == {"k": "v"}
    assert fake.requests[-1].content_type == "application/merge-patch+json"


def test_node_strategic_merge_patch_merges_lists_by_key(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n", labels={"a": "1"})
    node = v1.patch_node("n", {"metadata": {"labels": {"a": None, "pool": "gpu"}}, "spec": {"unschedulable": True}})
    assert fake.requests[-1].content_type == "application/strategic-merge-patch+json"
    assert "a" not in node.metadata.labels and node.metadata.labels["pool"] == "gpu"
    assert node.spec.unschedulable is True
    assert v1.list_node(field_selector="spec.unschedulable=true").items[0].metadata.name == "n"


def test_node_json_patch(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n", labels={"old": "x"}, annotations={"keep": "1"})
    node = v1.patch_node("n", [
        {"op": "add", "path": "/metadata/labels/flowforge.io~1pool", "value": "cpu"},
        {"op": "replace", "path": "/metadata/annotations/keep", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/old"},
    ])
    assert fake.requests[-1].content_type == "application/json-patch+json"
    assert node.metadata.labels["flowforge.io/pool"] == "cpu" and "old" not in node.metadata.labels
    assert node.metadata.annotations == {"keep": "2"}
    with pytest.raises(ApiException) as excinfo:
        v1.patch_node("n", [{"op": "remove", "path": "/metadata/labels/missing"}])
    assert excinfo.value.status == 422


def test_node_patch_with_stale_resource_version_conflicts(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n")
    stale = v1.read_node("n").metadata.resource_version
    v1.patch_node("n", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as excinfo:
        v1.patch_node("n", {"metadata": {"resourceVersion": stale, "labels": {"x": "2"}}})
    assert excinfo.value.status == 409
    assert "the object has been modified" in api_error(excinfo)["message"]


# ---------------------------------------------------------------------------
# the simulated kubelet: one test per helper, asserting what the client deserialises
# ---------------------------------------------------------------------------


def test_schedule(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("node-1")
    create(v1, "p")
    fake.schedule("p", node="node-1")
    pod = v1.read_namespaced_pod("p", NS)
    assert pod.spec.node_name == "node-1" and pod.status.phase == "Pending"
    assert condition(pod, "PodScheduled").status == "True"
    assert main_state(pod).waiting.reason == "ContainerCreating"
    assert pod.status.host_ip == "10.0.0.10" and pod.status.start_time is not None


def test_schedule_picks_a_fitting_node_or_reports_unschedulable(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("cpu-1", labels={"pool": "cpu"})
    fake.add_node("gpu-1", labels={"pool": "gpu"}, taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}])
    fake.add_node("gpu-2", labels={"pool": "gpu"})
    fake.set_node_ready("gpu-2", False)
    tolerant = pod_body("tolerant", nodeSelector={"pool": "gpu"},
                        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}])
    v1.create_namespaced_pod(NS, tolerant)
    create(v1, "intolerant", nodeSelector={"pool": "gpu"})
    create(v1, "anywhere")
    assert fake.schedule("tolerant")["spec"]["nodeName"] == "gpu-1"
    assert fake.schedule("anywhere")["spec"]["nodeName"] == "cpu-1"

    fake.schedule("intolerant")
    pod = v1.read_namespaced_pod("intolerant", NS)
    scheduled = condition(pod, "PodScheduled")
    assert pod.spec.node_name is None and scheduled.reason == "Unschedulable"
    assert scheduled.message == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {gpu: true}, 1 node(s) had untolerated taint "
        "{node.kubernetes.io/not-ready: }. preemption: 0/3 nodes are available: "
        "3 Preemption is not helpful for scheduling.")


def test_run(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p", logs="hello")
    pod = v1.read_namespaced_pod("p", NS)
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip
    assert status.state.running.started_at is not None
    assert status.ready is True and status.started is True and status.restart_count == 0
    assert status.image == "docker.io/library/busybox:1.36" and status.container_id.startswith("containerd://")
    assert condition(pod, "Ready").status == "True" and condition(pod, "ContainersReady").status == "True"


def test_succeed(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.succeed("p", logs="all good")  # runs the pod first
    pod = v1.read_namespaced_pod("p", NS)
    terminated = main_state(pod).terminated
    assert pod.status.phase == "Succeeded"
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at <= terminated.finished_at
    assert condition(pod, "Ready").reason == "PodCompleted"
    assert v1.read_namespaced_pod_log("p", NS) == "all good\n"


def test_fail(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p")
    fake.fail("p", exit_code=3, logs="Traceback: boom")
    pod = v1.read_namespaced_pod("p", NS)
    terminated = main_state(pod).terminated
    assert pod.status.phase == "Failed"
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert fake.logs("p") == ["Traceback: boom"]


def test_fail_with_restart_policy_always_is_crash_loop_backoff(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p", restart_policy="Always")
    fake.fail("p", exit_code=1)
    pod = v1.read_namespaced_pod("p", NS)
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Running"
    assert status.state.waiting.reason == "CrashLoopBackOff" and status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1


def test_oom(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.oom("p")
    pod = v1.read_namespaced_pod("p", NS)
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_evict(fake: FakeKube, v1: client.CoreV1Api) -> None:
    body = pod_body("p")
    body["spec"]["containers"][0]["resources"] = {"requests": {"memory": "512Mi"}}
    v1.create_namespaced_pod(NS, body)
    fake.run("p")
    fake.evict("p")
    pod = v1.read_namespaced_pod("p", NS)
    assert (pod.status.phase, pod.status.reason) == ("Failed", "Evicted")
    assert pod.status.message.startswith("The node was low on resource: memory. ")
    assert "request is 512Mi" in pod.status.message
    disruption = condition(pod, "DisruptionTarget")
    assert (disruption.status, disruption.reason) == ("True", "TerminationByKubelet")
    assert main_state(pod).terminated.exit_code == 137


def test_preempt(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p")
    rv = str(fake.resource_version)
    fake.preempt("p")
    seen = events(v1, lambda evs: evs[-1]["type"] == "DELETED", resource_version=rv)
    disruption = condition(seen[0]["object"], "DisruptionTarget")
    assert (disruption.reason, disruption.message) == (
        "PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod")
    assert seen[1]["object"].metadata.deletion_timestamp is not None
    assert main_state(seen[-2]["object"]).terminated.exit_code == 143
    assert fake.deletions[-1].effective_grace_seconds == 30


def test_node_lost(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("node-1")
    create(v1, "p")
    fake.run("p")
    rv = str(fake.resource_version)
    fake.lose_node("node-1")
    seen = events(v1, lambda evs: evs[-1]["type"] == "DELETED", resource_version=rv)
    disrupted = next(e["object"] for e in seen if condition(e["object"], "DisruptionTarget"))
    assert condition(disrupted, "DisruptionTarget").reason == "DeletionByTaintManager"
    assert condition(disrupted, "Ready").status == "False"
    assert main_state(seen[-1]["object"]).running is not None  # the kubelet never reported back
    assert v1.read_node("node-1").spec.taints[0].key == "node.kubernetes.io/unreachable"


@pytest.mark.parametrize("reason, message", [
    ("ErrImagePull", "failed to pull and unpack image"),
    ("ImagePullBackOff", 'Back-off pulling image "busybox:1.36"'),
])
def test_image_pull_error(fake: FakeKube, v1: client.CoreV1Api, reason: str, message: str) -> None:
    create(v1, "p")
    fake.image_pull_error("p", reason=reason)
    pod = v1.read_namespaced_pod("p", NS)
    waiting = pod.status.container_statuses[0].state.waiting
    assert pod.status.phase == "Pending"
    assert waiting.reason == reason and message in waiting.message


def test_unschedulable(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n1")
    fake.add_node("n2")
    create(v1, "p")
    fake.unschedulable("p")
    pod = v1.read_namespaced_pod("p", NS)
    scheduled = condition(pod, "PodScheduled")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert scheduled.message.startswith("0/2 nodes are available: 2 Insufficient cpu.")


def test_deadline_exceeded(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p")
    fake.run("p")
    fake.deadline_exceeded("p")
    pod = v1.read_namespaced_pod("p", NS)
    assert (pod.status.phase, pod.status.reason) == ("Failed", "DeadlineExceeded")
    assert pod.status.message == "Pod was active on the node longer than the specified deadline"


def test_active_deadline_seconds_is_enforced_while_running(fake: FakeKube, v1: client.CoreV1Api) -> None:
    create(v1, "p", activeDeadlineSeconds=1)
    fake.run("p")
    pod = fake.wait_for_phase("p", "Failed", timeout=3)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143


# ---------------------------------------------------------------------------
# automatic mode
# ---------------------------------------------------------------------------


def test_custom_behaviour_fails_exit_3_after_a_delay(fake: FakeKube, v1: client.CoreV1Api) -> None:
    def behaviour(pod: dict) -> list:
        if pod["spec"]["containers"][0]["image"] == "test/exit:3":
            return [(0, "run", {}), (0.1, "fail", {"exit_code": 3, "logs": "bye"})]
        return []

    fake.behaviour = behaviour
    started = time.monotonic()
    create(v1, "doomed", image="test/exit:3")
    create(v1, "bystander", image="busybox")
    pod = fake.wait_for_phase("doomed", "Failed")
    assert time.monotonic() - started >= 0.1
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert fake.pod("bystander")["status"]["phase"] == "Pending"


@pytest.mark.parametrize("image, check", [
    ("test/ok", lambda p: p.status.phase == "Succeeded"),
    ("test/exit:0", lambda p: p.status.phase == "Succeeded"),
    ("test/exit:7", lambda p: p.status.phase == "Failed" and state_of(p).terminated.exit_code == 7),
    ("test/oom", lambda p: p.status.phase == "Failed" and state_of(p).terminated.reason == "OOMKilled"),
    ("test/evict", lambda p: p.status.reason == "Evicted"),
    ("test/pull-error", lambda p: state_of(p).waiting is not None
        and state_of(p).waiting.reason == "ImagePullBackOff"),
    ("test/unschedulable", lambda p: condition(p, "PodScheduled") is not None
        and condition(p, "PodScheduled").reason == "Unschedulable"),
    ("registry.local:5000/test/sleep:0.2", lambda p: p.status.phase == "Succeeded"),
])
def test_by_image(fake: FakeKube, v1: client.CoreV1Api, image: str, check: Callable) -> None:
    fake.behaviour = fake.by_image()
    create(v1, "p", image=image)
    deadline = time.monotonic() + 3
    while not check(v1.read_namespaced_pod("p", NS)):
        assert time.monotonic() < deadline, v1.read_namespaced_pod("p", NS).status
        time.sleep(0.02)


def test_by_image_stops_quietly_when_no_node_fits(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("cpu-1", labels={"pool": "cpu"})
    fake.behaviour = fake.by_image()
    create(v1, "p", image="test/ok", nodeSelector={"pool": "tpu"})
    assert fake.wait_for(lambda: "conditions" in fake.pod("p")["status"], timeout=2)
    time.sleep(0.1)  # let the remaining script steps fire (each is 10 ms)
    pod = v1.read_namespaced_pod("p", NS)
    assert pod.status.phase == "Pending" and condition(pod, "PodScheduled").reason == "Unschedulable"
    assert fake.errors == []


def test_by_image_sleep_runs_then_succeeds_and_deadline_cuts_it_short(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.behaviour = fake.by_image()
    create(v1, "sleeper", image="test/sleep:0.3")
    create(v1, "slow", image="test/sleep:30", activeDeadlineSeconds=1)
    assert fake.wait_for_phase("sleeper", "Running", timeout=1)
    fake.wait_for_phase("sleeper", "Succeeded", timeout=2)
    assert fake.wait_for_phase("slow", "Failed", timeout=3)["status"]["reason"] == "DeadlineExceeded"


def test_concurrent_creates_get_unique_increasing_resource_versions(fake: FakeKube) -> None:
    versions: list[int] = []

    def worker(i: int) -> None:
        with client.ApiClient(fake.client_config()) as api_client:
            pod = client.CoreV1Api(api_client).create_namespaced_pod(NS, pod_body(f"c{i}"))
            versions.append(int(pod.metadata.resource_version))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(1, 9))
