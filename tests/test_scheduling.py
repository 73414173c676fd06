"""The fair scheduler: weighted shares across tenants, priorities within one, no starvation,
no credit for idleness, and dispatch only into free slots. Properties over random workloads."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings, strategies as st

from flowforge.engine.scheduling import Ready, Scheduler


def _item(tenant: str, n: int, priority: int = 0, pool: str = "p") -> Ready:
    return Ready(f"{tenant}-run", 0, tenant, f"t{n}", 1, pool, {}, priority)


def _one_at_a_time(s: Scheduler, n: int) -> list[Ready]:
    """The next `n` dispatches, each attempt finishing as soon as it is dispatched."""
    out: list[Ready] = []
    while len(out) < n:
        before = len(out)
        for item in s.take(lambda _: True):
            out.append(item)
            s.done(item.run_id, item.key)
            if len(out) == n:
                break
        if len(out) == before:
            break
    return out


@given(st.dictionaries(st.sampled_from("abcd"), st.integers(1, 4), min_size=2, max_size=4), st.integers(20, 200))
def test_backlogged_tenants_get_dispatches_in_proportion_to_their_weights(weights, n):
    s = Scheduler(lambda pool: 1, 0.0, weight=lambda t: weights[t])
    for tenant in weights:
        for i in range(n * 4):
            s.offer(_item(tenant, i))
    got = Counter(i.tenant for i in _one_at_a_time(s, n))
    total = sum(weights.values())
    for tenant, w in weights.items():
        assert abs(got[tenant] - n * w / total) <= len(weights) + 1, (got, weights)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(-3, 3)), min_size=1, max_size=60))
def test_within_a_tenant_higher_priority_goes_first_and_equals_keep_their_order(items):
    s = Scheduler(lambda pool: 1, 0.0)
    for n, (tenant, prio) in enumerate(items):
        s.offer(_item(tenant, n, prio))
    order = _one_at_a_time(s, len(items))
    assert len(order) == len(items)
    for tenant in "abc":
        mine = [(-i.priority, int(i.key[1:])) for i in order if i.tenant == tenant]
        assert mine == sorted(mine)


@given(st.integers(1, 8), st.integers(0, 3))
def test_no_tenant_starves_and_idleness_earns_no_credit(slots, prefetch_tenths):
    s = Scheduler(lambda pool: slots, 0.0)
    for i in range(500):
        s.offer(_item("flood", i))
    flood_first = _one_at_a_time(s, 100)  # the flood has the pool to itself for a while
    assert {i.tenant for i in flood_first} == {"flood"}
    for i in range(50):
        s.offer(_item("late", i))
    nxt = _one_at_a_time(s, 20)
    late = sum(i.tenant == "late" for i in nxt)
    # The latecomer is served at once and shares evenly; the flood's head start earns it nothing.
    assert nxt[0].tenant == "late" or nxt[1].tenant == "late"
    assert 8 <= late <= 12, Counter(i.tenant for i in nxt)


@given(st.integers(1, 16), st.floats(0, 2), st.integers(0, 100))
def test_dispatch_goes_into_free_slots_only(slots, prefetch, n):
    s = Scheduler(lambda pool: slots, prefetch)
    for i in range(n):
        s.offer(_item("a" if i % 2 else "b", i))
    first = list(s.take(lambda _: True))
    limit = slots + int(-(-slots * prefetch // 1))
    assert len(first) == min(n, limit)
    assert list(s.take(lambda _: True)) == []  # nothing more until something finishes
    if first:
        s.done(first[0].run_id, first[0].key)
        assert len(list(s.take(lambda _: True))) == (1 if n > limit else 0)


def test_first_come_first_served_when_fairness_is_off():
    s = Scheduler(lambda pool: 1, 0.0, fair=False)
    for i in range(10):
        s.offer(_item("flood", i))
    s.offer(_item("late", 99))
    order = _one_at_a_time(s, 11)
    assert [i.tenant for i in order] == ["flood"] * 10 + ["late"]


def test_attempts_no_longer_wanted_are_dropped_without_charging_their_tenant():
    s = Scheduler(lambda pool: 2, 0.0)
    for item in (_item("a", 0), _item("a", 1), _item("b", 0)):
        s.offer(item)
    got = list(s.take(lambda item: (item.tenant, item.key) != ("a", "t0")))
    # a's stale t0 is dropped uncharged, so a (first by name on a tie) still goes first.
    assert [(i.tenant, i.key) for i in got] == [("a", "t1"), ("b", "t0")] and s.backlog("p") == 0


@given(st.integers(1, 5), st.integers(1, 8), st.booleans())
def test_a_tenant_never_has_more_in_flight_than_its_quota(quota, slots, fair):
    s = Scheduler(lambda pool: slots, 1.0, fair=fair)
    s.set_quotas({"capped": quota})
    for i in range(40):
        s.offer(_item("capped", i))
        s.offer(_item("free", i))
    inflight: list[Ready] = []
    for step in range(60):
        inflight += list(s.take(lambda _: True))
        capped = [i for i in inflight if i.tenant == "capped"]
        assert len(capped) <= quota
        if inflight:  # one attempt ends per step
            done = inflight.pop(0)
            s.done(done.run_id, done.key)
    s.set_quotas({"capped": quota + 2})  # a raised quota applies to the next dispatch
    got = list(s.take(lambda _: True))
    assert sum(i.tenant == "capped" for i in inflight + got) <= quota + 2


@given(st.integers(2, 32), st.integers(1, 3), st.integers(1, 3), st.randoms(use_true_random=False))
def test_slots_are_shared_by_weight_however_long_tasks_run(slots, w_long, w_short, rnd):
    """Tenant `long` holds every slot with tasks that never end on their own; `short` arrives
    with tasks that end at once. Every freed slot goes to `short` until it holds its weighted
    share; from then on the held slots stay in proportion to the weights (within one slot)."""
    weights = {"long": w_long, "short": w_short}
    s = Scheduler(lambda pool: slots, 0.0, weight=lambda t: weights[t])
    for i in range(slots * 20):
        s.offer(_item("long", i))
    held = list(s.take(lambda _: True))
    assert len(held) == slots and {i.tenant for i in held} == {"long"}
    for i in range(slots * 20):
        s.offer(_item("short", i))
    for _ in range(slots * 4):
        victim = held.pop(rnd.randrange(len(held)))  # some attempt ends; its slot frees
        s.done(victim.run_id, victim.key)
        held += list(s.take(lambda _: True))
        n_short = sum(i.tenant == "short" for i in held)
        target = slots * w_short / (w_long + w_short)
        assert n_short <= target + 1, (n_short, target)
    assert abs(sum(i.tenant == "short" for i in held) - target) <= 1


# ---- quotas: attempts, CPU, memory and GPU in flight, per tenant and per project ----------

from decimal import Decimal  # noqa: E402

from hypothesis import settings  # noqa: E402

from flowforge.domain import routing, spec  # noqa: E402
from flowforge.engine.limits import Cost, Quota, request_cost, slot_cost  # noqa: E402

_DIMS = ("max_running_tasks", "max_cpu", "max_memory", "max_gpu")


def _costly(tenant: str, project: str, n: int, cost: Cost, pool: str = "p", priority: int = 0) -> Ready:
    return Ready(f"{tenant}-{project}-run", 0, tenant, f"t{n}", 1, pool, {}, priority, project, cost)


def _used(items: list[Ready], tenant: str, project: str | None) -> dict[str, int]:
    mine = [i for i in items if i.tenant == tenant and (project is None or i.project == project)]
    return {"max_running_tasks": len(mine), "max_cpu": sum(i.cost.cpu for i in mine),
            "max_memory": sum(i.cost.memory for i in mine), "max_gpu": sum(i.cost.gpu for i in mine)}


def _within(q: Quota, used: dict[str, int]) -> bool:
    return all(getattr(q, d) is None or used[d] <= getattr(q, d) * (1000 if d == "max_gpu" else 1) for d in _DIMS)


_costs = st.builds(Cost, st.sampled_from([0, 250, 1000, 1500]), st.sampled_from([0, 2**29, 2**30]),
                   st.sampled_from([0, 0, 500, 1000, 2000]))
_quotas = st.builds(Quota, st.none() | st.integers(1, 4), st.none() | st.sampled_from([1000, 2000, 3000]),
                    st.none() | st.sampled_from([2**30, 2**31]), st.none() | st.integers(0, 3))
_work = st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["x", "y"]), _costs, st.integers(0, 2)),
                 min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(_work, st.dictionaries(st.sampled_from("ab"), _quotas),
       st.dictionaries(st.tuples(st.sampled_from("ab"), st.sampled_from(["x", "y"])), _quotas),
       st.integers(1, 8), st.booleans(), st.randoms(use_true_random=False))
def test_dispatch_never_exceeds_a_tenant_or_project_limit_and_leaves_no_fitting_lane_idle(
        work, tenant_quotas, project_quotas, slots, fair, rnd):
    s = Scheduler(lambda pool: slots, 0.0, fair=fair)
    s.set_limits(tenant_quotas, project_quotas)
    for n, (tenant, project, cost, prio) in enumerate(work):
        s.offer(_costly(tenant, project, n, cost, priority=prio))
    inflight: list[Ready] = []
    for _ in range(3 * len(work)):
        inflight += list(s.take(lambda _: True))
        for (tenant, project), q in [((t, None), q) for t, q in tenant_quotas.items()] + list(project_quotas.items()):
            assert _within(q, _used(inflight, tenant, project)), (tenant, project, q, inflight)
        if fair and s.free("p") > 0:
            # Work-conserving within quotas: a slot stays free only if every lane's head waits
            # for a quota, and says which.
            waits = s.quota_waits()
            assert s.backlog("p") == 0 or len(waits) == sum(
                len(lanes) for lanes in s._pools["p"].queues.values()), waits
            assert all(w.startswith("quota: ") for w in waits.values())
        if not inflight:
            break
        for item in rnd.sample(inflight, rnd.randint(1, len(inflight))):  # some attempts end
            inflight.remove(item)
            s.done(item.run_id, item.key)
    if not inflight:
        assert s._usage == {}  # every scope's usage went back to nothing


def test_a_tenant_under_its_quota_is_not_held_back_by_one_at_its_quota():
    gpu = Cost(cpu=1000, gpu=1000)
    s = Scheduler(lambda pool: 10, 0.0)
    s.set_limits({"capped": Quota(max_gpu=2)})
    for i in range(50):
        s.offer(_costly("capped", "default", i, gpu))
    for i in range(5):
        s.offer(_costly("free", "default", i, gpu))
    got = list(s.take(lambda _: True))
    assert sum(i.tenant == "capped" for i in got) == 2  # its GPU quota
    assert sum(i.tenant == "free" for i in got) == 5  # every one of the other's, at once
    assert s.quota_waits() == {("p", "capped", "default"): "quota: tenant capped max_gpu 2 (2 in use)"}


def test_a_project_at_its_limit_holds_only_its_own_lane():
    s = Scheduler(lambda pool: 10, 0.0)
    s.set_limits({"acme": Quota(max_cpu=4000)}, {("acme", "ml"): Quota(max_cpu=1000)})
    for i in range(6):
        s.offer(_costly("acme", "ml", i, Cost(cpu=1000), priority=5))  # higher priority, but capped
    for i in range(6):
        s.offer(_costly("acme", "etl", 10 + i, Cost(cpu=1000)))
    got = list(s.take(lambda _: True))
    assert [i.project for i in got].count("ml") == 1 and [i.project for i in got].count("etl") == 3
    assert s.usage("acme") == Cost(cpu=4000) and s.running("acme", "ml") == 1
    # The tenant's limit is checked (and named) first; with it raised, ml's own would show.
    assert s.quota_waits() == {
        ("p", "acme", "ml"): "quota: tenant acme max_cpu 4 (4 in use)",
        ("p", "acme", "etl"): "quota: tenant acme max_cpu 4 (4 in use)",
    }
    s.set_limits({"acme": Quota(max_cpu=8000)}, {("acme", "ml"): Quota(max_cpu=1000)})
    assert s.quota_waits() == {("p", "acme", "ml"): "quota: project acme/ml max_cpu 1 (1 in use)"}
    more = list(s.take(lambda _: True))
    assert [i.project for i in more] == ["etl"] * 3
    assert s.quota_waits() == {("p", "acme", "ml"): "quota: project acme/ml max_cpu 1 (1 in use)"}


@settings(deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6))
def test_a_quota_change_applies_to_the_next_take(low, extra, slots):
    s = Scheduler(lambda pool: slots + low + extra, 0.0)
    s.set_limits({"t": Quota(max_gpu=low)})
    for i in range(30):
        s.offer(_costly("t", "default", i, Cost(gpu=1000)))
    first = list(s.take(lambda _: True))
    assert len(first) == low
    s.set_limits({"t": Quota(max_gpu=low + extra)})  # raised: the next take fills up to it
    assert len(list(s.take(lambda _: True))) == extra
    s.set_limits({"t": Quota(max_gpu=0)})  # lowered below what runs: nothing new starts
    for item in first:
        s.done(item.run_id, item.key)
    assert list(s.take(lambda _: True)) == []
    assert s.quota_waits()[("p", "t", "default")].startswith("quota: tenant t max_gpu 0 (")
    s.set_limits({})  # removed: everything may go, up to the free slots
    assert len(list(s.take(lambda _: True))) == min(30 - low - extra, slots + low)


def test_a_head_that_can_never_fit_says_so_and_does_not_starve_other_lanes():
    s = Scheduler(lambda pool: 4, 0.0)
    s.set_limits({"t": Quota(max_gpu=1)})
    s.offer(_costly("t", "big", 0, Cost(gpu=4000), priority=9))
    s.offer(_costly("t", "big", 1, Cost(gpu=0)))  # behind the head of its lane: waits with it
    s.offer(_costly("t", "small", 2, Cost(gpu=0)))
    got = list(s.take(lambda _: True))
    assert [(i.project, i.key) for i in got] == [("small", "t2")]
    why = s.quota_waits()[("p", "t", "big")]
    assert why == "quota: tenant t max_gpu 1 (0 in use); the task alone needs 4: raise max_gpu or lower its request"


def test_within_a_tenant_priorities_hold_across_projects():
    s = Scheduler(lambda pool: 1, 0.0)
    s.offer(_costly("t", "x", 0, Cost(), priority=0))
    s.offer(_costly("t", "y", 1, Cost(), priority=3))
    s.offer(_costly("t", "x", 2, Cost(), priority=5))
    assert [i.key for i in _one_at_a_time(s, 3)] == ["t2", "t1", "t0"]


def test_costs_light_slots_share_their_agent_heavy_ones_count_their_requests():
    shape = routing.SlotShape(capacity=8, cpu=Decimal("0.5"), memory=Decimal(2**30), gpu=Decimal("0.25"))
    assert slot_cost(shape) == Cost(cpu=500, memory=2**30, gpu=250)
    assert request_cost(spec.Resources(cpu="1500m", memory="2Gi", gpu=2)) == Cost(1500, 2 * 2**30, 2000)
    assert request_cost(spec.Resources()) == Cost(0, 0, 0)  # no requests: counts nothing


@settings(deadline=None)
@given(st.integers(1, 12), st.integers(0, 10), st.integers(1, 30), st.integers(1, 3), st.randoms(use_true_random=False))
def test_a_newcomer_gets_prefetched_room_back_in_fair_order(slots, prefetch_tenths, newcomer, w_b, rnd):
    """A floods the pool (slots + prefetch in flight, some read by agents, some not); B arrives.
    Taking back A's unread entries puts B's attempts first in the next dispatch, B gets up to
    its weighted share at once, A's taken-back attempts come again in their order, and no
    attempt is lost or doubled."""
    s = Scheduler(lambda pool: slots, prefetch_tenths / 10, weight=lambda t: w_b if t == "b" else 1.0)
    flood = [_item("a", n) for n in range(4 * slots + 10)]
    for item in flood:
        s.offer(item)
    first = list(s.take(lambda _: True))
    for n, item in enumerate(first):
        s.placed(item, f"1-{n}".encode())
    budget = len(first)
    read = {f"1-{n}".encode() for n in range(budget) if rnd.random() < 0.5}  # agents hold these
    for n in range(newcomer):
        s.offer(_item("b", n))
    asked = [i for ids in s.revocable().values() for i in ids]
    assert sorted(asked) == sorted(f"1-{n}".encode() for n in range(budget))  # all of A's: it is over its share
    taken = [i for i in asked if i not in read]
    assert s.revoked(1, "p", asked, taken) == 0  # another partition's stream: ids there are not these
    assert s.revoked(0, "p", asked, taken) == len(taken)
    again = list(s.take(lambda _: True))
    assert not taken or again[0].tenant == "b"  # B's attempts go before A's taken-back ones
    b_held = sum(1 for item in again if item.tenant == "b")
    # B holds its weighted share at once, as far as the room taken back allows
    assert b_held >= min(math.floor(budget * w_b / (w_b + 1)), len(taken), newcomer)
    a_again = [item.key for item in again if item.tenant == "a"]
    assert a_again == sorted(a_again, key=lambda k: int(k[1:]))  # A's keep their order
    assert all(item.again for item in again if item.tenant == "a")
    in_flight = s.inflight()
    assert len(in_flight) == budget  # the budget is spent again, nothing over it
    assert s.backlog("p") + len(in_flight) == len(flood) + newcomer  # nothing lost or doubled
    # asked twice for the same entries: those an agent holds are no longer asked for
    assert not (set(i for ids in s.revocable().values() for i in ids) & read)


def test_a_fan_outs_later_chunks_keep_their_runs_place_in_the_queue():
    """A coordinator makes a large fan-out a chunk at a time; the chunks made after another
    run arrived still queue ahead of it, first come, first served as within a tenant."""
    for fair in (False, True):
        s = Scheduler(lambda pool: 1, 0.0, fair=fair)

        def offer(run: str, key: str) -> None:
            s.offer(Ready(run, 0, "acme", key, 1, "p", {}))

        offer("big", "m[0]")
        offer("big", "m[1]")
        offer("small", "t")
        offer("big", "m[2]")  # the fan-out's next chunk, made after "small" arrived
        order = [(i.run_id, i.key) for i in _one_at_a_time(s, 4)]
        assert order == [("big", "m[0]"), ("big", "m[1]"), ("big", "m[2]"), ("small", "t")], (fair, order)
        # A run with nothing left waiting or in flight arrives anew: no place kept for it.
        offer("small", "u")
        offer("big", "m[3]")
        assert [(i.run_id, i.key) for i in _one_at_a_time(s, 2)] == [("small", "u"), ("big", "m[3]")]


def test_a_run_keeps_its_place_while_its_attempts_are_in_flight_or_taken_back():
    """The next chunk of a fan-out whose earlier attempts are in flight, or were dispatched and
    then taken back from the stream, still queues ahead of a run that arrived after them."""
    s = Scheduler(lambda pool: 1, 0.0, fair=False)

    def offer(run: str, key: str) -> None:
        s.offer(Ready(run, 0, "acme", key, 1, "p", {}))

    offer("big", "m[0]")
    (first,) = list(s.take(lambda _: True))  # in flight: the only slot is taken
    s.placed(first, b"1-1")
    offer("small", "t")
    offer("big", "m[1]")  # the next chunk, while m[0] runs
    s.done("big", "m[0]")
    assert [(i.run_id, i.key) for i in _one_at_a_time(s, 2)] == [("big", "m[1]"), ("small", "t")]

    fair = Scheduler(lambda pool: 1, 0.0)
    fair.offer(Ready("big", 0, "acme", "m[0]", 1, "p", {}))
    (first,) = list(fair.take(lambda _: True))
    fair.placed(first, b"1-1")
    fair.offer(Ready("small", 0, "acme", "t", 1, "p", {}))
    assert fair.revoked(0, "p", [b"1-1"], [b"1-1"]) == 1  # taken back unread: queues again
    fair.offer(Ready("big", 0, "acme", "m[1]", 1, "p", {}))
    assert [(i.run_id, i.key) for i in _one_at_a_time(fair, 3)] == [
        ("big", "m[0]"), ("big", "m[1]"), ("small", "t")]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "take", "stale", "revoke", "done", "forget"]),
                          st.sampled_from(["r1", "r2", "r3"]), st.sampled_from(["p", "q"])), max_size=60),
       st.booleans())
def test_waiting_counts_a_runs_attempts_queued_for_a_pool_and_nothing_in_flight(ops, fair):
    """`waiting(run, pool)` (what holds a fan-out's next chunk back) is the run's attempts
    queued for the pool: offered or taken back, and not yet dispatched, dropped or forgotten."""
    s = Scheduler(lambda pool: 2, 0.0, fair=fair)
    queued: Counter[tuple[str, str]] = Counter()
    flight: dict[tuple[str, str], tuple[str, bytes]] = {}  # (run, key) -> (pool, entry id)
    n = 0
    for op, run, pool in ops:
        n += 1
        if op == "offer":
            s.offer(Ready(run, 0, f"t-{run}", f"k{n}", 1, pool, {}))
            queued[(run, pool)] += 1
        elif op == "take":
            for item in s.take(lambda item: True):
                queued[(item.run_id, item.pool)] -= 1
                s.placed(item, f"{n}-{item.key}".encode())
                flight[(item.run_id, item.key)] = (item.pool, f"{n}-{item.key}".encode())
        elif op == "stale":  # no queued attempt is wanted: those of pools with a free slot drop
            assert list(s.take(lambda item: False)) == []
            full = {q for q in ("p", "q") if sum(v[0] == q for v in flight.values()) >= 2}
            for k in [k for k in queued if k[1] not in full]:
                queued[k] = 0
        elif op == "revoke":
            mine = [(k, v) for k, v in flight.items() if k[0] == run and v[0] == pool]
            if mine:
                ids = [v[1] for _, v in mine]
                back = s.revoked(0, pool, ids, ids)
                if fair:  # only a fair scheduler keeps entries to take back
                    assert back == len(mine)
                    queued[(run, pool)] += len(mine)
                    for k, _ in mine:
                        del flight[k]
        elif op == "done":
            for k in [k for k in flight if k[0] == run]:
                s.done(*k)
                del flight[k]
        else:
            s.forget_runs({run})
            for k in [k for k in queued if k[0] == run]:
                queued[k] = 0
            for k in [k for k in flight if k[0] == run]:
                del flight[k]
        for r in ("r1", "r2", "r3"):
            for p in ("p", "q"):
                assert s.waiting(r, p) == queued[(r, p)], (op, r, p)
