"""Pool sizing from nodes, annotations and backlog: properties of the pure core."""

from __future__ import annotations


import pytest
from hypothesis import given, strategies as st

from agents import sizing
from agents.pools import PoolConfig

GROUPS = ["a", "b", "c"]
counts = st.dictionaries(st.sampled_from(["default", "etl", "gpu"]), st.integers(0, 20), max_size=3)


@st.composite
def nodes(draw: st.DrawFn) -> list[sizing.Node]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        labels = {sizing.NODE_GROUP_LABELS[draw(st.integers(0, 3))]: draw(st.sampled_from(GROUPS))}
        if draw(st.booleans()):
            labels["tier"] = draw(st.sampled_from(["cpu", "gpu"]))
        ann = draw(st.one_of(st.none(), counts.map(sizing.format_annotation), st.just("broken")))
        out.append(sizing.Node(f"n{i}", labels, {} if ann is None else {sizing.ANNOTATION: ann},
                               ready=draw(st.booleans())))
    return out


@st.composite
def pools(draw: st.DrawFn) -> PoolConfig:
    low = draw(st.integers(0, 10))
    return PoolConfig(name=draw(st.sampled_from(["default", "etl"])), agents_per_node=draw(st.integers(0, 5)),
                      min_agents=low, max_agents=draw(st.integers(low, 40)),
                      node_selector=draw(st.sampled_from([{}, {"tier": "cpu"}])),
                      target_backlog_per_slot=draw(st.one_of(st.none(), st.floats(0.5, 10))))


@given(counts)
def test_annotations_round_trip(c):
    assert sizing.parse_annotation(sizing.format_annotation(c)) == c


@pytest.mark.parametrize("bad", ["default", "default=x", "=3", "default=-1", "a b=2", "default=99999"])
def test_bad_annotations_name_the_entry(bad):
    with pytest.raises(ValueError, match="POOL=COUNT"):
        sizing.parse_annotation(bad)


@given(pools(), nodes(), st.integers(0, 500), st.integers(0, 40), st.floats(0, 1000))
def test_desired_stays_within_bounds_and_on_groups_that_host_the_pool(pool, found, backlog, current, idle):
    want = sizing.desired(pool, found, current=current, backlog=backlog, idle_for=idle)
    hosting = {n.group for n in found if n.ready and n.group and all(n.labels.get(k) == v for k, v in
                                                                      pool.node_selector.items())}
    assert set(want) <= hosting  # never on a group without a matching, ready node
    total = sum(want.values())
    assert all(v >= 0 for v in want.values())
    if want:
        assert pool.min_agents <= total <= pool.max_agents
    else:
        assert total == 0  # no node to host it: nothing, whatever min_agents says


@given(pools(), nodes())
def test_without_backlog_or_autoscaling_the_nodes_decide(pool, found):
    base = sizing.desired(pool, found)
    annotated = sum(
        (pool.agents_per_node if sizing.ANNOTATION not in n.annotations else
         (sizing.parse_annotation(n.annotations[sizing.ANNOTATION]).get(pool.name, pool.agents_per_node)
          if n.annotations[sizing.ANNOTATION] != "broken" else 0))
        for n in found if n.ready and n.group and all(n.labels.get(k) == v for k, v in pool.node_selector.items()))
    if base:
        assert sum(base.values()) == min(pool.max_agents, max(pool.min_agents, annotated))


def test_autoscaling_raises_then_holds_then_lets_go():
    args = dict(slots_per_agent=4, target=2.0, high=10, delay=60)
    assert sizing.autoscale(2, 2, backlog=40, idle_for=0, **args) == 5  # ceil(40 / (2 * 4))
    assert sizing.autoscale(2, 2, backlog=400, idle_for=0, **args) == 10  # capped at max_agents
    assert sizing.autoscale(2, 5, backlog=0, idle_for=30, **args) == 5  # idle, but not for long enough
    assert sizing.autoscale(2, 5, backlog=0, idle_for=61, **args) == 2  # idle long enough: back to base
    assert sizing.autoscale(2, 2, backlog=40, idle_for=0, slots_per_agent=4, target=None, high=10, delay=60) == 2


def test_cloud_node_group_labels_are_understood():
    for label in sizing.NODE_GROUP_LABELS:
        assert sizing.node_group({label: "g1"}) == "g1"
    assert sizing.node_group({"other": "x"}) is None
