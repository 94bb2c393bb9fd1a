"""What "label only what is new" costs a scheduled run before it labels anything.

A schedule whose earlier runs labeled N images (spread over R runs) gets its next run;
that run's ``done_keys()`` reads the N keys of those runs (``earlier_run_keys``). This
times that query and the memory of the key set, on a SQLite file in a temp dir.

    python bench/schedule_keys.py                   # N = 10k, 100k, 1M; SQLite in /tmp
    python bench/schedule_keys.py --sizes 100000 --runs 30

Prints one table: N, runs, seconds to read the keys (warm cache), peak MiB while reading
(tracemalloc, a separate untimed read).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]


def fill(n: int, runs: int) -> int:
    """A schedule with ``runs`` succeeded jobs holding ``n`` ok outputs; a new run's job id."""
    from sqlalchemy import insert

    from vlmjobs.db.models import Job, Output, Schedule, utcnow
    from vlmjobs.db.session import session

    def job(sid: int) -> Job:
        return Job(kind="infer", spec={}, state="succeeded", queue="gpu", schedule_id=sid)

    with session() as s:
        sched = Schedule(name="bench", kind="infer", spec={}, every_s=86400, next_run_at=utcnow())
        s.add(sched)
        s.flush()
        jobs = [job(sched.id) for _ in range(runs + 1)]
        s.add_all(jobs)
        s.flush()
        ids = [j.id for j in jobs]
    per_run = n // runs
    for r in range(runs):
        rows = [
            {
                "job_id": ids[r],
                "item_key": hashlib.sha256(f"{r}:{i}".encode()).hexdigest(),
                "source": f"/data/night-{r}/{i:07d}.jpg",
                "status": "ok",
                "extra": {},
            }
            for i in range(per_run)
        ]
        with session() as s:
            s.execute(insert(Output), rows)
    return ids[-1]


def measure(n: int, runs: int) -> tuple[float, float]:
    from vlmjobs.db.session import dispose_engines
    from vlmjobs.scheduler.schedules import earlier_run_keys

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VLMJOBS_DB_URL"] = f"sqlite:///{tmp}/bench.db"
        new_job = fill(n, runs)
        earlier_run_keys(new_job)  # warm the page cache: the second read is the nightly one
        started = time.perf_counter()
        keys = earlier_run_keys(new_job)
        seconds = time.perf_counter() - started
        assert len(keys) == n // runs * runs, len(keys)
        del keys
        tracemalloc.start()  # slows Python down: a run of its own, not timed
        earlier_run_keys(new_job)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        dispose_engines()
    return seconds, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--runs", type=int, default=30, help="earlier runs the keys are spread over")
    args = ap.parse_args()
    print(f"{'images':>9} {'runs':>5} {'read keys s':>12} {'peak MiB':>9}")
    for n in (int(x) for x in args.sizes.split(",")):
        seconds, mib = measure(n, args.runs)
        print(f"{n:>9} {args.runs:>5} {seconds:>12.2f} {mib:>9.0f}")


if __name__ == "__main__":
    main()
