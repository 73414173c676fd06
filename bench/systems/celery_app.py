"""Celery app used by the benchmark (imported by both the client and the worker).

The worker is started by ``bench.systems.celery_sys`` as::

    python -m celery -A bench.systems.celery_app worker --concurrency=2 \
        --pool=prefork --without-gossip --without-mingle --without-heartbeat \
        -Q bench -l warning

Settings (chosen to be fast but comparable to FlowForge's guarantees):

* broker + result backend: Redis on a dedicated DB (default
  ``redis://127.0.0.1:6379/14``, override with ``BENCH_REDIS_URL``).  The
  driver FLUSHDBs that DB before starting the worker and after stopping it.
* ``task_acks_late=True``: a message is acked only after the task ran, i.e.
  at-least-once delivery like FlowForge (Celery's default acks on receipt).
* ``worker_prefetch_multiplier=16``: each pool process may reserve up to 16
  un-acked messages, amortising broker round trips on fan-out (default 4);
  it has no effect on a chain, where only one message exists at a time.
* results are stored for every task (no ``task_ignore_result``): the client
  needs them to observe completion of every fan-out task and the chain's final
  list, and FlowForge also persists every task's outcome.
* ``worker_disable_rate_limits=True``: skips the rate-limit bookkeeping (no
  task here has a rate limit).
* JSON serialisation (Celery's default) for both messages and results.
* no events, no gossip/mingle/heartbeat (CLI flags): pure task execution.
"""

from __future__ import annotations

import os
import time

from celery import Celery

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
QUEUE = "bench"

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "16")),
    worker_disable_rate_limits=True,
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    result_expires=3600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop_chain")
def noop_chain(ts: list[float] | None = None) -> list[float]:
    """Append the start time of this task to ``ts`` and pass it on."""
    now = time.time()
    out = list(ts or [])
    out.append(now)
    return out


@app.task(name="bench.noop")
def noop() -> None:
    return None
