"""The Pod runtime contract, shared by the local-process runtime and the Kubernetes runtime (the
real `kubernetes` client against an in-test API server): the same scenarios, the same outcomes.
Kubernetes-only duties follow: the Pod JSON sent, garbage collection, the creation rate limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import kubernetes.client
import pytest

from agents import kubepods, localpods, pods
from tests.kube_fake import FakeKube

NS = "jobs"
T = TypeVar("T")


@dataclass
class Runtime:
    """One runtime under test, and how to ask it for each contract scenario."""

    name: str
    impl: pods.PodRuntime
    scenario: Callable[[str, str], pods.PodRequest]  # (scenario, pod name) -> request
    fake: FakeKube | None = None


def _local_scenarios(kind: str, name: str) -> pods.PodRequest:
    sh = {
        "ok": "echo hello; echo oops >&2",
        "exit3": "echo about to fail; exit 3",
        "oom": None,
        "forever": "echo started; exec sleep 60",
        "missing": None,
    }
    labels = {"flowforge.io/attempt": "1"}
    if kind == "oom":
        return pods.PodRequest(name, labels, command=["python3", "-c", "b = bytearray(400 << 20)"], memory="150Mi")
    if kind == "missing":
        return pods.PodRequest(name, labels, command=["/no/such/program"])
    return pods.PodRequest(name, labels, command=["sh", "-c", sh[kind]])


def _kube_scenarios(kind: str, name: str) -> pods.PodRequest:
    image = {"ok": "test/ok", "exit3": "test/exit:3", "oom": "test/oom", "forever": "test/forever",
             "missing": "test/pull-error"}[kind]
    return pods.PodRequest(name, {"flowforge.io/attempt": "1"}, command=["run"], image=image, memory="150Mi")


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    with FakeKube() as kube:
        kube.behaviour = kube.by_image(step=0.02)
        yield kube


def _kube(fake: FakeKube, **options: object) -> kubepods.KubernetesPodRuntime:
    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(fake.client_config()))
    opts = dict(namespace=NS, start_timeout_s=0.5, stop_grace_s=1, ttl_s=600)
    opts.update(options)
    return kubepods.KubernetesPodRuntime(api, kubepods.Options(**opts))  # type: ignore[arg-type]


@pytest.fixture(params=["local", "kubernetes"])
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    if request.param == "local":
        yield Runtime("local", localpods.LocalProcessRuntime(), _local_scenarios)
        return
    with FakeKube() as kube:
        kube.behaviour = kube.by_image(step=0.02)
        yield Runtime("kubernetes", _kube(kube), _kube_scenarios, kube)


def _using(impl: pods.PodRuntime, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a fresh loop (each test owns one: the watch thread posts into it), then
    close the runtime."""
    async def main() -> T:
        try:
            return await body()
        finally:
            await impl.close()

    return asyncio.run(main())


def _outcome(runtime: Runtime, scenario: str) -> pods.PodOutcome:
    return _using(runtime.impl, lambda: runtime.impl.run(runtime.scenario(scenario, f"ff-{scenario}-1")))


def test_a_pod_that_succeeds(runtime):
    out = _outcome(runtime, "ok")
    assert (out.phase, out.exit_code) == ("succeeded", 0)
    assert out.logs and all(isinstance(at, float) for at, _s, _l in out.logs)
    assert out.startup_s is not None and out.startup_s >= 0


def test_a_non_zero_exit_keeps_its_code(runtime):
    out = _outcome(runtime, "exit3")
    assert (out.phase, out.exit_code) == ("failed", 3) and "exited with code 3" in out.message


def test_running_out_of_memory_is_oom_killed(runtime):
    out = _outcome(runtime, "oom")
    assert out.phase in ("oom_killed", "failed"), out
    if runtime.name == "kubernetes":
        assert out.phase == "oom_killed" and out.exit_code == 137
    else:  # python3 -c raises MemoryError under RLIMIT_AS: a plain failure of the command
        assert out.exit_code == 1 and any("MemoryError" in line for _t, _s, line in out.logs)


def test_an_image_that_cannot_start_fails_clearly(runtime):
    out = _outcome(runtime, "missing")
    assert out.phase == "image_pull" and out.message


def test_stop_ends_a_running_pod(runtime):
    async def main() -> tuple[pods.PodOutcome, float]:
        task = asyncio.ensure_future(runtime.impl.run(runtime.scenario("forever", "ff-stop-1")))
        await asyncio.sleep(0.5)
        began = time.monotonic()
        await runtime.impl.stop("ff-stop-1", grace_s=1)
        return await asyncio.wait_for(task, 10), time.monotonic() - began

    out, took = _using(runtime.impl, main)
    assert out.phase == "stopped" and took < 5
    if runtime.fake is not None:
        deletes = [r for r in runtime.fake.requests_to("DELETE") if r.path.endswith("/ff-stop-1")]
        assert deletes, "the Pod was not deleted"


