"""This worker process: its identity, its stop flags, and its heartbeat thread.

The heartbeat is a thread (not the recipe's ``ctx.progress``) so that a job
loading a model for minutes still looks alive; a process killed with -9 takes
the thread with it, which is exactly what ``reconcile`` detects. The same
thread runs ``reconcile`` every ``VLMJOBS_RECONCILE_S``, so any live worker
repairs what a dead one left, whatever it is running.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import delete, update

from vlmjobs.db import lifecycle
from vlmjobs.db.lifecycle import Lease
from vlmjobs.db.models import Worker, utcnow
from vlmjobs.db.session import session
from vlmjobs.scheduler.app import heartbeat_s, reconcile_s
from vlmjobs.worker.context import StopFlags

logger = logging.getLogger("vlmjobs.worker")


@dataclass
class WorkerState:
    name: str = ""
    host: str = field(default_factory=socket.gethostname)
    gpu: str | None = None
    device: str = "cpu"
    queues: str = ""
    flags: StopFlags = field(default_factory=StopFlags)
    lease: Lease | None = None
    job_started: float = 0.0
    time_limit_s: float | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start_job(self, lease: Lease, time_limit_s: float | None) -> None:
        self.flags.time_limit.clear()
        self.flags.lost.clear()
        self.lease, self.job_started, self.time_limit_s = lease, time.monotonic(), time_limit_s

    def end_job(self) -> None:
        self.lease = None

    def register(self) -> None:
        """Insert (or refresh) this worker's row and start the heartbeat thread."""
        with session() as s:
            s.merge(
                Worker(
                    name=self.name,
                    host=self.host,
                    pid=os.getpid(),
                    gpu=self.gpu,
                    queues=self.queues,
                    current_job_id=None,
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )
        self._thread = threading.Thread(target=self._loop, name="vlmjobs-heartbeat", daemon=True)
        self._thread.start()

    def unregister(self) -> None:
        self._stop.set()
        with session() as s:
            s.execute(delete(Worker).where(Worker.name == self.name))

    def beat(self) -> None:
        """One heartbeat: the worker row, the running job's row (under its fence), and
        its time limit. A lost fence tells the job to stop at its next step."""
        lease = self.lease
        with session() as s:
            s.execute(
                update(Worker)
                .where(Worker.name == self.name)
                .values(
                    heartbeat_at=utcnow(),
                    current_job_id=lease.job_id if lease else None,
                    **gpu_memory(),
                )
            )
        if lease is None:
            return
        if not lifecycle.heartbeat(lease):
            self.flags.lost.set()
        limit = self.time_limit_s
        if limit and time.monotonic() - self.job_started > limit:
            self.flags.time_limit.set()

    def _loop(self) -> None:
        from vlmjobs.scheduler.reconcile import reconcile

        last_reconcile = 0.0
        while not self._stop.is_set():
            try:
                self.beat()
                if time.monotonic() - last_reconcile >= reconcile_s():
                    last_reconcile = time.monotonic()
                    done = reconcile()
                    if done.requeued_stale or done.resent_lost or done.failed_stale:
                        logger.warning("reconcile: %s", done)
            except Exception:  # the database or Redis is down: keep beating, log why
                logger.exception("heartbeat/reconcile failed; retrying")
            self._stop.wait(min(heartbeat_s(), reconcile_s()))


def gpu_memory() -> dict[str, int | None]:
    """This process's CUDA memory in MiB, as the workers row's columns; all None off CUDA.

    Reads torch only if a job already imported it and initialized CUDA: importing torch
    or creating a CUDA context from the heartbeat thread would cost ~500 MiB of the card.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {"gpu_mem_allocated_mb": None, "gpu_mem_reserved_mb": None, "gpu_mem_total_mb": None}
    mib = 2**20
    _free, total = torch.cuda.mem_get_info()
    return {
        "gpu_mem_allocated_mb": int(torch.cuda.memory_allocated() // mib),
        "gpu_mem_reserved_mb": int(torch.cuda.memory_reserved() // mib),
        "gpu_mem_total_mb": int(total // mib),
    }


WORKER = WorkerState()
