"""Every FlowForge metric, on one Prometheus registry per process, served at `/metrics`.

Two kinds. Events are counted where they happen, at the cost of a histogram observation:
dispatch and start latency and task durations in the coordinator (through the `ports.Metrics`
port), Pod startup in the launcher, requests in the API. State is read when Prometheus scrapes
(stream depths, agents, active runs, reclaim counters): `refresh` asks a reader the composition
root wires (flowforge.backends.gauges), with a timeout, and the collector reports that reading.
A coordinator reports the state of the partitions it owns, so summing over replicas is right.

Labels are bounded: tenant, pool, executor, status, HTTP method, route template. Never a run
id, a task key or a raw path. Heavy attempts are dispatched to the pool `~pods`.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from flowforge.domain.model import HEAVY_POOL

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no `_created` twin of every series: half the series, nothing lost
# Hand-offs are milliseconds when warm, seconds when a pool is saturated or a tenant over quota.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TASK_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
POD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
SCRAPE_TIMEOUT_S = 2.0
AGENT_STATES = ("desired", "ready", "busy", "starting", "draining")


def executor_of(pool: str) -> str:
    return "heavy" if pool == HEAVY_POOL else "light"


@dataclass
class Reading:
    """What the backends hold, read at scrape time. Each source that could not be read within
    the timeout is left out, and `up` says which."""

    # pool -> (entries in its streams, entries delivered and not acknowledged, dead letters)
    streams: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    agents: dict[str, dict[str, int]] = field(default_factory=dict)  # pool -> state -> agents
    runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, status) -> active runs
    reclaimed: dict[str, int] = field(default_factory=dict)  # pool -> entries taken over, ever
    dead_lettered: dict[str, int] = field(default_factory=dict)  # pool -> entries dead-lettered, ever
    up: dict[str, bool] = field(default_factory=dict)  # source ("redis", "postgres") -> read


Reader = Callable[[float], Awaitable[Reading]]  # reads every source, each within the timeout


class _State:
    """The scrape-time collector: reports the last reading."""

    def __init__(self) -> None:
        self.reading: Reading | None = None

    def describe(self) -> list[Metric]:
        return []  # the families depend on the reading; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        r = self.reading
        if r is None:
            return
        length = GaugeMetricFamily("flowforge_stream_length", "Entries in the pool's dispatch streams.",
                                   labels=["pool", "executor"])
        pending = GaugeMetricFamily("flowforge_stream_pending", "Dispatch entries delivered to an agent and not "
                                    "acknowledged yet, per pool.", labels=["pool", "executor"])
        dead = GaugeMetricFamily("flowforge_dead_letter_length", "Entries in the pool's dead-letter streams.",
                                 labels=["pool", "executor"])
        for pool, (n, p, d) in sorted(r.streams.items()):
            labels = [pool, executor_of(pool)]
            length.add_metric(labels, n)
            pending.add_metric(labels, p)
            dead.add_metric(labels, d)
        agents = GaugeMetricFamily("flowforge_agents", "Agents per pool: desired, ready, busy (running an attempt), "
                                   "starting and draining.", labels=["pool", "state"])
        for pool, states in sorted(r.agents.items()):
            for state in AGENT_STATES:
                agents.add_metric([pool, state], states.get(state, 0))
        runs = GaugeMetricFamily("flowforge_runs", "Runs not finished yet, by tenant and status (finished runs: "
                                 "flowforge_runs_finished_total).", labels=["tenant", "status"])
        for (tenant, status), n in sorted(r.runs.items()):
            runs.add_metric([tenant, status], n)
        reclaimed = CounterMetricFamily("flowforge_reclaimed", "Dispatch entries taken over from an agent that went "
                                        "silent (kept in Redis: a flush resets it).", labels=["pool", "executor"])
        for pool, n in sorted(r.reclaimed.items()):
            reclaimed.add_metric([pool, executor_of(pool)], n)
        dead_lettered = CounterMetricFamily("flowforge_dead_lettered", "Dispatch entries moved to the dead-letter "
                                            "stream after max_deliveries.", labels=["pool", "executor"])
        for pool, n in sorted(r.dead_lettered.items()):
            dead_lettered.add_metric([pool, executor_of(pool)], n)
        up = GaugeMetricFamily("flowforge_scrape_source_up", "1 if the source was read at this scrape.",
                               labels=["source"])
        for source, ok in sorted(r.up.items()):
            up.add_metric([source], 1 if ok else 0)
        yield from (length, pending, dead, agents, runs, reclaimed, dead_lettered, up)


class Histograms:
    """One histogram family, collected by the registry. An observation is a bisect and two
    additions (prometheus_client's Histogram takes locks: several times the cost): FlowForge
    observes only from its event loop's thread, which also renders the exposition."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.bounds = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], Series] = {}

    def child(self, *values: str) -> Series:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = Series(self.bounds)
        return found

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, series in sorted(self.series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*self.bounds, float("inf")), series.counts, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(values), buckets, series.total)
        yield family


