"""Raw Ray actors benchmark driver (a pool of 2 actors, no orchestration layer).

Run on its own with ``python -m bench.systems.ray_sys``.

Ray is started locally with ``ray.init(include_dashboard=False, num_cpus=2)``;
a local ``ray.init()`` picks random free ports for GCS/raylet (it never binds
6379 unless ``RAY_GCS_SERVER_PORT`` says so, which we refuse).  Usage stats
are disabled and the node IP is forced to loopback so nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import os
import sys
import time

# Must be set before ``ray`` is imported (read into module constants):
# ENABLE_RAY_CLUSTER=False => node IP = 127.0.0.1 instead of probing the route.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402

from bench.stats import chain_scenario  # noqa: E402

NUM_ACTORS = 2


@ray.remote(num_cpus=0)
class Worker:
    def noop_chain(self, ts: list[float]) -> list[float]:
        now = time.time()
        out = list(ts)
        out.append(now)
        return out

    def noop(self) -> None:
        return None

    def ready(self) -> bool:
        return True


_actors: list = []
_we_started_ray = False


def setup() -> None:
    """Start (or join an already running in-process) Ray and create the actors."""
    global _actors, _we_started_ray
    if _actors:
        return
    if os.environ.get("RAY_GCS_SERVER_PORT") == "6379":
        raise RuntimeError("RAY_GCS_SERVER_PORT=6379 would collide with Redis")
    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            num_cpus=2,
            log_to_driver=False,
            logging_level="warning",
            configure_logging=True,
            object_store_memory=256 * 1024 * 1024,
        )
        _we_started_ray = True
    # num_cpus=0 on the actors: both fit regardless of how many CPUs another
    # user of this Ray instance has claimed; they are pinned to 2 processes.
    _actors = [Worker.remote() for _ in range(NUM_ACTORS)]
    ray.get([a.ready.remote() for a in _actors], timeout=120)


def teardown() -> None:
    """Kill the actors; shut Ray down only if setup() started it."""
    global _actors, _we_started_ray
    actors, _actors = _actors, []
    for a in actors:
        try:
            ray.kill(a)
        except Exception:
            pass
    if _we_started_ray and ray.is_initialized():
        ray.shutdown()
    _we_started_ray = False


def _run_chain(n: int) -> list[float]:
    ref = _actors[0].noop_chain.remote([])
    for i in range(1, n):
        ref = _actors[i % NUM_ACTORS].noop_chain.remote(ref)
    ts = ray.get(ref, timeout=120)
    return ts


def chain100(n: int = 100, reps: int = 3) -> dict[str, float]:
    """``n`` sequential actor calls (ObjectRef passed on); hops pooled over reps."""
    return chain_scenario(_run_chain, n, reps)


def _run_fanout(n: int) -> float:
    t0 = time.perf_counter()
    refs = [_actors[i % NUM_ACTORS].noop.remote() for i in range(n)]
    ray.get(refs, timeout=600)
    return time.perf_counter() - t0


def fanout10k(n: int = 10_000) -> dict[str, float]:
    """``n`` independent actor calls round-robined; first submit to last result."""
    _run_fanout(500)  # warm-up, not counted
    return {"tasks_per_s": n / _run_fanout(n)}


def main() -> None:
    import json

    setup()
    try:
        out = {"chain100": chain100(), "fanout10k": fanout10k()}
    finally:
        teardown()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
