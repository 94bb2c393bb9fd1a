"""The Celery app, its queues, and the timing knobs of the job system.

Producers (the CLI, reconcile) send by task NAME (``vlmjobs.<kind>``) with the
job id as the only argument, so they never import the recipes or torch. Only
the worker registers the task functions (``worker/tasks.py``).

Timing knobs (environment, seconds; read at call time):

- VLMJOBS_HEARTBEAT_S (10): how often a worker writes its own and its job's heartbeat.
- VLMJOBS_STALE_AFTER_S (120): a running job whose heartbeat is older is presumed lost
  (its worker died) and re-queued. Keep it several heartbeats long.
- VLMJOBS_RECONCILE_S (60): how often each worker runs ``reconcile``.
- VLMJOBS_REQUEUE_GRACE_S (30): a queued job whose message has been missing from Redis
  for longer is re-sent (the grace covers the gap between commit and send).
- VLMJOBS_VISIBILITY_TIMEOUT_S (604800, 7 days): Redis redelivers an unacknowledged
  message after this; it must exceed the longest job, or a running job is delivered
  again (harmless, the wrapper skips it, but noisy).
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

from vlmjobs import settings

QUEUES = ("cpu", "gpu")
# Redis serves priority sub-queues "gpu", "gpu:1" .. "gpu:9" in that order (0 first).
PRIORITY_SEP = ":"
_apps: dict[str, Celery] = {}


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not a number of seconds: fix or unset it") from e


def heartbeat_s() -> float:
    return _seconds("VLMJOBS_HEARTBEAT_S", 10)


def stale_after_s() -> float:
    return _seconds("VLMJOBS_STALE_AFTER_S", 120)


def reconcile_s() -> float:
    return _seconds("VLMJOBS_RECONCILE_S", 60)


def requeue_grace_s() -> float:
    return _seconds("VLMJOBS_REQUEUE_GRACE_S", 30)


def visibility_timeout_s() -> float:
    return _seconds("VLMJOBS_VISIBILITY_TIMEOUT_S", 7 * 24 * 3600)


def broker_priority(priority: int) -> int:
    """Our priority (0 lowest .. 9 highest) as Redis's (0 served first)."""
    return 9 - max(0, min(9, priority))


def get_app(broker_url: str | None = None) -> Celery:
    """The Celery app for ``broker_url`` (default ``settings.broker_url()``), built once."""
    url = broker_url or settings.broker_url()
    if url not in _apps:
        _apps[url] = _make_app(url)
    return _apps[url]


def _make_app(url: str) -> Celery:
    app = Celery("vlmjobs", broker=url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue="cpu",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the jobs table
        # A message is acknowledged only after the job ran; a worker that dies
        # mid-job leaves it unacknowledged (reconcile re-queues the job first).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds one job at a time
        worker_hijack_root_logger=False,
        # Task events, so Flower lists our tasks (received/started/succeeded per job):
        # a few small messages per job, dropped by Redis when no monitor listens.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s(),
            "priority_steps": list(range(10)),
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
        # Beat fires the database schedules (`vlmjobs schedule`), in its own process.
        # No periodic reconcile here: every worker's heartbeat thread already runs it.
        beat_scheduler="vlmjobs.scheduler.schedule_beat:ScheduleBeat",
    )
    return app