# ---- Kubernetes only --------------------------------------------------------------------------


def test_the_pod_sent_is_restricted_labelled_and_sized(fake):
    runtime = _kube(fake, sidecars=[{"name": "ship-logs", "image": "fluent-bit"}],
                    init_containers=[{"name": "stage", "image": "stager"}])
    request = pods.PodRequest("ff-json-1", {"flowforge.io/run": "r1", "flowforge.io/task": "train",
                                            "flowforge.io/attempt": "2", "flowforge.io/tenant": "acme"},
                              command=["python", "-m", "agents.podrun"], image="test/ok", cpu="2", memory="1Gi",
                              gpu=1, timeout_s=30, node_selector={"gpu": "a100"},
                              tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])

    async def main() -> None:
        await runtime.run(request)

    _using(runtime, main)
    sent = fake.created["ff-json-1"]
    task = sent["spec"]["containers"][0]
    assert sent["metadata"]["labels"]["flowforge.io/tenant"] == "acme"
    assert task["resources"]["limits"] == {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}
    assert task["securityContext"]["allowPrivilegeEscalation"] is False
    assert task["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sent["spec"]["automountServiceAccountToken"] is False and sent["spec"]["activeDeadlineSeconds"] == 30
    assert [c["name"] for c in sent["spec"]["containers"]] == ["task", "ship-logs"]
    assert sent["spec"]["initContainers"][0]["name"] == "stage"


def test_evicted_and_deadline_pods_say_so(fake):
    runtime = _kube(fake)

    async def main() -> list[pods.PodOutcome]:
        evicted = await runtime.run(pods.PodRequest("ff-ev-1", {}, command=["x"], image="test/evict"))
        late = asyncio.ensure_future(runtime.run(pods.PodRequest("ff-dl-1", {}, command=["x"], image="test/forever",
                                                                 timeout_s=1)))
        return [evicted, await asyncio.wait_for(late, 15)]

    evicted, late = _using(runtime, main)
    assert evicted.phase == "infrastructure" and "evicted" in evicted.message
    assert late.phase == "deadline"


def test_unschedulable_pods_fail_after_the_start_timeout_and_are_removed(fake):
    runtime = _kube(fake, start_timeout_s=0.3)

    async def main() -> pods.PodOutcome:
        return await runtime.run(pods.PodRequest("ff-un-1", {}, command=["x"], image="test/unschedulable"))

    out = _using(runtime, main)
    assert out.phase == "unschedulable"
    fake.wait_gone("ff-un-1", NS)


def test_finished_pods_are_collected_after_their_ttl(fake):
    runtime = _kube(fake, ttl_s=2)

    async def main() -> tuple[int, int]:
        await runtime.run(pods.PodRequest("ff-gc-1", {}, command=["x"], image="test/ok"))
        early = await runtime.collect_garbage()
        await asyncio.sleep(3.1)  # the API's times have whole seconds
        return early, await runtime.collect_garbage()

    early, late = _using(runtime, main)
    assert (early, late) == (0, 1)
    fake.wait_gone("ff-gc-1", NS)


def test_pod_creation_is_rate_limited(fake):
    runtime = _kube(fake, create_qps=10, create_burst=2)
    times: list[float] = []
    create = runtime.api.create_namespaced_pod

    def timed_create(*args, **kwargs):  # when each creation reached the API
        times.append(time.monotonic())
        return create(*args, **kwargs)

    runtime.api.create_namespaced_pod = timed_create

    async def main() -> None:
        await asyncio.gather(*(runtime.run(pods.PodRequest(f"ff-rl-{i}", {}, command=["x"], image="test/ok"))
                               for i in range(6)))

    _using(runtime, main)
    times.sort()
    assert len(times) == 6 and len(fake.requests_to("POST", f"/api/v1/namespaces/{NS}/pods")) == 6
    # 2 at once (the burst), then one every 0.1 s: the last no sooner than 0.4 s after the first.
    assert times[-1] - times[0] >= 0.35, [round(t - times[0], 3) for t in times]


def test_a_redelivered_attempt_follows_its_existing_pod(fake):
    """A launcher that restarts does not create a second Pod for the same attempt."""
    runtime = _kube(fake)
    request = pods.PodRequest("ff-again-1", {}, command=["x"], image="test/sleep:0.3")

    async def main() -> list[pods.PodOutcome]:
        first = asyncio.ensure_future(runtime.run(request))
        await asyncio.sleep(0.1)
        second = await runtime.run(request)  # 409 AlreadyExists: follow the same Pod
        return [await first, second]

    outcomes = _using(runtime, main)
    assert [o.phase for o in outcomes] == ["succeeded", "succeeded"]
    assert len(fake.requests_to("POST", f"/api/v1/namespaces/{NS}/pods")) == 2 and len(fake.pods(NS)) == 1
