"""Soak: mixed jobs on 2 workers while workers are paused, killed and restarted and Redis
restarts; then the invariants of "one job, one owner" are checked and a table printed.

Starts its own Redis (free port, no persistence), a fresh database (SQLite in a temp
dir, or --db-url) and real `vlmjobs worker` processes serving the cpu queue, with the
test-only kinds of tests/system/vlmjobs_testkinds.py (``sleepy`` writes one output row
per item and, with ``publish``, an artifact through ``ctx.publish``; ``noop``).

    python bench/soak.py --minutes 10
    python bench/soak.py --minutes 3 --db-url postgresql+psycopg://...

Chaos, one action every --every seconds: SIGSTOP a worker past the stale limit, then
SIGCONT; kill -9 a worker and start another; SIGTERM a worker (warm shutdown) and start
another; restart Redis (messages in it are lost). Afterwards it drains (no chaos) and
checks: every job ended; each succeeded job has one "succeeded" event, exactly its
items as output rows, and (publish) the artifact of the attempt that succeeded; no
temp directory is left under the artifact root.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds queue.py: drop it from the path so `import queue` (redis-py, kombu) finds
# the standard library's module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402  (after the sys.path fix above)
import collections  # noqa: E402  (after the sys.path fix above)
import os  # noqa: E402  (after the sys.path fix above)
import random  # noqa: E402  (after the sys.path fix above)
import shutil  # noqa: E402  (after the sys.path fix above)
import signal  # noqa: E402  (after the sys.path fix above)
import socket  # noqa: E402  (after the sys.path fix above)
import subprocess  # noqa: E402  (after the sys.path fix above)
import tempfile  # noqa: E402  (after the sys.path fix above)
import time  # noqa: E402  (after the sys.path fix above)

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "tests" / "system"
STALE_S = 3.0


def start_redis(workdir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server without persistence on ``port`` (a free one by default)."""
    import redis

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis did not start")