class Series:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        if value < 0.0:
            value = 0.0  # clocks of different hosts may disagree by a little
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: a value on a bound counts in it
        self.total += value


class Metrics:
    """The registry and every metric of this process; implements `ports.Metrics` for the engine.

    Hot-path methods keep each series in a dict: after the first observation of a series, one
    dict lookup and one observation."""

    def __init__(self, reader: Reader | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reader = reader
        self.ready_to_dispatched = Histograms(
            "flowforge_attempt_ready_to_dispatched_seconds",
            "From an attempt being ready (queued) to its dispatch to its pool: time spent waiting for a "
            "free slot, a quota or the tenant's fair share.", ["tenant", "pool", "executor"], WAIT_BUCKETS)
        self.dispatched_to_started = Histograms(
            "flowforge_attempt_dispatched_to_started_seconds",
            "From an attempt's dispatch to its function (or Pod) starting.", ["pool", "executor"], WAIT_BUCKETS)
        self.task_duration = Histograms(
            "flowforge_task_duration_seconds", "How long attempts ran, by how they ended.",
            ["pool", "executor", "status"], TASK_BUCKETS)
        self.pod_startup = Histograms(
            "flowforge_pod_startup_seconds", "From creating a heavy attempt's Pod (or local process) to its "
            "container running.", [], POD_BUCKETS)
        self.http_duration = Histograms(
            "flowforge_http_request_duration_seconds", "API requests (_count) and their latency, by method, route "
            "template and status code (a followed log stream: until it ends).", ["method", "route", "status"],
            HTTP_BUCKETS)
        self.runs_finished = Counter(
            "flowforge_runs_finished", "Runs that ended, by tenant and status.", ["tenant", "status"],
            registry=self.registry)
        self.board_claims = Counter(
            "flowforge_board_claims", "Claims this coordinator put to the coordinators' board before dispatching "
            "under a quota or into a shared pool, by outcome: stored, or refused (another coordinator had spent "
            "the room; the attempts waited).", ["outcome"], registry=self.registry)
        for outcome in ("stored", "refused"):
            self.board_claims.labels(outcome)
        self.coordinators = Gauge(
            "flowforge_coordinators", "Coordinators on the board at this one's last exchange (itself included).",
            registry=self.registry)
        for family in (self.ready_to_dispatched, self.dispatched_to_started, self.task_duration, self.pod_startup,
                       self.http_duration):
            self.registry.register(family)  # type: ignore[arg-type]
        self._state = _State()
        self.registry.register(self._state)  # type: ignore[arg-type]
        self._ready: dict[tuple[str, str], Series] = {}
        self._started: dict[str, Series] = {}
        self._ran: dict[tuple[str, str], Series] = {}
        self._http: dict[tuple[str, str, int], Series] = {}

    # ---- ports.Metrics: the coordinator, once per attempt ---------------------------------

    def dispatched(self, tenant: str, pool: str, waited_s: float) -> None:
        series = self._ready.get((tenant, pool))
        if series is None:
            series = self._ready[(tenant, pool)] = self.ready_to_dispatched.child(tenant, pool, executor_of(pool))
        series.observe(waited_s)

    def started(self, pool: str, waited_s: float) -> None:
        series = self._started.get(pool)
        if series is None:
            series = self._started[pool] = self.dispatched_to_started.child(pool, executor_of(pool))
        series.observe(waited_s)

    def finished(self, pool: str, status: str, seconds: float) -> None:
        series = self._ran.get((pool, status))
        if series is None:
            series = self._ran[(pool, status)] = self.task_duration.child(pool, executor_of(pool), status)
        series.observe(seconds)

    def run_ended(self, tenant: str, status: str) -> None:
        self.runs_finished.labels(tenant, status).inc()

    def board_claim(self, stored: bool) -> None:
        self.board_claims.labels("stored" if stored else "refused").inc()

    def board_seen(self, coordinators: int) -> None:
        self.coordinators.set(coordinators)

    # ---- the launcher and the API ---------------------------------------------------------

    def pod_started(self, seconds: float) -> None:
        self.pod_startup.child().observe(seconds)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._http.get((method, route, status))
        if series is None:
            series = self._http[(method, route, status)] = self.http_duration.child(method, route, str(status))
        series.observe(seconds)

    # ---- exposition -----------------------------------------------------------------------

    async def refresh(self, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        """Read the backends' state for the next exposition (when a reader is wired)."""
        if self.reader is None:
            return
        try:
            self._state.reading = await asyncio.wait_for(self.reader(timeout_s), timeout_s + 0.5)
        except TimeoutError:
            self._state.reading = Reading(up={"redis": False, "postgres": False})

    async def render(self) -> bytes:
        """The Prometheus text exposition of every metric, state read now."""
        await self.refresh()
        return generate_latest(self.registry)
