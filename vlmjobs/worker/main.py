"""Start a worker process: pin the GPU, load plugins, then hand over to Celery.

Nothing here imports torch: ``CUDA_VISIBLE_DEVICES`` must be set before CUDA
initializes, and recipes import torch only inside the job.
"""

from __future__ import annotations

import os
import socket
import sys

from vlmjobs import settings
from vlmjobs.db.session import ensure_schema
from vlmjobs.errors import VlmjobsError
from vlmjobs.scheduler.app import QUEUES, get_app
from vlmjobs.specs import load_plugins
from vlmjobs.worker.process import WORKER
from vlmjobs.worker.tasks import register_tasks


def pin_gpu(gpu: int | None) -> None:
    """Make GPU ``gpu`` the process's only visible device (``cuda:0``); hide all GPUs for None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise VlmjobsError("CUDA was initialized before the worker pinned its GPU: report this bug")
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)


def worker_name(gpu: int | None) -> str:
    """Celery hostname: which GPU, which process, which host."""
    where = f"gpu{gpu}" if gpu is not None else "cpu"
    return f"{where}.{os.getpid()}@{socket.gethostname()}"


def check_broker(url: str) -> None:
    """Fail fast, with a clear message, when the broker refuses our credentials or TLS.

    Celery itself retries every connection error 100 times, which is right for a
    broker that is still starting but hides a wrong password for minutes. An
    unreachable broker is left to Celery's retries; the URL is printed masked.
    """
    import redis
    import redis.exceptions as rex

    from vlmjobs.db.session import mask_url

    if not url.startswith(("redis://", "rediss://")):
        return  # redis+socket://, sentinel://: redis-py cannot parse them; Celery reports
    where = mask_url(url)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except (rex.AuthenticationError, rex.AuthenticationWrongNumberOfArgsError) as e:
        raise VlmjobsError(
            f"broker {where} refused the credentials ({e}): "
            "fix the password in VLMJOBS_BROKER_URL (redis://:PASSWORD@host:port/db)"
        ) from None
    except rex.ResponseError as e:
        if "NOAUTH" not in str(e) and "WRONGPASS" not in str(e):
            raise
        raise VlmjobsError(
            f"broker {where} needs a password ({e}): put it in VLMJOBS_BROKER_URL "
            "(redis://:PASSWORD@host:port/db)"
        ) from None
    except rex.ConnectionError as e:
        if "SSL" in str(e) or "certificate" in str(e):
            raise VlmjobsError(
                f"broker {where}: TLS failed ({e}): check ssl_ca_certs / ssl_cert_reqs "
                "in VLMJOBS_BROKER_URL (rediss://...?ssl_cert_reqs=required&ssl_ca_certs=PATH)"
            ) from None
        # Not up yet (compose starts everything at once): Celery retries on its own.


def run_worker(gpu: int | None, queues: list[str], loglevel: str = "INFO") -> None:
    """Serve ``queues`` one job at a time until SIGTERM (warm shutdown) or SIGINT."""
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise VlmjobsError(f"unknown queue(s) {unknown}: choose from {list(QUEUES)}")
    pin_gpu(gpu)
    check_broker(settings.broker_url())
    load_plugins()
    ensure_schema()
    WORKER.name = worker_name(gpu)
    WORKER.gpu = None if gpu is None else str(gpu)
    WORKER.device = "cpu" if gpu is None else "cuda"
    WORKER.queues = ",".join(queues)
    app = get_app()
    register_tasks(app)
    app.worker_main(
        [
            "worker",
            # A thread, not a fork (CUDA does not survive fork), and one job at a time per
            # GPU; unlike the solo pool, the main thread keeps answering ping/inspect and
            # Flower while a job runs, and SIGTERM still reaches the job's stop flag.
            "--pool=threads",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={','.join(queues)}",
            f"--hostname={WORKER.name}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
