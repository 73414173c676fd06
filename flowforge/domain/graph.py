"""The dependency graph of a DAG: topological order, neighbours, ancestors and cycles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Graph:
    order: tuple[str, ...]  # a topological order: every task after all its upstreams
    upstream: Mapping[str, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]

    def ancestors(self, name: str) -> frozenset[str]:
        seen: set[str] = set()
        stack = list(self.upstream[name])
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self.upstream[n])
        return frozenset(seen)


def find_cycle(depends: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a closed path (`[a, b, a]`), or None. Unknown names are ignored."""
    white, grey, black = 0, 1, 2
    colour = {n: white for n in depends}
    for root in depends:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        iters = [iter(depends[root])]
        colour[root] = grey
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = black
                iters.pop()
                continue
            if nxt not in colour:
                continue
            if colour[nxt] == grey:
                return path[path.index(nxt) :] + [nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                iters.append(iter(depends[nxt]))
    return None


def build(depends: Mapping[str, Sequence[str]]) -> Graph:
    """Build the graph of an acyclic dependency mapping (validate first: raises on a cycle)."""
    upstream = {n: tuple(dict.fromkeys(d)) for n, d in depends.items()}
    downstream: dict[str, list[str]] = {n: [] for n in depends}
    for n, ups in upstream.items():
        for u in ups:
            downstream[u].append(n)
    indegree = {n: len(u) for n, u in upstream.items()}
    ready = [n for n in depends if indegree[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop()
        order.append(n)
        for d in downstream[n]:
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    if len(order) != len(upstream):
        raise ValueError(f"dependency cycle: {find_cycle(depends)}")
    return Graph(
        order=tuple(order),
        upstream=upstream,
        downstream={n: tuple(d) for n, d in downstream.items()},
    )
