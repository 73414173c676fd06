"""Run the peer benchmark: FlowForge vs Celery vs raw Ray, in one run.

Usage::

    python -m bench.run [--systems flowforge,celery,ray]
                        [--scenarios chain100,fanout10k]
                        [--out bench/results.json]

Each system lives in ``bench.systems.<name>_sys`` and exposes ``setup()``,
``teardown()``, ``chain100()`` and ``fanout10k()``.  Systems run one at a time
(setup, scenarios, teardown) so they never compete for the 2 cores.

Scenarios (identical semantics everywhere):

* ``chain100``: 100 sequential no-op tasks; each appends ``time.time()`` at
  its start to the list it received and returns it.  Per-hop latency is the
  difference of consecutive timestamps (99 hops/chain), pooled over 3 chains
  after 1 warm-up chain.  Metrics ``per_hop_ms_p50``/``per_hop_ms_p95``
  (lower is better).
* ``fanout10k``: 10,000 independent no-op tasks; ``tasks_per_s`` = 10,000 /
  wall seconds from first submission to last completion, after a 500-task
  warm-up (higher is better).
* ``submit`` (FlowForge only: it is the REST API's figure): runs of a 10-task
  DAG (one root, eight parallel tasks, one join) submitted with
  ``POST /api/v1/runs`` to a separate ``flowforge api`` process.
  ``submit_ms_p50``/``submit_ms_p95``: latency of one submission, 200 in a row
  from one client; ``runs_per_s``: 300 runs submitted by 8 concurrent clients,
  divided by the seconds from the first submission until the last run succeeded.
* ``warm_vs_cold`` (FlowForge only): one no-op task per run, one run at a time;
  the median time from dispatch until the function starts, on a warm agent
  (``light_ms_p50``) and in a fresh local process (``heavy_ms_p50``, the
  embedded Pod runtime); ``ratio`` = heavy / light (target >= 100).
* ``scale_up`` (FlowForge only): seconds from annotating the node group (through
  the REST API, as ``flowforge pools annotate local default=N`` does) until two
  more agents are ready; ``seconds_p50`` over 3 trials.
* ``first_call`` (FlowForge only): dispatch -> start of the first call on a
  fresh agent whose pool prewarms the task's slow-to-import module
  (``first_ms``), of later calls (``steady_ms``), and of the first call on a
  pool without prewarm (``first_ms_without_prewarm``); medians of 3 trials.
* ``fairness`` (FlowForge only): tenant A submits 5,000 no-op tasks, then tenant
  B submits 50; ``b_slowdown`` = B's completion time under A's flood / B's time
  alone (target <= 1.5); ``b_slowdown_submit`` the same with B submitted right
  after A, while A's fan-out is still being made; ``b_slowdown_priority`` with B weighted 1000
  times A (the floor any order of dispatch can reach); ``b_slowdown_cpu`` with
  no flood but two processes each keeping 80% of a core busy (what sharing the
  machine alone costs B); ``b_slowdown_fifo`` with fair share off.
* ``log_ingest`` (FlowForge only): 200,000 captured output lines (50 runs, ~90
  bytes each) written to a log store in batches of 2,000, one batch after
  another, as the log writer sends them; ``postgres_lines_per_s`` and
  ``chdb_lines_per_s`` (chDB: the ClickHouse store in-process), medians of 3.
* ``board`` (FlowForge only): what the coordinators' board costs a coordinator,
  with 500 tenants in flight on each of 4 coordinators: ``exchange_ms_p50`` (store
  what changed, read what 10 waiting tenants need; every 100 ms) and
  ``claim_ms_p50`` (two quota scopes and a pool; per cycle that dispatches under a
  quota), against ``rtt_ms_p50``, a bare Redis round trip in the same run;
  ``claim_rtts`` = claim / round trip.  Medians of 500.

Results file: ``{"<scenario>": {"<system>": {"<metric>": <number>}}}``.  Every
scenario run now is *replaced* by this run's figures (so one scenario never
mixes figures from different runs); scenarios not run now (e.g. ``submit``
written by other commands) are kept untouched.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

# Keep every Ray instance started from this process on loopback and quiet
# (must happen before anything imports ray).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REF = "flowforge"
DEFAULT_SYSTEMS = ("flowforge", "celery", "ray")
DEFAULT_SCENARIOS = ("chain100", "fanout10k", "submit", "warm_vs_cold", "scale_up", "first_call", "fairness",
                     "log_ingest", "board")
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"

# (scenario, metric, op, threshold) checked for FlowForge.
TARGETS = (
    ("chain100", "per_hop_ms_p50", "<=", 5.0),
    ("fanout10k", "tasks_per_s", ">=", 1000.0),
    ("warm_vs_cold", "ratio", ">=", 100.0),
    ("fairness", "b_slowdown", "<=", 1.5),
)
# Metrics on which FlowForge must beat Celery.
BEAT_CELERY = (("chain100", "per_hop_ms_p50"), ("fanout10k", "tasks_per_s"))


def lower_is_better(metric: str) -> bool:
    """Latency-like metrics (``*_ms*``, ``*_s_p*``, ``latency``, ``slowdown``, ``*_rtts``: a
    time in round trips) are lower-better; rates (``*per_s``, ``*_per_*``) higher-better."""
    m = metric.lower()
    if "per_s" in m or "_per_" in m or "throughput" in m:
        return False
    return ("_ms" in m or "latency" in m or m.endswith("_s") or "seconds" in m or "slowdown" in m
            or m.endswith("_rtts"))


def ratio(metric: str, ff: float, peer: float) -> float | None:
    """>1 means FlowForge is better: peer/ff for latency, ff/peer for rates."""
    num, den = (peer, ff) if lower_is_better(metric) else (ff, peer)
    if den == 0:
        return None
    return num / den


# --------------------------------------------------------------------------- run


def _clean_metrics(raw) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw:
        raise TypeError(f"scenario must return a non-empty dict, got {raw!r}")
    out = {}
    for k, v in raw.items():
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"metric {k}={v!r} is not finite")
        out[str(k)] = f
    return out


def run_system(name: str, scenarios, results, status) -> None:
    modname = f"bench.systems.{name}_sys"
    try:
        mod = importlib.import_module(modname)
    except Exception as exc:
        status[name] = f"missing ({type(exc).__name__}: {exc})"
        print(f"\n!! [{name}] cannot import {modname}: {type(exc).__name__}: {exc}")
        print(f"!! [{name}] marked MISSING; continuing with the other systems", flush=True)
        return

    print(f"\n== [{name}] setup", flush=True)
    t0 = time.perf_counter()
    try:
        mod.setup()
    except BaseException as exc:
        status[name] = f"setup failed ({type(exc).__name__}: {exc})"
        print(f"!! [{name}] setup failed: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        _safe_teardown(name, mod)
        if not isinstance(exc, Exception):
            raise
        return
    print(f"   [{name}] ready in {time.perf_counter() - t0:.1f}s", flush=True)

    errors = []
    try:
        for sc in scenarios:
            fn = getattr(mod, sc, None)
            if fn is None:  # a scenario only some systems have (e.g. submit: FlowForge's REST API)
                print(f"   [{name}] has no {sc} scenario; skipped", flush=True)
                continue
            t1 = time.perf_counter()
            try:
                metrics = _clean_metrics(fn())
            except Exception as exc:
                errors.append(f"{sc}: {type(exc).__name__}: {exc}")
                print(f"!! [{name}] {sc} failed: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
                continue
            results.setdefault(sc, {})[name] = metrics
            figs = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
            print(f"   [{name}] {sc}: {figs}  ({time.perf_counter() - t1:.1f}s)", flush=True)
    finally:
        _safe_teardown(name, mod)
    status[name] = "ok" if not errors else "errors: " + "; ".join(errors)


def _safe_teardown(name, mod) -> None:
    try:
        mod.teardown()
        print(f"   [{name}] torn down", flush=True)
    except Exception:
        print(f"!! [{name}] teardown failed:", file=sys.stderr)
        traceback.print_exc()


def write_results(out: Path, results: dict) -> dict:
    merged: dict = {}
    if out.exists():
        try:
            merged = json.loads(out.read_text())
            if not isinstance(merged, dict):
                raise ValueError("top level is not an object")
        except Exception as exc:
            backup = out.with_name(out.name + ".bak")
            print(f"!! {out} unreadable ({exc}); moved to {backup}", file=sys.stderr)
            out.replace(backup)
            merged = {}
    for sc, per_system in results.items():
        if per_system:
            merged[sc] = dict(per_system)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    return merged


# ------------------------------------------------------------------------ report


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def build_tables(results: dict, systems, status):
    """Yield (title, header, rows, caption) per scenario."""
    for sc, per_system in results.items():
        metrics: list[str] = []
        for m in per_system.values():
            metrics += [k for k in m if k not in metrics]
        ff = per_system.get(REF)
        header = ["system", *metrics, *(f"FF ratio {m}" for m in metrics)]
        rows = []
        for sysname in systems:
            m = per_system.get(sysname)
            if m is None and status.get(sysname) == "ok":
                continue  # ran fine, but has no such scenario (submit is FlowForge's own)
            if m is None:
                st = status.get(sysname, "no result")
                word = st.split(" ")[0].rstrip(":") if st != "ok" else "no result"
                rows.append([sysname, *([word] * len(metrics)), *(["n/a"] * len(metrics))])
                continue
            vals = [_fmt(m[k]) if k in m else "-" for k in metrics]
            rats = []
            for k in metrics:
                if sysname == REF:
                    rats.append("1.00 (ref)")
                elif ff is None or k not in ff or k not in m:
                    rats.append("n/a")
                else:
                    r = ratio(k, ff[k], m[k])
                    rats.append("n/a" if r is None else f"{r:.2f}x")
            rows.append([sysname, *vals, *rats])
        dirs = "; ".join(
            f"{k}: {'lower' if lower_is_better(k) else 'higher'} is better, ratio = "
            + ("peer/flowforge (x times faster)" if lower_is_better(k)
               else "flowforge/peer (x times the throughput)")
            for k in metrics
        )
        caption = dirs + ". Ratio > 1 means FlowForge wins."
        yield sc, header, rows, caption


def print_tables(results, systems, status) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    for sc, header, rows, caption in build_tables(results, systems, status):
        if len(header) == 1:
            print(f"\n{sc}: no results")
            continue
        if Console is not None:
            t = Table(title=sc, title_justify="left")
            for i, h in enumerate(header):
                t.add_column(h, justify="left" if i == 0 else "right")
            for r in rows:
                t.add_row(*r)
            console = Console(width=max(120, 26 * len(header)))
            console.print(t)
            console.print(caption, soft_wrap=True, highlight=False)
        else:
            print(f"\n{sc}")
            widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
            for r in [header, *rows]:
                print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
            print(caption)


def target_lines(results: dict) -> list[str]:
    lines = []
    for sc, metric, op, thr in TARGETS:
        v = results.get(sc, {}).get(REF, {}).get(metric)
        if v is None:
            verdict, shown = "MISSING", "n/a"
        else:
            ok = v <= thr if op == "<=" else v >= thr
            verdict, shown = ("PASS" if ok else "FAIL"), _fmt(v)
        lines.append(f"TARGET {sc} {metric} {op} {thr:g} (flowforge): {shown} -> {verdict}")
    parts, verdicts = [], []
    for sc, metric in BEAT_CELERY:
        ff = results.get(sc, {}).get(REF, {}).get(metric)
        ce = results.get(sc, {}).get("celery", {}).get(metric)
        if ff is None or ce is None:
            verdicts.append(None)
            parts.append(f"{sc} {metric}: n/a")
            continue
        better = ff < ce if lower_is_better(metric) else ff > ce
        verdicts.append(better)
        parts.append(f"{sc} {metric}: ff {_fmt(ff)} vs celery {_fmt(ce)} "
                     f"({'win' if better else 'loss'})")
    if None in verdicts:
        verdict = "UNKNOWN"
    else:
        verdict = "PASS" if all(verdicts) else "FAIL"
    lines.append(f"TARGET flowforge beats celery on both: {verdict} [" + "; ".join(parts) + "]")
    return lines


# -------------------------------------------------------------------------- main


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--systems", type=_csv, default=list(DEFAULT_SYSTEMS),
                   help="comma separated, default: %(default)s")
    p.add_argument("--scenarios", type=_csv, default=list(DEFAULT_SCENARIOS),
                   help="comma separated, default: %(default)s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = p.parse_args(argv)

    # Turn SIGTERM into SystemExit so teardown()/atexit still stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results: dict[str, dict[str, dict[str, float]]] = {sc: {} for sc in args.scenarios}
    status: dict[str, str] = {}
    t0 = time.perf_counter()
    for name in args.systems:
        run_system(name, args.scenarios, results, status)
    shown = list(args.systems)
    if REF not in shown:  # the reference is always shown, even when not run
        shown.insert(0, REF)
        status[REF] = "missing (not in --systems)"

    merged = write_results(args.out, results)
    print(f"\nwrote {args.out} (scenarios in file: {', '.join(sorted(merged))})")
    print_tables(results, shown, status)
    print()
    for line in target_lines(results):
        print(line)
    print("\nstatus: " + "; ".join(f"{k}={v}" for k, v in status.items()))
    print(f"total {time.perf_counter() - t0:.1f}s")

    if not any(results.values()):
        return 1
    failed = [k for k, v in status.items() if not v.startswith(("ok", "missing"))]
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
