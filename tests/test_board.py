"""The coordinators' board: what each coordinator has in flight, shared so that coordinators
splitting the partitions fill a pool once, share it fairly, and hold quotas cluster-wide."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis as redis_sync
from hypothesis import given, settings, strategies as st

from flowforge import errors, keys
from flowforge.backends import redis_streams
from flowforge.engine import board, board_feed
from flowforge.engine.limits import Cost, Quota
from flowforge.engine.scheduling import Ready, Scheduler

_names = st.sampled_from(["a", "b", "acme", "x-1"])
_amounts = st.tuples(st.integers(1, 50), *[st.integers(0, 5000)] * 3)  # (a scope in use: 1 attempt at least)
_views = st.builds(
    board.View,
    st.dictionaries(_names, st.integers(1, 50), max_size=3),
    st.dictionaries(st.tuples(_names, _names), st.integers(1, 50), max_size=3),
    st.dictionaries(st.tuples(_names, st.none() | _names), _amounts, max_size=4),
    st.dictionaries(_names, st.integers(1, 50), max_size=2),
)


@given(_views)
def test_a_view_survives_its_items(view):
    assert board.from_items(board.items(view).items()) == view


@given(st.lists(_views, max_size=4))
def test_the_sum_of_views_adds_every_count(views):
    summed = board.total(views)
    for pool in {p for v in views for p in v.busy}:
        assert summed.busy[pool] == sum(v.busy.get(pool, 0) for v in views)
    for pool in {p for v in views for p in v.queued}:
        assert summed.queued[pool] == sum(v.queued.get(pool, 0) for v in views)
    for scope in {s for v in views for s in v.usage}:
        for d in range(4):
            assert summed.usage[scope][d] == sum(v.usage.get(scope, (0, 0, 0, 0))[d] for v in views)


def test_a_claim_checks_only_the_limits_a_cycle_adds_to():
    limits = {("a", None): (2, 1000, board.NO_LIMIT, board.NO_LIMIT), ("b", None): (3, -1, -1, -1)}
    found = board.claim([(("a", None), (1, 0, 10, 0)), (("a", "etl"), (1, 0, 10, 0)), (("c", None), (1, 5, 5, 5))],
                        limits)
    assert found.checks == {("a", None): (2, board.NO_LIMIT, board.NO_LIMIT, board.NO_LIMIT)}
    mine = board.View(usage={("a", None): (2, 0, 0, 0)})
    assert board.over(found, mine, board.View()) == (set(), set())
    assert board.over(found, mine, board.View(usage={("a", None): (1, 0, 0, 0)})) == ({("a", None)}, set())
    pools = board.claim([], {}, {"p": 4})
    assert board.over(pools, board.View({"p": 3}), board.View({"p": 1})) == (set(), set())
    assert board.over(pools, board.View({"p": 3}), board.View({"p": 2, "q": 9})) == (set(), {"p"})


# ---- the scripts, against Redis (a database of their own: the session's stack has a board) ------


def _run(redis_url: str, body) -> None:
    """`await body(connect)` on a fresh database, where `connect()` gives a RedisQueue."""
    url = re.sub(r"/\d+$", "", redis_url) + "/10"
    redis_sync.Redis.from_url(url).flushdb()

    async def main() -> None:
        queues: list[redis_streams.RedisQueue] = []

        def connect() -> redis_streams.RedisQueue:
            queues.append(redis_streams.RedisQueue.connect(url))
            return queues[-1]

        try:
            await body(connect)
        finally:
            for q in queues:
                await q.close()

    asyncio.run(main())


def test_an_exchange_reads_the_items_wanted_from_the_live_others(redis_url):
    one = board.View({"p": 3}, {("p", "a"): 3}, {("a", None): (3, 1000, 0, 0)}, {"p": 7})

    async def body(connect):
        q = connect()
        assert await q.exchange_board("c1", board.items(one), [], [], ttl_s=0.3, afresh=True) == (False, [], [])
        wanted = sorted(board.items(one)) + [board.busy_item("other")]
        existed, found, _ = await q.exchange_board("c2", {}, [], wanted, ttl_s=15, afresh=True)
        assert not existed and len(found) == 1
        assert board.from_items(zip(wanted, found[0])) == one
        assert await q.claim_board("c3", [board.busy_item("p"), "1", "5"], ttl_s=15) == (-1, [], [])
        await asyncio.sleep(0.4)  # c1 stops storing: its hash expires, and it leaves the set
        assert await q.exchange_board("c2", {}, [], wanted, ttl_s=15) == (True, [], [])
        assert await q.client.smembers(keys.BOARD_MEMBERS) == {b"c2"}
        await q.leave_board("c2")
        assert not await q.client.exists(keys.BOARD_MEMBERS, keys.board("c2"))

    _run(redis_url, body)


def test_a_restarted_coordinator_keeps_its_predecessors_counts_until_it_knows_its_own(redis_url):
    """A coordinator that restarts (same partitions) must not wipe what its predecessor's
    attempts, still running, count: until it has adopted its runs the counts stay; then what
    it no longer has goes."""
    before = board.View({"p": 2}, {("p", "a"): 2}, {("a", None): (2, 0, 0, 0)})

    async def body(connect):
        q = connect()
        first = board_feed.BoardFeed(Scheduler(lambda pool: 10, 0.0), q, [0])
        for n in range(2):
            first.scheduler.mark_inflight(f"r{n}", "t", "p", tenant="a", project="x")
        await first.exchange(force=True)
        other = board_feed.BoardFeed(Scheduler(lambda pool: 10, 0.0), q, [1], pools=["p"])
        other.scheduler.offer(_ready("a", "x", 99))  # (it reads what it has work for)
        await other.exchange(force=True)
        assert other.scheduler.elsewhere.busy == before.busy
        assert other.scheduler.elsewhere.holding == before.holding
        # The successor starts: nothing adopted yet, the predecessor's counts stay.
        second = board_feed.BoardFeed(Scheduler(lambda pool: 10, 0.0), q, [0])
        await second.exchange(force=True)
        await other.exchange(force=True)
        assert other.scheduler.elsewhere.busy == before.busy
        # It adopts one attempt still in flight (the other ended meanwhile): its next store says so.
        second.scheduler.mark_inflight("r0", "t", "p", tenant="a", project="x")
        await second.exchange(force=True)
        await other.exchange(force=True)
        assert other.scheduler.elsewhere.busy == {"p": 1}
        assert other.scheduler.elsewhere.holding == {("p", "a"): 1}

    _run(redis_url, body)


@settings(max_examples=60, deadline=None)
@given(st.lists(_views, max_size=3), _views,
       st.dictionaries(st.tuples(_names, st.none() | _names),
                       st.tuples(*[st.sampled_from([board.NO_LIMIT, 0, 1, 2, 3000, 6000])] * 4), max_size=3),
       st.dictionaries(_names, st.integers(0, 80), max_size=2))
def test_the_claim_script_decides_as_the_pure_rule_does(redis_url, others, mine, checks, budgets):
    async def body(connect):
        q = connect()
        for n, view in enumerate(others):
            await q.exchange_board(f"other-{n}", board.items(view), [], [], ttl_s=15, afresh=True)
        await q.exchange_board("me", {}, [], [], ttl_s=15, afresh=True)
        claim = board.Claim(checks, budgets)
        status, over, sums = await q.claim_board("me", claim.args(mine), ttl_s=15)
        found = board.outcome(claim, status > 0, over, sums)
        expected = board.over(claim, mine, board.total(others))
        assert (set(found.over), set(found.over_pools)) == expected
        assert found.stored == (expected == (set(), set()))
        summed = board.total(others)
        assert found.others.usage == {s: summed.usage[s] for s in checks if s in summed.usage}
        stored = {k.decode(): v.decode() for k, v in (await q.client.hgetall(keys.board("me"))).items()}
        assert all((stored.get(item) == value) == found.stored
                   for item, value in zip(claim.args(mine)[0::3], claim.args(mine)[1::3]))

    _run(redis_url, body)


# ---- schedulers sharing a board --------------------------------------------------------------


def _ready(tenant: str, project: str, n: int, cost: Cost = Cost()) -> Ready:
    return Ready(f"{tenant}-run-{n}", 0, tenant, f"t{n}", 1, "p", {}, 0, project, cost)


_costs = st.builds(Cost, st.sampled_from([0, 500, 1000]), st.just(0), st.sampled_from([0, 1000]))
_limits = st.builds(Quota, st.none() | st.integers(1, 3), st.none() | st.sampled_from([1000, 2000]),
                    st.none(), st.none() | st.integers(1, 2))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 3), st.integers(1, 6), st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["x", "y"]), _costs),
                                   min_size=1, max_size=24),
       st.dictionaries(st.sampled_from("ab"), _limits, min_size=1),
       st.dictionaries(st.tuples(st.sampled_from("ab"), st.sampled_from(["x", "y"])), _limits),
       st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["dispatch", "end", "exchange"]), st.randoms(
           use_true_random=False)), max_size=40))
def test_coordinators_sharing_a_board_never_pass_a_limit_together(
        redis_url, coordinators, slots, work, tenant_limits, project_limits, steps):
    """Each coordinator decides on the others' snapshots as of its last exchange, which may be
    stale: its claim is what keeps the sum of what all of them have in flight within every
    limit, and within the pool's slots. And once the others' attempts end, each gets all its
    work through."""
    async def body(connect):
        scheds = [Scheduler(lambda pool: slots, 0.0) for _ in range(coordinators)]
        feeds = [board_feed.BoardFeed(s, connect(), [i]) for i, s in enumerate(scheds)]
        for feed in feeds * 2:  # all of them on the board: each knows the others share the pool
            await feed.exchange(force=True)
        for s in scheds:
            s.set_limits(tenant_limits, project_limits)
        for n, (tenant, project, cost) in enumerate(work):
            scheds[n % coordinators].offer(_ready(tenant, project, n, cost))
        inflight: list[list[Ready]] = [[] for _ in scheds]

        async def dispatch(i: int) -> None:
            s = scheds[i]

            def take() -> list[Ready]:
                return list(s.take(lambda _: True))

            inflight[i] += await feeds[i].claim(take(), take)

        def check() -> None:
            everything = [item for each in inflight for item in each]
            assert len(everything) <= slots
            for scope, q in [((t, None), q) for t, q in tenant_limits.items()] + list(project_limits.items()):
                mine = [i for i in everything if i.tenant == scope[0] and scope[1] in (None, i.project)]
                assert q.max_running_tasks is None or len(mine) <= q.max_running_tasks, (scope, q, mine)
                assert q.max_cpu is None or sum(i.cost.cpu for i in mine) <= q.max_cpu, (scope, q, mine)
                assert q.max_gpu is None or sum(i.cost.gpu for i in mine) <= q.max_gpu * 1000, (scope, q, mine)

        for i, what, rnd in steps:
            i %= coordinators
            if what == "dispatch":
                await dispatch(i)
            elif what == "end" and inflight[i]:
                for item in rnd.sample(inflight[i], rnd.randint(1, len(inflight[i]))):
                    inflight[i].remove(item)
                    scheds[i].done(item.run_id, item.key)
            else:
                await feeds[i].exchange(force=True)
            check()
        # Then, rounds in which every attempt in flight ends, all exchange, and each takes in
        # turn (on a view the ones before it already made stale): every attempt fits its limits
        # alone, so each round dispatches one at least, and all of them go.
        for _ in range(len(work)):
            for i, s in enumerate(scheds):
                for item in inflight[i]:
                    s.done(item.run_id, item.key)
                inflight[i] = []
            for feed in feeds:
                await feed.exchange(force=True)
            for i in range(coordinators):
                await dispatch(i)
                check()
        assert sum(s.queued() for s in scheds) == 0

    _run(redis_url, body)


# ---- what the others hold, in one scheduler ---------------------------------------------------


def test_the_others_attempts_take_slots_and_count_in_each_tenants_share():
    s = Scheduler(lambda pool: 4, 0.0)
    for n in range(4):
        s.offer(_ready("a", "x", n))
        s.offer(_ready("b", "x", 10 + n))
    # Another coordinator holds 2 of the pool's 4 slots, both for tenant b.
    s.set_elsewhere(board.View({"p": 2}, {("p", "b"): 2}, {}))
    assert s.free("p") == 2
    assert [i.tenant for i in s.take(lambda _: True)] == ["a", "a"]  # b already holds its half
    s.set_elsewhere(board.View())
    assert [i.tenant for i in s.take(lambda _: True)] == ["b", "b"]


def test_the_others_attempts_count_against_quotas_and_the_reason_says_so():
    s = Scheduler(lambda pool: 10, 0.0)
    s.set_limits({"a": Quota(max_running_tasks=3)})
    for n in range(5):
        s.offer(_ready("a", "x", n))
    s.set_elsewhere(board.View({"p": 2}, {("p", "a"): 2}, {("a", None): (2, 0, 0, 0), ("a", "x"): (2, 0, 0, 0)}))
    assert len(list(s.take(lambda _: True))) == 1
    assert s.quota_waits() == {("p", "a", "x"): "quota: tenant a max_running_tasks 3 (3 in use)"}
    assert s.snapshot().usage == {("a", None): (1, 0, 0, 0), ("a", "x"): (1, 0, 0, 0)}


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 2)), min_size=1, max_size=20), st.booleans(),
       st.integers(1, 20))
def test_attempts_put_back_are_taken_again_in_their_tenants_order(work, fair, k):
    def build() -> Scheduler:
        s = Scheduler(lambda pool: 100, 0.0, fair=fair)
        for n, (tenant, prio) in enumerate(work):
            s.offer(Ready(f"{tenant}-run", 0, tenant, f"t{n}", 1, "p", {}, prio))
        return s

    plain = [i.key for i in build().take(lambda _: True)]
    s = build()
    taken = list(s.take(lambda _: True))
    s.untake(taken[-k:])  # the last k, as a refused claim puts back those of its scopes
    assert s.snapshot().busy.get("p", 0) == len(taken) - len(taken[-k:])
    assert s.queued() == len(taken[-k:])
    assert all(s.waiting(f"{t}-run", "p") == sum(1 for i in taken[-k:] if i.tenant == t) for t in "ab")
    again = [i.key for i in taken[:-k]] + [i.key for i in s.take(lambda _: True)]
    # The same attempts; each tenant's in the same order (priority, then arrival). Which tenant
    # goes first on a tie may differ: a tenant whose queue emptied came back as if new.
    assert sorted(again) == sorted(plain)
    for t in "ab":
        assert [k for k in again if work[int(k[1:])][0] == t] == [k for k in plain if work[int(k[1:])][0] == t]


def test_a_claim_the_board_does_not_answer_puts_everything_back():
    class Down:
        async def exchange_board(self, *args, **kwargs):
            raise errors.TemporaryError("redis: down")

        async def claim_board(self, *args, **kwargs):
            raise errors.TemporaryError("redis: down")

    s = Scheduler(lambda pool: 4, 0.0)
    s.set_limits({"a": Quota(max_running_tasks=3)})
    for n in range(5):
        s.offer(_ready("a", "x", n))
    feed = board_feed.BoardFeed(s, Down(), [0])  # type: ignore[arg-type]

    def take() -> list[Ready]:
        return list(s.take(lambda _: True))

    with pytest.raises(errors.TemporaryError):
        asyncio.run(feed.claim(take(), take))
    assert (s.queued(), s.inflight_count(), s.snapshot()) == (5, 0, board.View(queued={"p": 5}))
    assert [i.key for i in take()] == ["t0", "t1", "t2"]  # in their places, within the quota
