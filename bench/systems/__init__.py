"""Per-system benchmark drivers.

Every module ``bench.systems.<name>_sys`` exposes the same interface::

    setup() -> None                       # start workers / connect
    teardown() -> None                    # stop everything setup() started
    chain100(n=100, reps=3) -> dict       # {"per_hop_ms_p50": ..., "per_hop_ms_p95": ...}
    fanout10k(n=10_000) -> dict           # {"tasks_per_s": ...}

Task semantics are identical across systems (see ``bench/run.py``).
"""
