"""Schedules against a real database and Redis, time driven by hand (``fire_due(now)``).

No worker runs here, so a fired job stays queued: exactly what the overlap policy
sees as "the previous run is still going". Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from vlmjobs.db.models import Job, Output, Schedule, ScheduleEvent, State
from vlmjobs.db.session import session
from vlmjobs.scheduler import schedules
from vlmjobs.scheduler.submit import cancel


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "sleepy.yaml"
    path.write_text("items: 2\n")
    return path


def add(cli, name: str, cfg: Path, *opts: str) -> None:
    res = cli("schedule", "add", name, *opts, "sleepy", str(cfg))
    assert res.exit_code == 0, res.output + res.stderr


def row(name: str) -> Schedule:
    with session() as s:
        return s.scalars(select(Schedule).where(Schedule.name == name)).one()


def jobs_of(name: str) -> list[Job]:
    sid = row(name).id
    with session() as s:
        return list(s.scalars(select(Job).where(Job.schedule_id == sid).order_by(Job.id)))


def events_of(name: str) -> list[str]:
    sid = row(name).id
    with session() as s:
        q = select(ScheduleEvent.message).where(ScheduleEvent.schedule_id == sid)
        return list(s.scalars(q.order_by(ScheduleEvent.id)))


def test_add_validates_everything_at_once(vlmjobs_cli, cfg: Path, tmp_path: Path) -> None:
    res = vlmjobs_cli(
        "schedule", "add", "a b", "--cron", "61 2 * * *", "--tz", "Nowhere/City", "sleepy",
        str(tmp_path / "missing.yaml"), "--set", "items=-1",
    )  # fmt: skip
    assert res.exit_code == 2
    for part in ("'a b'", "minute field: 61", "unknown time zone 'Nowhere/City'", "missing.yaml"):
        assert part in res.stderr
    assert vlmjobs_cli("schedule", "add", "x", "sleepy", str(cfg)).exit_code == 2  # no timing
    bad_spec = vlmjobs_cli(
        "schedule", "add", "x", "--every", "1m", "sleepy", str(cfg), "--set", "items=-1"
    )
    assert bad_spec.exit_code == 2 and "items" in bad_spec.stderr
    add(vlmjobs_cli, "x", cfg, "--every", "1m")
    again = vlmjobs_cli("schedule", "add", "x", "--every", "1m", "sleepy", str(cfg))
    assert again.exit_code == 2 and "exists" in again.stderr
    for verb in ("pause", "resume", "rm", "run-now"):
        res = vlmjobs_cli("schedule", verb, "nope")
        assert res.exit_code == 2 and "no schedule 'nope'" in res.stderr
    assert vlmjobs_cli("status", "--schedule", "nope").exit_code == 2


def test_spec_is_stored_so_the_yaml_may_move(vlmjobs_cli, cfg: Path) -> None:
    add(vlmjobs_cli, "moved", cfg, "--every", "10s", "--set", "sleep_s=0.5")
    cfg.unlink()
    sched = row("moved")
    assert sched.spec["items"] == 2 and sched.spec["sleep_s"] == 0.5
    job_id = schedules.fire_due(sched.next_run_at)[0].job_id
    with session() as s:
        job = s.get_one(Job, job_id)
    assert job.spec == sched.spec and job.state == State.queued and job.name == "moved"


def test_interval_fires_once_per_slot_and_skips_while_a_run_is_going(
    vlmjobs_cli, cfg: Path
) -> None:
    add(vlmjobs_cli, "tick", cfg, "--every", "10s")
    t0 = row("tick").next_run_at
    assert schedules.fire_due(t0 - timedelta(seconds=1)) == []
    first = schedules.fire_due(t0)
    assert [r.job_id is not None for r in first] == [True]
    assert schedules.fire_due(t0) == []  # the slot moved on: nothing twice
    assert row("tick").next_run_at == t0 + timedelta(seconds=10)
    # The first run is still queued (no worker): the next slot is skipped, and recorded.
    skipped = schedules.fire_due(t0 + timedelta(seconds=10))
    assert skipped[0].job_id is None and skipped[0].skipped_for == first[0].job_id
    sched = row("tick")
    assert (sched.runs, sched.skips, sched.last_job_id) == (1, 1, first[0].job_id)
    assert "is still queued" in events_of("tick")[-1]
    assert len(jobs_of("tick")) == 1


def test_queue_policy_submits_while_a_run_is_going(vlmjobs_cli, cfg: Path) -> None:
    add(vlmjobs_cli, "q", cfg, "--every", "10s", "--overlap", "queue")
    t0 = row("q").next_run_at
    schedules.fire_due(t0)
    schedules.fire_due(t0 + timedelta(seconds=10))
    assert [j.state for j in jobs_of("q")] == [State.queued, State.queued]
    assert row("q").skips == 0


def test_missed_slots_fire_one_catch_up_run(vlmjobs_cli, cfg: Path) -> None:
    add(vlmjobs_cli, "late", cfg, "--every", "10s")
    t0 = row("late").next_run_at
    # Everything was down for 95 s: ten slots passed.
    runs = schedules.fire_due(t0 + timedelta(seconds=95))
    assert len(runs) == 1 and runs[0].job_id is not None
    assert row("late").next_run_at == t0 + timedelta(seconds=100)  # the next FUTURE slot
    assert "catch-up: 9 later slot(s) also missed, fired once" in events_of("late")[-1]
    assert schedules.fire_due(t0 + timedelta(seconds=99)) == []
    assert len(jobs_of("late")) == 1


def test_cron_schedule_fires_in_its_zone(vlmjobs_cli, cfg: Path) -> None:
    add(vlmjobs_cli, "nightly", cfg, "--cron", "0 2 * * *", "--tz", "Asia/Tokyo")
    t0 = row("nightly").next_run_at
    assert (t0.hour, t0.minute) == (17, 0)  # 02:00 JST is 17:00 UTC
    assert schedules.fire_due(t0)[0].job_id is not None
    assert row("nightly").next_run_at == t0 + timedelta(days=1)


def test_pause_resume_rm_run_now(vlmjobs_cli, cfg: Path) -> None:
    add(vlmjobs_cli, "p", cfg, "--every", "10s")
    t0 = row("p").next_run_at
    assert vlmjobs_cli("schedule", "pause", "p").exit_code == 0
    assert schedules.fire_due(t0 + timedelta(hours=1)) == []  # paused: nothing, however late
    res = vlmjobs_cli("schedule", "run-now", "p")  # run-now works while paused
    assert res.exit_code == 0, res.stderr
    job_id = int(res.stdout)
    again = vlmjobs_cli("schedule", "run-now", "p")  # overlap skip: that run is still queued
    assert again.exit_code == 1 and f"job {job_id} is still going" in again.stderr
    assert row("p").skips == 1
    assert vlmjobs_cli("schedule", "resume", "p").exit_code == 0
    assert row("p").next_run_at > datetime.now().replace(tzinfo=None) - timedelta(hours=24)
    listing = json.loads(vlmjobs_cli("schedule", "ls", "--json").stdout)
    assert [(r["name"], r["state"], r["last_job_id"], r["last_job_state"]) for r in listing] == [
        ("p", "active", job_id, "queued")
    ]
    status = json.loads(vlmjobs_cli("status", "--schedule", "p", "--json").stdout)
    assert [j["id"] for j in status] == [job_id]
    cancel(job_id)
    assert vlmjobs_cli("schedule", "rm", "p").exit_code == 0
    assert json.loads(vlmjobs_cli("schedule", "ls", "--json").stdout) == []
    with session() as s:  # its jobs stay
        assert s.get_one(Job, job_id).schedule_id is not None


def test_concurrent_beats_fire_each_slot_once(vlmjobs_cli, cfg: Path) -> None:
    names = [f"s{i}" for i in range(6)]
    for name in names:
        add(vlmjobs_cli, name, cfg, "--every", "10s", "--overlap", "queue")
    now = max(row(n).next_run_at for n in names)
    barrier, fired, errors = threading.Barrier(4), [], []

    def beat() -> None:
        try:
            barrier.wait()
            fired.extend(r.job_id for r in schedules.fire_due(now))
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(fired) == len(names)
    assert [len(jobs_of(n)) for n in names] == [1] * len(names)


def test_earlier_run_keys_are_ok_outputs_of_other_runs(vlmjobs_cli, cfg: Path) -> None:
    add(vlmjobs_cli, "k", cfg, "--every", "10s", "--overlap", "queue")
    add(vlmjobs_cli, "other", cfg, "--every", "1h")
    t0 = row("k").next_run_at
    run1 = schedules.fire_due(t0)[0].job_id
    run2 = schedules.fire_due(t0 + timedelta(seconds=10))[0].job_id
    foreign = schedules.run_now("other").job_id
    with session() as s:
        for job_id, key, status in [
            (run1, "a", "ok"),
            (run1, "b", "failed"),  # failed items are retried by the next run
            (run2, "c", "ok"),
            (foreign, "d", "ok"),
        ]:
            s.add(Output(job_id=job_id, item_key=key, source=key, status=status, extra={}))
    assert schedules.earlier_run_keys(run2) == {"a"}
    assert schedules.earlier_run_keys(run1) == {"c"}
    assert schedules.earlier_run_keys(foreign) == set()
