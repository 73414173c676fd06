"""How many warm agents each pool wants, and on which node groups: pure functions of the nodes
(their node-group labels and `flowforge.io/agent-pools` annotations), the pool's config and
its backlog. The pool manager does the I/O; everything it decides comes from here."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agents.pools import PoolConfig

# A node's group, by the first of these labels it carries.
NODE_GROUP_LABELS = (
    "flowforge.io/node-group",
    "eks.amazonaws.com/nodegroup",
    "cloud.google.com/gke-nodepool",
    "karpenter.sh/nodepool",
)
GROUP_LABEL = NODE_GROUP_LABELS[0]  # what Ray nodes carry, mirroring their Kubernetes node's group
ANNOTATION = "flowforge.io/agent-pools"
_ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]{0,62})\s*=\s*(\d{1,4})\s*$")


@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True

    @property
    def group(self) -> str | None:
        return node_group(self.labels)


def node_group(labels: Mapping[str, str]) -> str | None:
    return next((labels[k] for k in NODE_GROUP_LABELS if labels.get(k)), None)


def parse_annotation(text: str) -> dict[str, int]:
    """`"default=4,etl=2"` -> {"default": 4, "etl": 2}; ValueError naming the bad entry."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _ENTRY.match(part)
        if match is None:
            raise ValueError(f"{ANNOTATION}: {part!r} is not POOL=COUNT (e.g. default=4,etl=2)")
        counts[match[1]] = int(match[2])
    return counts


def format_annotation(counts: Mapping[str, int]) -> str:
    return ",".join(f"{pool}={n}" for pool, n in sorted(counts.items()))


def _selected(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def per_group(pool: PoolConfig, nodes: Iterable[Node]) -> dict[str, int]:
    """Agents the nodes ask for, by node group: a node hosts what its annotation names for this
    pool, else `agents_per_node` (so annotating one pool leaves the others as they were; `pool=0`
    keeps a pool off a node). Nodes that are not ready, have no group, or do not match the
    pool's selector host none."""
    out: dict[str, int] = {}
    for node in nodes:
        group = node.group
        if not node.ready or group is None or not _selected(pool.node_selector, node.labels):
            continue
        text = node.annotations.get(ANNOTATION)
        try:
            n = pool.agents_per_node if text is None else parse_annotation(text).get(pool.name, pool.agents_per_node)
        except ValueError:
            n = 0  # a broken annotation (hand-edited: `annotate` writes only valid ones) hosts nothing
        out[group] = out.get(group, 0) + n
    return out


def clamp(groups: Mapping[str, int], low: int, high: int) -> dict[str, int]:
    """Scale the per-group counts so their sum lies in [low, high], keeping proportions; a
    shortfall goes to the groups in turn (largest first), an excess comes off the largest."""
    out = dict(groups)
    if not out:
        return out
    order = sorted(out, key=lambda g: (-out[g], g))
    total = sum(out.values())
    while total > high:
        g = max(order, key=lambda k: (out[k], k))
        out[g] -= 1
        total -= 1
    i = 0
    while total < low:
        out[order[i % len(order)]] += 1
        total += 1
        i += 1
    return out


def autoscale(base: int, current: int, *, backlog: int, slots_per_agent: int, target: float | None,
              high: int, idle_for: float, delay: float) -> int:
    """The pool's total: `base` from the nodes, raised (within `high`) while the backlog per slot
    passes `target`, and let back down only after `delay` seconds of idleness."""
    if target is None:
        return base
    wanted = math.ceil(backlog / (target * slots_per_agent)) if backlog > 0 else 0
    if wanted > current:
        return min(high, max(base, wanted))
    if current > base and idle_for < delay:
        return min(high, current)  # hold the extra agents until the pool has been idle long enough
    return base


def desired(pool: PoolConfig, nodes: Iterable[Node], *, current: int = 0, backlog: int = 0,
            idle_for: float = math.inf) -> dict[str, int]:
    """Agents wanted per node group."""
    groups = clamp(per_group(pool, nodes), pool.min_agents, pool.max_agents)
    base = sum(groups.values())
    total = autoscale(base, current, backlog=backlog, slots_per_agent=pool.slots_per_agent,
                      target=pool.target_backlog_per_slot, high=pool.max_agents, idle_for=idle_for,
                      delay=pool.scale_down_delay_seconds)
    if total > base and groups:  # the extra agents go where the pool already lives
        groups = clamp(groups, total, total)
    return groups
