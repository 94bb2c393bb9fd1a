"""Scheduled labeling end to end: two real beat processes, a real worker, Redis, SQLite and
the tiny model. Images are dropped into a folder between runs; beat and the worker are
restarted in the middle; pause, resume, run-now and rm are exercised on the live stack.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from vlmjobs.db.models import Job, Output, Schedule, ScheduleEvent, utcnow
from vlmjobs.db.session import session
from vlmjobs.dev.build import make_model

pytestmark = pytest.mark.slow
EVERY_S = 2


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: test_schedule_fire covers PostgreSQL; this keeps CPU time down."""
    return sqlite_url


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny") / "model", arch="tiny", seed=0)


def png(i: int) -> bytes:
    """A distinct small image per i."""
    w, h = 96 + 17 * (i % 5), 72 + 13 * (i % 4)
    image = Image.new("RGB", (w, h), (128, 128, 128))
    image.paste((40 * i % 256, 90, 200 - 7 * i % 200), (5 + i % 20, 6, w // 2 + i % 30, h - 8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def drop(folder: Path, *ids: int) -> None:
    for i in ids:
        (folder / f"img{i}.png").write_bytes(png(i))


@pytest.fixture
def start_beat(
    vlmjobs_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Factory: a real `vlmjobs beat` process; each ``host`` gets its own home (beat's own
    state file), as two hosts would. All are killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(host: str) -> subprocess.Popen[bytes]:
        env = {
            **vlmjobs_env,
            "VLMJOBS_HOME": str(tmp_path / f"home-{host}"),
            "VLMJOBS_SCHEDULE_TICK_S": "0.3",
        }
        argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", "beat"]
        log = open(tmp_path / f"beat-{host}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = {p.name: p.read_text(errors="replace")[-2000:] for p in logs.glob("*.log")}
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; logs: {tails}")
        time.sleep(0.2)


def labeled(sid: int) -> tuple[int, int]:
    """(output rows, distinct item keys) over every run of the schedule, status ok."""
    with session() as s:
        q = (
            select(func.count(Output.id), func.count(func.distinct(Output.item_key)))
            .join(Job, Job.id == Output.job_id)
            .where(Job.schedule_id == sid, Output.status == "ok")
        )
        rows, keys = s.execute(q).one()
    return int(rows), int(keys)


def run_count(sid: int) -> int:
    with session() as s:
        return int(s.scalar(select(func.count(Job.id)).where(Job.schedule_id == sid)) or 0)


def slots_fired(sid: int) -> list[str]:
    """The slot of every scheduled fire and skip (run-now has none)."""
    with session() as s:
        q = select(ScheduleEvent.message).where(ScheduleEvent.schedule_id == sid)
        messages = list(s.scalars(q))
    return [m.group(1) for m in (re.search(r"slot ([\d:. -]+)", x) for x in messages) if m]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def test_interval_schedule_labels_only_new_images_across_restarts(
    tiny, tmp_path, vlmjobs_cli, start_worker, start_beat, wait_for_state
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    drop(folder, 0, 1, 2)
    cfg = tmp_path / "infer.yaml"
    cfg.write_text(
        f"model:\n  path: {tiny}\n  dtype: fp32\n  min_pixels: 3136\n  max_pixels: 50176\n"
        f"inputs: [{folder}]\ntask: caption\nengine: hf\nmax_new_tokens: 8\nbatch_size: 4\n"
    )
    worker = start_worker()
    beats = [start_beat("a"), start_beat("b")]  # two beats: each slot must still fire once
    res = vlmjobs_cli("schedule", "add", "dock", "--every", f"{EVERY_S}s", "infer", str(cfg))
    assert res.exit_code == 0, res.stderr
    with session() as s:
        sid = s.scalar(select(Schedule.id).where(Schedule.name == "dock"))

    def reach(n: int) -> None:
        wait_until(lambda: labeled(sid)[1] >= n, 120, f"{n} images labeled", tmp_path)

    reach(3)
    drop(folder, 3, 4)
    (folder / "copy-of-0.png").write_bytes(png(0))  # same bytes: already labeled
    reach(5)

    # Everything goes down; images arrive meanwhile; everything comes back.
    for proc in beats:
        stop(proc)
    worker.kill(signal.SIGTERM)
    worker.wait(60)
    drop(folder, 5, 6)
    worker = start_worker()
    beats = [start_beat("a"), start_beat("b")]
    reach(7)

    # Pause: no new runs however long we wait; run-now still works.
    assert vlmjobs_cli("schedule", "pause", "dock").exit_code == 0
    wait_until(lambda: not _active(sid), 60, "the runs in flight to end", tmp_path)
    paused_runs = run_count(sid)
    drop(folder, 7)
    time.sleep(3 * EVERY_S)
    assert run_count(sid) == paused_runs
    res = vlmjobs_cli("schedule", "run-now", "dock")
    assert res.exit_code == 0, res.stderr
    wait_for_state(int(res.stdout), {"succeeded"}, timeout=60)
    assert labeled(sid) == (8, 8)

    assert vlmjobs_cli("schedule", "resume", "dock").exit_code == 0
    drop(folder, 8)
    reach(9)
    listing = vlmjobs_cli("schedule", "ls")
    assert "dock" in listing.stdout and "9 (" in listing.stdout, listing.stdout

    assert vlmjobs_cli("schedule", "rm", "dock").exit_code == 0
    wait_until(lambda: not _active(sid), 60, "the runs in flight to end", tmp_path)
    removed_runs = run_count(sid)
    time.sleep(3 * EVERY_S)
    assert run_count(sid) == removed_runs

    # Exactly one output row per distinct image over all runs; no slot fired twice.
    assert labeled(sid) == (9, 9)
    with session() as s:
        sources = list(
            s.scalars(
                select(Output.source)
                .join(Job, Job.id == Output.job_id)
                .where(Job.schedule_id == sid, Output.status == "ok")
            )
        )
    assert sorted(Path(p).name for p in sources) == [f"img{i}.png" for i in range(9)]
    assert not [slot for slot, n in Counter(slots_fired(sid)).items() if n > 1]
    for proc in beats:
        assert proc.poll() is None, "a beat process died"


def _active(sid: int) -> bool:
    with session() as s:
        q = select(Job.id).where(Job.schedule_id == sid, Job.state.in_(("queued", "running")))
        return s.scalar(q) is not None


def fire_slots(sid: int) -> list[tuple[datetime, datetime, str]]:
    """(slot, event time, message) of every scheduled fire or skip of the schedule."""
    with session() as s:
        q = select(ScheduleEvent).where(ScheduleEvent.schedule_id == sid)
        events = list(s.scalars(q.order_by(ScheduleEvent.id)))
    found = ((re.search(r"slot ([\d:. -]+\d)", e.message), e) for e in events)
    return [(datetime.fromisoformat(hit.group(1)), e.time, e.message) for hit, e in found if hit]


def schedule_row(name: str) -> Schedule:
    with session() as s:
        return s.scalars(select(Schedule).where(Schedule.name == name)).one()


def test_beat_fires_while_the_worker_is_busy_and_catches_up_once(
    tmp_path, vlmjobs_cli, start_worker, start_beat, wait_for_state
) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text("items: 8\nsleep_s: 1.0\n")  # 8 s: room for 2 skips on a busy machine
    fast = tmp_path / "fast.yaml"
    fast.write_text("items: 1\n")
    start_worker()
    beat = start_beat("a")
    assert (
        vlmjobs_cli("schedule", "add", "busy", "--every", "1s", "sleepy", str(slow)).exit_code == 0
    )
    busy = schedule_row("busy").id
    # The only worker runs the first slow run; beat keeps evaluating slots meanwhile.
    wait_until(lambda: schedule_row("busy").last_job_id is not None, 60, "a busy run", tmp_path)
    first = schedule_row("busy").last_job_id
    wait_for_state(first, {"running"}, timeout=60)
    wait_until(lambda: schedule_row("busy").skips >= 2, 30, "skips while busy", tmp_path)
    with session() as s:
        assert s.get_one(Job, first).state == "running"
    assert run_count(busy) == 1
    assert vlmjobs_cli("schedule", "pause", "busy").exit_code == 0

    res = vlmjobs_cli("schedule", "add", "late", "--every", "2s", "sleepy", str(fast))
    assert res.exit_code == 0
    late = schedule_row("late").id
    wait_until(lambda: run_count(late) >= 1, 60, "a first run of 'late'", tmp_path)
    stop(beat)
    time.sleep(7)  # three or four slots pass with no beat
    restarted = utcnow()
    beat = start_beat("a")
    wait_until(
        lambda: any("catch-up" in m for _, _, m in fire_slots(late)), 60, "a catch-up", tmp_path
    )
    time.sleep(3)
    # Of what this beat fired, exactly one is for a slot from its downtime: the catch-up.
    after = [(slot, m) for slot, t, m in fire_slots(late) if t >= restarted]
    from_downtime = [m for slot, m in after if slot < restarted]
    assert len(from_downtime) == 1 and "catch-up" in from_downtime[0], after
    slots = [slot for slot, _, _ in fire_slots(late)]
    assert len(slots) == len(set(slots))
    assert beat.poll() is None
