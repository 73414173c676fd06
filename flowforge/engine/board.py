"""What every coordinator has in flight, shared through Redis, so that coordinators splitting
the partitions still fill each pool's slots once, share them fairly across tenants, hold each
tenant to its quotas cluster-wide, and size pools for everyone's backlog.

Each coordinator keeps its own counts (the scheduler's) and, on the board, a hash of them:
one field per item (a pool's attempts in flight or waiting, a tenant's attempts in a pool, a
quota scope's usage). Every `EVERY_S` it stores what changed and reads, from the others, the
items it needs: those of the pools, tenants and scopes it has work for. The scheduler counts
what the others hold as taken ("elsewhere"). Slots and fair share can live with a view that is
a moment old: the prefetch absorbs it. Quotas cannot: a cycle that dispatches attempts of a
scope with a limit *claims* them first. The claim is one Redis script that adds this
coordinator's new counts to the others' and stores them only if every limit (and, while other
coordinators share the pools, every pool budget) the cycle added to still holds; otherwise the
cycle takes those attempts back and tries with the fresh counts. One script runs at a time, so
two coordinators never spend the same room. A stored count only ever overstates what is in
flight until the next exchange (attempts end in between): that holds work back for a moment,
never lets too much through. Both scripts touch only the items asked for: O(coordinators x
items), never a whole board.

This module is the pure part: snapshots, their items, their sums, and what a claim checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

EVERY_S = 0.1  # how often a coordinator stores its counts and reads the others'
IDLE_EVERY_S = 1.0  # the same while nobody has anything in flight or waiting
STALE_AFTER_S = 15.0  # a coordinator's hash expires this long after it last stored it

_SEP = "\t"  # joins the parts of an item: tenants, projects and pools are names without tabs

Scope = tuple[str, str | None]  # (tenant, None) for a whole tenant, (tenant, project) for one project
Amounts = tuple[int, int, int, int]  # attempts, millicores, bytes, thousandths of a GPU
NO_LIMIT = -1


@dataclass(frozen=True)
class View:
    """Attempts in flight and waiting, as one coordinator holds them (or several, summed)."""

    busy: Mapping[str, int] = field(default_factory=dict)  # pool -> attempts in flight
    holding: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (pool, tenant) -> attempts in flight
    usage: Mapping[Scope, Amounts] = field(default_factory=dict)
    queued: Mapping[str, int] = field(default_factory=dict)  # pool -> attempts waiting for a slot

    def __bool__(self) -> bool:
        return bool(self.busy or self.holding or self.usage or self.queued)


EMPTY = View()


# ---- items: a view as hash fields ---------------------------------------------------------------


def busy_item(pool: str) -> str:
    return f"b{_SEP}{pool}"


def queued_item(pool: str) -> str:
    return f"q{_SEP}{pool}"


def holding_item(pool: str, tenant: str) -> str:
    return f"h{_SEP}{pool}{_SEP}{tenant}"


def usage_item(scope: Scope) -> str:
    tenant, project = scope
    return f"u{_SEP}{tenant}{_SEP}{project or ''}"


def _amounts(value: Sequence[int]) -> str:
    return " ".join(str(x) for x in value)


def items(view: View) -> dict[str, str]:
    """The view as hash fields: item -> value (a count, or four amounts for a scope)."""
    out = {busy_item(p): str(n) for p, n in view.busy.items()}
    out.update((queued_item(p), str(n)) for p, n in view.queued.items())
    out.update((holding_item(p, t), str(n)) for (p, t), n in view.holding.items())
    out.update((usage_item(s), _amounts(a)) for s, a in view.usage.items())
    return out


def from_items(pairs: Iterable[tuple[str, str | bytes | None]]) -> View:
    """The view that hash fields describe (a missing or zero value counts nothing); several
    coordinators' fields add up."""
    busy: dict[str, int] = {}
    queued: dict[str, int] = {}
    holding: dict[tuple[str, str], int] = {}
    usage: dict[Scope, list[int]] = {}
    for item, value in pairs:
        if value is None:
            continue
        text = value.decode() if isinstance(value, bytes) else value
        if not text.strip("0 "):
            continue  # (nothing: a sum over no coordinator, or a scope with nothing in flight)
        kind, _, rest = item.partition(_SEP)
        if kind == "b":
            busy[rest] = busy.get(rest, 0) + int(text)
        elif kind == "q":
            queued[rest] = queued.get(rest, 0) + int(text)
        elif kind == "h":
            pool, _, tenant = rest.partition(_SEP)
            holding[(pool, tenant)] = holding.get((pool, tenant), 0) + int(text)
        elif kind == "u":
            tenant, _, project = rest.partition(_SEP)
            have = usage.setdefault((tenant, project or None), [0, 0, 0, 0])
            for i, x in enumerate(text.split()):
                have[i] += int(float(x))
    return View(busy, holding, {s: (a[0], a[1], a[2], a[3]) for s, a in usage.items()}, queued)


