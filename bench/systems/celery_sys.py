"""Celery (Redis broker + Redis result backend) benchmark driver.

Run on its own with ``python -m bench.systems.celery_sys``.
See ``bench/systems/celery_app.py`` for the Celery settings used.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from bench.stats import chain_scenario

REPO_ROOT = Path(__file__).resolve().parents[2]
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_worker: subprocess.Popen | None = None
_log_path: str | None = None


def _app():
    from bench.systems import celery_app

    return celery_app


def _redis_url() -> str:
    url = _app().REDIS_URL
    host = urlparse(url).hostname
    if host not in _LOOPBACK:
        raise RuntimeError(f"refusing non-loopback Redis for the benchmark: {url}")
    return url


def _flushdb(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url, socket_timeout=5)
    try:
        r.flushdb()
    finally:
        r.close()


def _log_tail(n: int = 40) -> str:
    if not _log_path or not os.path.exists(_log_path):
        return "(no worker log)"
    with open(_log_path, errors="replace") as fh:
        return "".join(fh.readlines()[-n:])


def setup(timeout: float = 60.0) -> None:
    """Flush the bench Redis DB, start a Celery worker and wait until it works."""
    global _worker, _log_path
    if _worker is not None:
        return
    url = _redis_url()
    _flushdb(url)

    nodename = f"bench{os.getpid()}@{socket.gethostname()}"
    cmd = [
        sys.executable, "-m", "celery", "-A", "bench.systems.celery_app", "worker",
        "--concurrency=2", "--pool=prefork",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-Q", "bench", "-l", "warning", "-n", nodename,
    ]
    env = os.environ.copy()
    env["BENCH_REDIS_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    fd, _log_path = tempfile.mkstemp(prefix="bench-celery-worker-", suffix=".log")
    # New session => the worker and its prefork children share one process
    # group that teardown() can signal as a whole.
    _worker = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=fd, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    os.close(fd)
    atexit.register(teardown)
    try:
        _wait_ready(nodename, timeout)
    except BaseException:
        teardown()
        raise


def _wait_ready(nodename: str, timeout: float) -> None:
    mod = _app()
    deadline = time.monotonic() + timeout
    while True:
        if _worker is None or _worker.poll() is not None:
            rc = None if _worker is None else _worker.returncode
            raise RuntimeError(f"celery worker exited early (rc={rc}):\n{_log_tail()}")
        replies = mod.app.control.ping(timeout=0.5)
        names = {name for reply in replies for name in reply}
        if nodename in names:
            others = names - {nodename}
            if others:
                print(f"[celery] WARNING: other workers on the bench DB: {sorted(others)}",
                      file=sys.stderr)
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery worker did not answer ping in {timeout}s:\n{_log_tail()}")
        time.sleep(0.2)
    # Trial round trip through broker, pool and result backend.
    mod.noop.apply_async().get(timeout=max(5.0, deadline - time.monotonic()))


def teardown() -> None:
    """Stop the worker (and its pool children) and flush the bench DB."""
    global _worker, _log_path
    proc, _worker = _worker, None
    if proc is not None:
        try:
            _stop_group(proc)
        finally:
            try:
                _app().app.close()
            except Exception:
                pass
            try:
                _flushdb(_redis_url())
            except Exception as exc:  # pragma: no cover - best effort
                print(f"[celery] could not flush bench DB: {exc}", file=sys.stderr)
    if _log_path and os.path.exists(_log_path):
        os.unlink(_log_path)
    _log_path = None


def _stop_group(proc: subprocess.Popen) -> None:
    pgid = proc.pid  # session leader => pgid == pid
    try:
        os.killpg(pgid, signal.SIGTERM)  # warm shutdown
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    # Reap any pool child that outlived the main process.
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_chain(n: int) -> list[float]:
    from celery import chain

    mod = _app()
    sig = chain(mod.noop_chain.s([]), *(mod.noop_chain.s() for _ in range(n - 1)))
    ts = sig.apply_async().get(timeout=120)
    return ts


def chain100(n: int = 100, reps: int = 3) -> dict[str, float]:
    """``n`` sequential tasks; per-hop latency pooled over ``reps`` chains."""
    return chain_scenario(_run_chain, n, reps)


def _run_fanout(n: int) -> float:
    from celery import group

    mod = _app()
    sig = group(mod.noop.s() for _ in range(n))
    t0 = time.perf_counter()
    res = sig.apply_async()
    res.get(timeout=600)
    elapsed = time.perf_counter() - t0
    res.forget()
    return elapsed


def fanout10k(n: int = 10_000) -> dict[str, float]:
    """``n`` independent no-op tasks; throughput from first submit to last result."""
    _run_fanout(500)  # warm-up, not counted
    elapsed = _run_fanout(n)
    return {"tasks_per_s": n / elapsed}


def main() -> None:
    import json

    setup()
    try:
        out = {"chain100": chain100(), "fanout10k": fanout10k()}
    finally:
        teardown()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
