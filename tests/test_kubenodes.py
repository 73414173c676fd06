"""The Kubernetes node source through the real `kubernetes` client against the in-test API server:
node groups and readiness, change notifications from the watch, pool-count annotations, a watch
that expires (410) and relists, and a clean close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import kubernetes.client
import pytest

from agents import sizing
from agents.kubenodes import KubernetesNodes
from tests.kube_fake import FakeKube

T = TypeVar("T")
GROUP = "flowforge.io/node-group"
GKE_POOL = "cloud.google.com/gke-nodepool"
MERGE = "application/merge-patch+json"


def _api(fake: FakeKube) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(fake.client_config()))


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    with FakeKube() as kube:
        yield kube


def _seed(fake: FakeKube) -> None:
    """Three nodes in two groups; etl-2 names its group the GKE way."""
    fake.add_node("etl-1", labels={GROUP: "etl"}, annotations={sizing.ANNOTATION: "default=1,gpu=2"})
    fake.add_node("etl-2", labels={GKE_POOL: "etl"})
    fake.add_node("gpu-1", labels={GROUP: "gpu"}, annotations={sizing.ANNOTATION: "default=5"})


def _using(nodes: KubernetesNodes, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a fresh loop (the watch thread posts into it), then close the source."""
    async def main() -> T:
        try:
            return await body()
        finally:
            await nodes.close()

    return asyncio.run(main())


async def _changed_within(nodes: KubernetesNodes, seconds: float = 2.0) -> float:
    """How long `wait_changed` took to report a change (failing the test if it did not)."""
    began = time.monotonic()
    assert await nodes.wait_changed(seconds), f"no change reported within {seconds}s"
    return time.monotonic() - began


async def _patch(api: kubernetes.client.CoreV1Api, name: str, body: dict) -> None:
    await asyncio.to_thread(api.patch_node, name, body, _content_type=MERGE)


def _by_name(snapshot: list[sizing.Node]) -> dict[str, sizing.Node]:
    return {n.name: n for n in snapshot}


def test_snapshot_names_each_nodes_group_and_annotations(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))
    snap = _using(nodes, nodes.snapshot)
    assert [n.name for n in snap] == ["etl-1", "etl-2", "gpu-1"]
    got = _by_name(snap)
    assert {name: n.group for name, n in got.items()} == {"etl-1": "etl", "etl-2": "etl", "gpu-1": "gpu"}
    assert got["etl-1"].annotations[sizing.ANNOTATION] == "default=1,gpu=2"
    assert sizing.ANNOTATION not in got["etl-2"].annotations
    assert got["etl-2"].labels[GKE_POOL] == "etl" and got["etl-2"].labels["kubernetes.io/hostname"] == "etl-2"
    assert all(n.ready for n in snap)


def test_a_label_selector_limits_the_nodes(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake), label_selector=GROUP)
    assert [n.name for n in _using(nodes, nodes.snapshot)] == ["etl-1", "gpu-1"]


def test_a_node_not_ready_or_cordoned_is_not_ready(fake):
    fake.add_node("up", labels={GROUP: "etl"})
    fake.add_node("down", labels={GROUP: "etl"}, ready=False)
    fake.add_node("cordoned", labels={GROUP: "etl"}, unschedulable=True)
    nodes = KubernetesNodes(_api(fake))
    other = _api(fake)

    async def body() -> None:
        ready = {n.name: n.ready for n in await nodes.snapshot()}
        assert ready == {"up": True, "down": False, "cordoned": False}
        fake.set_node_ready("down", True)
        await _changed_within(nodes)
        await _patch(other, "cordoned", {"spec": {"unschedulable": False}})  # uncordon
        await _patch(other, "up", {"spec": {"unschedulable": True}})  # cordon
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            ready = {n.name: n.ready for n in await nodes.snapshot()}
            if ready == {"up": False, "down": True, "cordoned": True}:
                return
            await nodes.wait_changed(0.2)
        pytest.fail(f"readiness not followed: {ready}")

    _using(nodes, body)


def test_wait_changed_reports_added_annotated_and_removed_nodes(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))
    other = _api(fake)  # someone else: an operator's kubectl

    async def body() -> None:
        await nodes.snapshot()
        assert not await nodes.wait_changed(0.3)  # nothing happened since the snapshot

        fake.add_node("etl-3", labels={GROUP: "etl"})
        assert await _changed_within(nodes) < 2
        assert "etl-3" in _by_name(await nodes.snapshot())

        await _patch(other, "etl-2", {"metadata": {"annotations": {sizing.ANNOTATION: "default=7"}}})
        await _changed_within(nodes)
        assert _by_name(await nodes.snapshot())["etl-2"].annotations[sizing.ANNOTATION] == "default=7"

        fake.remove_node("gpu-1")
        await _changed_within(nodes)
        assert [n.name for n in await nodes.snapshot()] == ["etl-1", "etl-2", "etl-3"]

        assert not await nodes.wait_changed(0.3)  # each change is reported once

    _using(nodes, body)


def test_wait_changed_without_a_snapshot_first(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))

    async def body() -> None:
        waiting = asyncio.create_task(nodes.wait_changed(3))
        await asyncio.sleep(0.3)
        fake.add_node("late", labels={GROUP: "gpu"})
        assert await waiting
        assert "late" in _by_name(await nodes.snapshot())

    _using(nodes, body)


