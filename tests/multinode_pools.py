"""Pools on a multi-node Ray cluster sized by Kubernetes node annotations. Runs as its own
process (`python -m tests.multinode_pools`): it starts its own Ray cluster, which the test
session's shared Ray instance must not meet. Prints one JSON line of findings; exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import kubernetes.client
import ray
import redis
from ray.cluster_utils import Cluster

from agents import kubenodes, manager, sizing
from agents.pools import PoolConfig
from tests.kube_fake import FakeKube

ROOT = str(Path(__file__).resolve().parent.parent)


async def converge(m: manager.PoolManager, want: dict[str, dict[str, int]], timeout: float = 30.0) -> float:
    """Seconds until every pool has exactly `want` ready agents per group (AssertionError after timeout)."""
    began = time.monotonic()
    while True:
        have = {p: {g: n for g, n in s["groups"].items() if n} for p, s in m.status().items()}
        settled = not any(s["starting"] or s["draining"] for s in m.status().values())
        if have == want and settled:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"after {timeout}s: {have}, wanted {want}")
        await asyncio.sleep(0.05)


async def placement(m: manager.PoolManager, nodes_of_group: dict[str, str]) -> list[str]:
    wrong = []
    for member in list(m.members.values()):
        node = await member.actor.node.remote()
        if node != nodes_of_group[member.group]:
            wrong.append(f"{member.name} on {node[:8]}, not on group {member.group}")
    return wrong


async def scenario(redis_url: str, groups: dict[str, str]) -> dict:
    found: dict = {}
    with FakeKube() as fake:
        fake.add_node("cpu-1", labels={"flowforge.io/node-group": "cpu"})
        fake.add_node("cpu-2", labels={"flowforge.io/node-group": "cpu"})
        fake.add_node("gpu-1", labels={"cloud.google.com/gke-nodepool": "gpu"})
        api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(fake.client_config()))
        nodes = kubenodes.KubernetesNodes(api)
        pools = {
            "default": PoolConfig(name="default", agents_per_node=1, slots_per_agent=1, allowed_functions=["tests.*"]),
            "etl": PoolConfig(name="etl", agents_per_node=1, slots_per_agent=1, node_selector={
                "cloud.google.com/gke-nodepool": "gpu"}, allowed_functions=["tests.*"]),
        }
        m = manager.PoolManager(pools, redis_url=redis_url, partitions=1, agent_defaults={"lease_s": 5},
                                nodes=nodes, reconcile_s=0.2, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
        await m.start(ready_timeout=60)
        try:
            found["initial_s"] = await converge(m, {"default": {"cpu": 2, "gpu": 1}, "etl": {"gpu": 1}}, 30)
            found["misplaced_initial"] = await placement(m, groups)
            await nodes.annotate("cpu", {"default": 2})  # what `flowforge pools annotate cpu default=2` does
            found["annotate_s"] = await converge(m, {"default": {"cpu": 4, "gpu": 1}, "etl": {"gpu": 1}})
            found["misplaced_after_annotate"] = await placement(m, groups)
            fake.remove_node("cpu-2")
            found["remove_node_s"] = await converge(m, {"default": {"cpu": 2, "gpu": 1}, "etl": {"gpu": 1}})
            fake.add_node("gpu-2", labels={"cloud.google.com/gke-nodepool": "gpu"},
                          annotations={sizing.ANNOTATION: "etl=2"})
            # gpu-2 names etl only: default keeps its agents_per_node there.
            found["add_node_s"] = await converge(m, {"default": {"cpu": 2, "gpu": 2}, "etl": {"gpu": 3}})
            found["misplaced_final"] = await placement(m, groups)
            found["annotations"] = {n["metadata"]["name"]: n["metadata"].get("annotations", {}).get(sizing.ANNOTATION)
                                    for n in (fake.node(x) for x in ("cpu-1", "gpu-1"))}
        finally:
            await m.stop(drain_s=1)
    return found


def main() -> int:
    redis_url = sys.argv[1]
    redis.Redis.from_url(redis_url).flushdb()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "labels": {sizing.GROUP_LABEL: "ctl"}})
    try:
        cpu = cluster.add_node(num_cpus=1, labels={sizing.GROUP_LABEL: "cpu"})
        gpu = cluster.add_node(num_cpus=1, labels={sizing.GROUP_LABEL: "gpu"})
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        found = asyncio.run(scenario(redis_url, {"cpu": cpu.node_id, "gpu": gpu.node_id}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