def total(views: Iterable[View]) -> View:
    return from_items(pair for view in views for pair in items(view).items())


def merge(old: View, fresh: View, asked: Iterable[str]) -> View:
    """`old` with the items `asked` replaced by `fresh`'s (a claim reads only the items it checks)."""
    replaced = set(asked)
    kept = [(k, v) for k, v in items(old).items() if k not in replaced]
    return from_items(kept + list(items(fresh).items()))


# ---- claims -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What one cycle's claim asks the board: per scope that has a limit and to which the cycle
    added attempts, the limits that apply to what it added (NO_LIMIT for the rest); and per
    pool it dispatched to, the pool's budget (slots plus prefetch), when other coordinators
    dispatch to it too."""

    checks: Mapping[Scope, Amounts] = field(default_factory=dict)
    pools: Mapping[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.checks or self.pools)

    def args(self, mine: View) -> list[str]:
        """(item, this coordinator's new value, limits) per check, for the claim script."""
        out: list[str] = []
        for scope, lims in self.checks.items():
            out += [usage_item(scope), _amounts(mine.usage.get(scope, (0, 0, 0, 0))), _amounts(lims)]
        for pool, budget in self.pools.items():
            out += [busy_item(pool), str(mine.busy.get(pool, 0)), str(budget)]
        return out

    def asked(self) -> list[str]:
        return [usage_item(s) for s in self.checks] + [busy_item(p) for p in self.pools]


def claim(added: Sequence[tuple[Scope, Amounts]], limits: Mapping[Scope, Amounts],
          pools: Mapping[str, int] | None = None) -> Claim:
    """The checks for a cycle that added `added` (scope, amounts) to what is in flight, with
    `limits` (scope -> limits, NO_LIMIT where there is none): a limit is checked where the cycle
    added to what it limits. (A limit lowered below what already runs does not stop attempts
    that add nothing to it, as on one coordinator.) `pools`: the budgets of the pools to check."""
    grown: dict[Scope, list[bool]] = {}
    for scope, amounts in added:
        if scope in limits:
            flags = grown.setdefault(scope, [False] * 4)
            for i, x in enumerate(amounts):
                flags[i] = flags[i] or x > 0
    checks = {}
    for scope, flags in grown.items():
        lims = tuple(lim if flag else NO_LIMIT for lim, flag in zip(limits[scope], flags))
        if any(lim != NO_LIMIT for lim in lims):
            checks[scope] = lims
    return Claim(checks, dict(pools or {}))  # type: ignore[arg-type]


def over(claim_: Claim, mine: View, others: View) -> tuple[set[Scope], set[str]]:
    """The scopes whose limits, and the pools whose budgets, the claim would pass (what the
    claim script decides; kept here so it can be tested against the script)."""
    scopes = set()
    for scope, lims in claim_.checks.items():
        own = mine.usage.get(scope, (0, 0, 0, 0))
        rest = others.usage.get(scope, (0, 0, 0, 0))
        if any(lim != NO_LIMIT and own[i] + rest[i] > lim for i, lim in enumerate(lims)):
            scopes.add(scope)
    pools = {pool for pool, budget in claim_.pools.items()
             if mine.busy.get(pool, 0) + others.busy.get(pool, 0) > budget}
    return scopes, pools


@dataclass(frozen=True)
class Outcome:
    """What a claim came to: whether it was stored, the scopes and pools that would have
    passed a limit if not, and the others' counts of the items it checked, summed."""

    stored: bool
    over: frozenset[Scope]
    over_pools: frozenset[str]
    others: View


def outcome(claim_: Claim, stored: bool, over_items: Iterable[str | bytes],
            sums: Sequence[str | bytes]) -> Outcome:
    scopes: set[Scope] = set()
    pools: set[str] = set()
    for raw in over_items:
        kind, _, rest = (raw.decode() if isinstance(raw, bytes) else raw).partition(_SEP)
        if kind == "b":
            pools.add(rest)
        else:
            tenant, _, project = rest.partition(_SEP)
            scopes.add((tenant, project or None))
    others = from_items(zip(claim_.asked(), sums))
    return Outcome(stored, frozenset(scopes), frozenset(pools), others)