def test_changes_sizing_does_not_see_do_not_wake_the_waiter(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))
    other = _api(fake)

    async def body() -> None:
        await nodes.snapshot()
        before = fake.resource_version
        await _patch(other, "etl-1", {"spec": {"taints": [{"key": "maintenance", "effect": "NoSchedule"}]}})
        assert fake.resource_version > before  # the node did change (a watch event was sent)
        assert not await nodes.wait_changed(0.5)

    _using(nodes, body)


def test_annotate_merges_the_counts_into_every_node_of_the_group(fake):
    _seed(fake)
    fake.add_node("etl-3", labels={GROUP: "etl"}, annotations={sizing.ANNOTATION: "not a count"})
    nodes = KubernetesNodes(_api(fake))

    async def body() -> list[str]:
        return await nodes.annotate("etl", {"default": 3})

    assert _using(nodes, body) == ["etl-1", "etl-2", "etl-3"]
    patches = fake.requests_to("PATCH", "/api/v1/nodes/")
    assert {r.path.rsplit("/", 1)[-1]: r.body for r in patches} == {
        "etl-1": {"metadata": {"annotations": {sizing.ANNOTATION: "default=3,gpu=2"}}},  # gpu's count kept
        "etl-2": {"metadata": {"annotations": {sizing.ANNOTATION: "default=3"}}},
        "etl-3": {"metadata": {"annotations": {sizing.ANNOTATION: "default=3"}}},  # the broken one replaced
    }
    assert all(r.content_type == MERGE for r in patches)
    annotation = {name: fake.node(name)["metadata"]["annotations"].get(sizing.ANNOTATION)
                  for name in ("etl-1", "etl-2", "etl-3", "gpu-1")}
    assert annotation == {"etl-1": "default=3,gpu=2", "etl-2": "default=3", "etl-3": "default=3",
                          "gpu-1": "default=5"}  # the other group untouched


def test_annotate_keeps_a_zero_and_its_own_change_is_seen(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))

    async def body() -> None:
        await nodes.snapshot()
        assert await nodes.annotate("gpu", {"etl": 0}) == ["gpu-1"]
        await _changed_within(nodes)
        assert _by_name(await nodes.snapshot())["gpu-1"].annotations[sizing.ANNOTATION] == "default=5,etl=0"

    _using(nodes, body)
    assert fake.node("gpu-1")["metadata"]["annotations"][sizing.ANNOTATION] == "default=5,etl=0"


def test_annotate_an_unknown_group_or_bad_counts_writes_nothing(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))

    async def body() -> None:
        with pytest.raises(LookupError) as err:
            await nodes.annotate("nope", {"default": 1})
        assert str(err.value) == "no nodes in node group 'nope' (known groups: etl, gpu)"
        with pytest.raises(ValueError):
            await nodes.annotate("etl", {"default": -1})
        with pytest.raises(ValueError):
            await nodes.annotate("etl", {"no spaces": 1})

    _using(nodes, body)
    assert fake.requests_to("PATCH") == []


def _lists(fake: FakeKube) -> int:
    return sum(1 for r in fake.requests_to("GET", "/api/v1/nodes") if r.query.get("watch") != "true")


def test_an_expired_watch_relists_and_keeps_the_right_nodes():
    with FakeKube(history_size=5) as kube:
        _seed(kube)
        nodes = KubernetesNodes(_api(kube))

        async def body() -> None:
            await nodes.snapshot()
            assert kube.wait_for(lambda: kube.open_streams == 1)
            with kube._lock:  # many events before the watch can read any: it falls out of the history
                for i in range(20):
                    kube.add_node(f"tmp-{i}", labels={GROUP: "tmp"})
                for i in range(20):
                    kube.remove_node(f"tmp-{i}")
                kube.remove_node("gpu-1")
                kube.set_node_ready("etl-2", False)
                kube.add_node("new-1", labels={GROUP: "new"})
            want = {"etl-1": True, "etl-2": False, "new-1": True}
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = {n.name: n.ready for n in await nodes.snapshot()}
                if got == want:
                    break
                await nodes.wait_changed(0.2)
            assert got == want
            assert _lists(kube) >= 2  # the first list and the relist after 410

            kube.add_node("after", labels={GROUP: "new"})  # and it watches on from there
            await _changed_within(nodes)
            assert "after" in _by_name(await nodes.snapshot())

        _using(nodes, body)


def test_close_leaves_no_thread_or_watch_behind(fake):
    _seed(fake)
    nodes = KubernetesNodes(_api(fake))

    async def body() -> None:
        await nodes.snapshot()
        assert fake.wait_for(lambda: fake.open_streams == 1)
        assert any(t.name == "ff-node-watch" for t in threading.enumerate())

    _using(nodes, body)
    assert nodes._watch_thread is not None and not nodes._watch_thread.is_alive()
    assert not any(t.name == "ff-node-watch" for t in threading.enumerate())
    assert fake.wait_for(lambda: fake.open_streams == 0, timeout=2)


def test_close_before_any_use_is_fine(fake):
    nodes = KubernetesNodes(_api(fake))
    asyncio.run(nodes.close())
    assert fake.requests == []
