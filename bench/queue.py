"""Queue benchmark: submit-to-running latency with an idle worker, and throughput of small jobs.

Starts its own Redis (free port) and a fresh database (SQLite in a temp dir, or
--db-url), real `vlmjobs worker` processes serving the cpu queue, and the
test-only ``noop`` kind (tests/system/vlmjobs_testkinds.py). Prints a table.

    python bench/queue.py                 # 50 latency probes, 1,000 jobs with 1 and 2 workers
    python bench/queue.py --jobs 200 --probes 20

Latency: from just before ``submit()`` to the worker's ``started_at`` (same
host clock), one job at a time so the worker is idle. Throughput: ``--jobs``
jobs submitted back to back while the workers run; jobs/s = jobs / (last
finish - first submit).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py: drop its folder from the path so `import queue` (redis-py,
# kombu) finds the standard library's module, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402  (after the sys.path fix above)
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "tests" / "system"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redis

    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis did not start")


def start_workers(n: int, workdir: Path) -> list[subprocess.Popen[bytes]]:
    from vlmjobs.cli.stack import wait_worker_ready

    procs = []
    for i in range(n):
        argv = [
            sys.executable,
            "-c",
            "from vlmjobs.cli.main import cli; cli()",
            "worker",
            "--cpu-only",
            "--queues",
            "cpu",
            "--loglevel",
            "WARNING",
        ]
        log = open(workdir / f"worker-{len(procs)}-{i}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    for p in procs:
        wait_worker_ready(p.pid)
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def wait_all(ids: list[int], timeout: float) -> None:
    from sqlalchemy import func, select

    from vlmjobs.db.models import TERMINAL, Job
    from vlmjobs.db.session import session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session() as s:
            n = s.scalar(select(func.count()).where(Job.id.in_(ids), Job.state.in_(TERMINAL)))
        if n == len(ids):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{len(ids) - int(n or 0)} of {len(ids)} jobs unfinished")


def latency(probes: int, workdir: Path) -> list[float]:
    from vlmjobs.db.models import Job, utcnow
    from vlmjobs.db.session import session
    from vlmjobs.scheduler.submit import submit
    from vlmjobs.specs import load_spec

    spec = load_spec("noop", None, [])
    workers = start_workers(1, workdir)
    out = []
    try:
        for _ in range(probes + 3):  # the first 3 warm up the worker and the connections
            t0 = utcnow()
            job_id = submit(spec)
            wait_all([job_id], 30)
            with session() as s:
                started = s.get_one(Job, job_id).started_at
            assert started is not None
            out.append((started - t0).total_seconds())
            time.sleep(0.05)
    finally:
        stop(workers)
    return out[3:]


def throughput(n_workers: int, jobs: int, workdir: Path) -> tuple[float, float]:
    """(jobs/s end to end, submissions/s)."""
    from sqlalchemy import func, select

    from vlmjobs.db.models import Job, utcnow
    from vlmjobs.db.session import session
    from vlmjobs.scheduler.submit import submit
    from vlmjobs.specs import load_spec

    spec = load_spec("noop", None, [])
    workers = start_workers(n_workers, workdir)
    try:
        t0 = utcnow()
        start = time.perf_counter()
        ids = [submit(spec) for _ in range(jobs)]
        submit_rate = jobs / (time.perf_counter() - start)
        wait_all(ids, 600)
        with session() as s:
            last = s.scalar(select(func.max(Job.finished_at)).where(Job.id.in_(ids)))
    finally:
        stop(workers)
    return jobs / (last - t0).total_seconds(), submit_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=50)
    ap.add_argument("--db-url", help="default: a fresh SQLite file in a temp dir")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vlmjobs-bench-"))
    redis_proc, broker = start_redis(workdir)
    os.environ.update(
        {
            "VLMJOBS_HOME": str(workdir / "home"),
            "VLMJOBS_BROKER_URL": broker,
            "VLMJOBS_DB_URL": args.db_url or f"sqlite:///{workdir / 'bench.db'}",
            "VLMJOBS_PLUGINS": "vlmjobs_testkinds",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")])
            ),
        }
    )
    sys.path.insert(0, str(PLUGIN_DIR))
    from vlmjobs.db.session import mask_url

    try:
        lat = latency(args.probes, workdir)
        rows = [(n, *throughput(n, args.jobs, workdir)) for n in (1, 2)]
    finally:
        redis_proc.terminate()
    q = statistics.quantiles(lat, n=20)
    print(
        f"database: {mask_url(os.environ['VLMJOBS_DB_URL']).split(':')[0]}, "
        f"cpus: {os.cpu_count()}, probes: {len(lat)}, jobs: {args.jobs}"
    )
    print()
    print("| measure | value | target |")
    print("| --- | --- | --- |")
    print(f"| submit-to-running p50 (idle worker) | {statistics.median(lat):.3f} s | |")
    print(f"| submit-to-running p95 (idle worker) | {q[18]:.3f} s | < 0.5 s |")
    for n, rate, submit_rate in rows:
        target = ">= 20 jobs/s" if n == 2 else ""
        print(
            f"| throughput, {n} worker{'s' if n > 1 else ''} ({args.jobs} noop jobs, cpu queue) "
            f"| {rate:.1f} jobs/s (submit {submit_rate:.0f}/s) | {target} |"
        )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