def start_workers(n: int, workdir: Path) -> list[subprocess.Popen[bytes]]:
    from vlmjobs.cli.stack import wait_worker_ready

    procs = []
    for _ in range(n):
        argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", "worker"]
        argv += ["--cpu-only", "--queues", "cpu", "--loglevel", "WARNING"]
        log = open(workdir / f"worker-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    for p in procs:
        wait_worker_ready(p.pid)
    return procs


def submit_mix(rng: random.Random) -> int:
    from vlmjobs.scheduler.submit import submit
    from vlmjobs.specs import load_spec

    roll = rng.random()
    if roll < 0.15:
        return submit(load_spec("noop", None, []))
    sets = [f"items={rng.randint(2, 12)}", f"sleep_s={rng.choice([0.05, 0.1, 0.2])}"]
    sets += ["publish=true"] if roll < 0.75 else []
    sets += ["fail=flaky"] if rng.random() < 0.1 else []
    return submit(load_spec("sleepy", None, sets))


def chaos(rng: random.Random, workers: list, redis_box: list, workdir: Path, acts: dict) -> None:
    """One random fault; keeps two workers alive."""
    action = rng.choice(["pause", "kill9", "sigterm", "redis"])
    acts[action] += 1
    victim = rng.randrange(len(workers))
    if action == "pause":
        workers[victim].send_signal(signal.SIGSTOP)
        time.sleep(STALE_S + rng.uniform(0.5, 3.0))
        workers[victim].send_signal(signal.SIGCONT)
    elif action in ("kill9", "sigterm"):
        proc = workers.pop(victim)
        proc.send_signal(signal.SIGKILL if action == "kill9" else signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        workers.extend(start_workers(1, workdir))
    else:
        old, port = redis_box
        old.kill()
        old.wait()
        redis_box[0] = start_redis(workdir, port)[0]


def check(ids: list[int]) -> dict[str, object]:
    """The invariants over every job; counts of what held and what did not."""
    from sqlalchemy import func, select

    from vlmjobs import settings
    from vlmjobs.db.models import Job, JobEvent, Output
    from vlmjobs.db.session import session

    out: dict[str, object] = collections.Counter()
    failures: list[str] = []
    with session() as s:
        stale = JobEvent.message.like("%stopped heartbeating%")
        taken = s.scalar(select(func.count(func.distinct(JobEvent.job_id))).where(stale))
        out["jobs re-queued after a stale heartbeat"] = int(taken or 0)
        for job in s.scalars(select(Job).where(Job.id.in_(ids))):
            out[f"state {job.state}"] += 1  # type: ignore[operator]
            out["jobs run by more than one attempt"] += job.fence > 1  # type: ignore[operator]
            if job.state != "succeeded":
                if job.state != "failed" or "gave up" not in (job.error or ""):
                    failures.append(f"job {job.id} {job.state}: {job.error}")
                continue
            ends = s.scalar(
                select(func.count()).where(
                    JobEvent.job_id == job.id, JobEvent.message == "succeeded"
                )
            )
            rows = s.scalar(select(func.count()).where(Output.job_id == job.id))
            items = job.spec.get("items", 0) if job.kind == "sleepy" else 0
            if ends != 1 or rows != items:
                failures.append(f"job {job.id}: {ends} succeeded events, {rows}/{items} rows")
            owner = settings.artifacts_root() / "jobs" / str(job.id) / "out" / "owner.txt"
            if job.spec.get("publish"):
                text = owner.read_text().strip() if owner.exists() else "missing"
                if text != f"attempt={job.attempts}":
                    failures.append(f"job {job.id}: artifact {text}, attempts {job.attempts}")
    root = settings.artifacts_root() / "jobs"
    temps = [p for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    out["orphaned temp dirs"] = len(temps)
    out["invariant violations"] = len(failures)
    for line in failures[:20]:
        print("VIOLATION", line)
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=8, help="seconds between faults")
    ap.add_argument("--rate", type=float, default=1.0, help="jobs submitted per second")
    ap.add_argument("--db-url", help="default: a fresh SQLite file in a temp dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vlmjobs-soak-"))
    redis_proc, broker = start_redis(workdir)
    os.environ.update(
        {
            "VLMJOBS_HOME": str(workdir / "home"),
            "VLMJOBS_BROKER_URL": broker,
            "VLMJOBS_DB_URL": args.db_url or f"sqlite:///{workdir / 'soak.db'}",
            "VLMJOBS_PLUGINS": "vlmjobs_testkinds",
            "VLMJOBS_HEARTBEAT_S": "0.5",
            "VLMJOBS_STALE_AFTER_S": str(STALE_S),
            "VLMJOBS_RECONCILE_S": "1",
            "VLMJOBS_REQUEUE_GRACE_S": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")])
            ),
        }
    )
    sys.path.insert(0, str(PLUGIN_DIR))
    rng = random.Random(args.seed)
    redis_box = [redis_proc, int(broker.rsplit(":", 1)[1].split("/")[0])]
    workers = start_workers(2, workdir)
    acts: dict[str, int] = collections.Counter()
    ids: list[int] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    next_fault = started + args.every
    try:
        while time.monotonic() < end:
            try:
                ids.append(submit_mix(rng))
            except Exception as e:  # Redis restarting: the row is saved, reconcile re-sends
                print("submit:", str(e)[:120])
            if time.monotonic() >= next_fault:
                chaos(rng, workers, redis_box, workdir, acts)
                next_fault = time.monotonic() + args.every
            time.sleep(1 / args.rate)
        drain_s = drain(ids)
        result = check(ids)
    finally:
        for w in workers:
            w.kill()
        redis_box[0].kill()
    print(f"soak: {args.minutes:g} min, faults every {args.every:g} s, {len(ids)} jobs, "
          f"drained in {drain_s:.0f} s, cpus {os.cpu_count()}, database "
          f"{os.environ['VLMJOBS_DB_URL'].split(':')[0]}")  # fmt: skip
    print()
    print("| what | count |")
    print("| --- | --- |")
    for key, value in [*sorted(acts.items()), *sorted(result.items())]:
        print(f"| {key.replace('pause', 'SIGSTOP past stale, SIGCONT')} | {value} |")


def drain(ids: list[int], timeout: float = 600) -> float:
    """Seconds until every job is final (no chaos meanwhile)."""
    from sqlalchemy import func, select

    from vlmjobs.db.models import TERMINAL, Job
    from vlmjobs.db.session import session

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with session() as s:
            left = s.scalar(select(func.count()).where(Job.id.in_(ids), Job.state.not_in(TERMINAL)))
        if not left:
            break
        time.sleep(0.5)
    return time.monotonic() - t0


if __name__ == "__main__":
    main()
