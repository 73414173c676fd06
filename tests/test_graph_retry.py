"""Property tests for the dependency graph and the retry backoff math."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowforge.domain import graph, retry, spec


@st.composite
def acyclic(draw):
    """A random DAG: each task depends only on tasks earlier in a shuffled order."""
    n = draw(st.integers(1, 25))
    names = draw(st.permutations([f"t{i}" for i in range(n)]))
    return {
        name: draw(st.lists(st.sampled_from(names[:i]), max_size=4)) if i else []
        for i, name in enumerate(names)
    }


@st.composite
def any_graph(draw):
    n = draw(st.integers(1, 10))
    names = [f"t{i}" for i in range(n)]
    return {name: draw(st.lists(st.sampled_from(names), max_size=3)) for name in names}


def closure(depends, name):
    seen, stack = set(), list(depends[name])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(depends[n])
    return seen


def has_cycle(depends):
    return any(n in closure(depends, n) for n in depends)


@given(acyclic())
def test_random_dags_are_ordered_topologically(depends):
    g = graph.build(depends)
    assert sorted(g.order) == sorted(depends)
    position = {n: i for i, n in enumerate(g.order)}
    for name, ups in depends.items():
        for up in ups:
            assert position[up] < position[name]
            assert name in g.downstream[up]
        assert set(g.upstream[name]) == set(ups)
        assert g.ancestors(name) == closure(depends, name)
    assert graph.find_cycle(depends) is None


@given(any_graph())
def test_find_cycle_reports_a_real_cycle_or_none(depends):
    cycle = graph.find_cycle(depends)
    if not has_cycle(depends):
        assert cycle is None
        graph.build(depends)  # and building succeeds
        return
    assert cycle is not None
    assert cycle[0] == cycle[-1] and len(cycle) >= 2
    assert len(set(cycle[:-1])) == len(cycle) - 1  # a simple cycle
    for a, b in zip(cycle, cycle[1:]):
        assert b in depends[a]  # every step is a real dependency
    with pytest.raises(ValueError, match="dependency cycle"):
        graph.build(depends)


@given(acyclic(), st.data())
def test_closing_a_path_creates_a_cycle_that_is_found(depends, data):
    name = data.draw(st.sampled_from(sorted(depends)))
    ancestors = sorted(closure(depends, name))
    if not ancestors:
        return
    up = data.draw(st.sampled_from(ancestors))
    depends = {**depends, up: [*depends[up], name]}
    cycle = graph.find_cycle(depends)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_unknown_names_are_ignored_by_find_cycle():
    assert graph.find_cycle({"a": ["ghost"], "b": ["a"]}) is None
    assert graph.find_cycle({"a": ["a"]}) == ["a", "a"]


policies = st.builds(
    spec.RetryPolicy,
    limit=st.integers(0, 20),
    backoff=st.just("exponential"),
    base_seconds=st.floats(0.001, 100),
    factor=st.floats(1.01, 10),
    max_seconds=st.floats(0, 10_000),
    jitter=st.just(0.0),
)


@given(policies)
def test_exponential_delays_grow_until_the_cap_and_never_exceed_it(policy):
    delays = [retry.backoff_seconds(policy, a, seed="s") for a in range(1, 60)]
    for before, after in zip(delays, delays[1:]):
        assert after >= before
        if after < policy.max_seconds:
            assert after > before  # strictly growing before the cap
    assert all(0 <= d <= policy.max_seconds for d in delays)
    assert delays[0] == min(policy.base_seconds, policy.max_seconds)


@given(st.integers(1, 10**9), st.floats(0, 1000), st.floats(1, 100))
def test_huge_attempt_numbers_do_not_overflow(attempt, base, factor):
    policy = spec.RetryPolicy(base_seconds=base, factor=factor, max_seconds=300, jitter=0)
    assert 0 <= retry.backoff_seconds(policy, attempt, seed="x") <= 300


@given(st.floats(0, 1000), st.integers(1, 100), st.text(max_size=8))
def test_fixed_backoff_is_constant(base, attempt, seed):
    policy = spec.RetryPolicy(backoff="fixed", base_seconds=base, max_seconds=7 * 86_400, jitter=0)
    assert retry.backoff_seconds(policy, attempt, seed=seed) == base


@given(
    st.floats(0, 1),
    st.floats(0, 1000),
    st.integers(1, 50),
    st.text(max_size=20),
    st.sampled_from(["exponential", "fixed"]),
)
def test_jitter_is_bounded_and_deterministic(jitter, base, attempt, seed, backoff):
    policy = spec.RetryPolicy(backoff=backoff, base_seconds=base, jitter=jitter)
    plain = retry.backoff_seconds(policy.model_copy(update={"jitter": 0.0}), attempt, seed=seed)
    delay = retry.backoff_seconds(policy, attempt, seed=seed)
    assert plain * (1 - jitter) - 1e-9 <= delay <= plain
    assert delay <= policy.max_seconds
    assert retry.backoff_seconds(policy, attempt, seed=seed) == delay  # replays exactly


@given(st.text(max_size=30))
def test_unit_interval_is_in_range(seed):
    assert 0 <= retry.unit_interval(seed) < 1


def test_attempts_are_numbered_from_one_and_limit_counts_retries():
    with pytest.raises(ValueError):
        retry.backoff_seconds(spec.RetryPolicy(), 0, seed="s")
    policy = spec.RetryPolicy(limit=2)
    assert [retry.retries_left(policy, a) for a in (1, 2, 3)] == [True, True, False]
    assert retry.retries_left(spec.RetryPolicy(), 1) is False


# ---- timers and scheduler bookkeeping -------------------------------------------------------

from flowforge.engine import scheduling, timers  # noqa: E402


def test_timers_arm_each_identity_once_and_moving_replaces():
    t = timers.Timers()
    t.arm(timers.Timer(5.0, "r", "a", 1, "retry"))
    t.arm(timers.Timer(5.0, "r", "a", 1, "retry"))  # a reload re-arms the same timer
    t.arm(timers.Timer(9.0, "r", "b", 1, "deadline"))
    t.arm(timers.Timer(7.0, "r", "b", 1, "deadline"))  # moved earlier
    assert len(t) == 2
    assert [(x.key, x.at) for x in t.due(100.0, 10)] == [("a", 5.0), ("b", 7.0)]
    assert t.next_at() is None and len(t) == 0


def test_timers_of_forgotten_runs_do_not_fire():
    t = timers.Timers()
    t.arm(timers.Timer(1.0, "gone", "a", 1, "retry"))
    t.arm(timers.Timer(2.0, "kept", "a", 1, "retry"))
    t.disarm_runs({"gone"})
    assert t.next_at() == 2.0
    assert [x.run_id for x in t.due(10.0, 10)] == ["kept"]


def test_heap_stays_bounded_when_timers_keep_moving():
    t = timers.Timers()
    for i in range(10_000):
        t.arm(timers.Timer(float(i), "r", "a", 1, "deadline"))
    assert len(t) == 1 and len(t._heap) < 2_100


def _ready(run: str, key: str) -> scheduling.Ready:
    return scheduling.Ready(run, 0, "t", key, 1, "p", {})


def test_scheduler_knows_which_runs_have_work():
    s = scheduling.Scheduler(lambda pool: 1, prefetch=0.0)
    s.offer(_ready("r1", "a"))
    s.offer(_ready("r2", "a"))
    assert s.has_work("r1") and s.has_work("r2")
    taken = list(s.take(lambda item: True))
    assert [i.run_id for i in taken] == ["r1"]  # one slot
    assert s.has_work("r1") and s.has_work("r2")  # in flight, and waiting
    s.done("r1", "a")
    assert not s.has_work("r1")
    s.forget_runs({"r2"})
    assert not s.has_work("r2") and s.depth() == {"p": 0}
