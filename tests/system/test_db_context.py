"""The database layer and the worker's JobContext, in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import delete, func, select, text

from vlmjobs import settings
from vlmjobs.db import lifecycle
from vlmjobs.db.models import Checkpoint, Job, Output, Region
from vlmjobs.db.session import current_revision, ensure_schema, get_engine, session
from vlmjobs.errors import LostOwnership
from vlmjobs.recipes.context import OutputRecord, RegionRecord
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec
from vlmjobs.worker.context import StopFlags, WorkerContext


def _claimed(job_id: int) -> WorkerContext:
    """A context for job ``job_id`` claimed in-process, as the run wrapper claims it."""
    lease = lifecycle.claim(job_id, worker="test", gpu=None, stale_after_s=60)
    assert lease is not None
    return WorkerContext(lease, "cpu", StopFlags())


@pytest.fixture
def ctx(vlmjobs_env: dict[str, str]) -> WorkerContext:
    return _claimed(submit(load_spec("sleepy", None, [])))  # nobody consumes it: no worker


def _rec(key: str, n_regions: int) -> OutputRecord:
    regions = [RegionRecord(i, i, i + 10, i + 10, f"r{i}", 0.9) for i in range(n_regions)]
    return OutputRecord(key, f"src/{key}", "ok", raw_text="t", regions=regions)


def test_save_outputs_is_insert_if_absent(ctx: WorkerContext) -> None:
    assert ctx.save_outputs([_rec("a", 2), _rec("b", 1)]) == 2
    assert ctx.save_outputs([_rec("b", 5), _rec("c", 0), _rec("c", 3)]) == 1  # b and 2nd c skip
    assert ctx.done_keys() == {"a", "b", "c"}
    with session() as s:
        per_key = dict(
            s.execute(
                select(Output.item_key, func.count(Region.id))
                .outerjoin(Region)
                .where(Output.job_id == ctx.job_id)
                .group_by(Output.item_key)
            ).all()
        )
    assert per_key == {"a": 2, "b": 1, "c": 0}  # regions of the first save only


def test_checkpoints_are_relative_to_the_artifact_root(ctx: WorkerContext, tmp_path) -> None:
    a, b = ctx.workdir / "ckpt-1", ctx.workdir / "ckpt-2"
    ctx.record_checkpoint(1, a, {"loss": 2.0}, is_best=True)
    ctx.record_checkpoint(2, b, {"loss": 1.0}, is_best=True)
    with session() as s:
        rows = s.execute(
            select(Checkpoint.path, Checkpoint.is_best).order_by(Checkpoint.step)
        ).all()
    assert [tuple(r) for r in rows] == [
        (f"jobs/{ctx.job_id}/ckpt-1", False),
        (f"jobs/{ctx.job_id}/ckpt-2", True),
    ]
    assert (settings.artifacts_root() / rows[1][0]) == b
    ctx.forget_checkpoint(a)
    with session() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)) == 1
    with pytest.raises(ValueError, match="outside the artifact root"):
        ctx.record_checkpoint(3, tmp_path / "elsewhere", {})


def test_progress_throttle_metrics_and_cancel_poll(ctx: WorkerContext) -> None:
    ctx.progress(1, 10)
    ctx.progress(2, 10)  # within a second: not written
    with session() as s:
        assert s.get_one(Job, ctx.job_id).progress_done == 1
    ctx.progress(10, 10)  # done == total: always written
    with session() as s:
        assert s.get_one(Job, ctx.job_id).progress_done == 10
    assert not ctx.should_stop()
    with session() as s:
        s.get_one(Job, ctx.job_id).cancel_requested = True
    assert ctx.should_stop() and ctx.stop_seen  # the very next check sees it


def test_deleting_a_job_cascades(ctx: WorkerContext) -> None:
    ctx.save_outputs([_rec("a", 3)])
    with session() as s:
        s.execute(delete(Job).where(Job.id == ctx.job_id))
    with session() as s:
        assert s.scalar(select(func.count()).select_from(Region)) == 0
        assert s.scalar(select(func.count()).select_from(Output)) == 0


def test_sqlite_pragmas_and_db_upgrade_cli(vlmjobs_cli, sqlite_url, monkeypatch) -> None:
    monkeypatch.setenv("VLMJOBS_DB_URL", sqlite_url)
    res = vlmjobs_cli("db", "upgrade")
    have, head = current_revision(sqlite_url)
    assert have == head and head is not None
    assert res.exit_code == 0 and f"at revision {head}" in res.stdout
    with ensure_schema(sqlite_url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert get_engine(sqlite_url) is get_engine(sqlite_url)  # one engine per URL


def test_resident_objects_outlive_a_job_until_another_key_evicts_them(
    vlmjobs_env: dict[str, str],
) -> None:
    # The cache lives as long as the process: keys unique to this run, not to the module.
    a, b = f"model:a:{uuid.uuid4()}", f"model:b:{uuid.uuid4()}"
    loads: list[str] = []

    def load(name: str) -> Callable[[], object]:
        return lambda: loads.append(name) or object()

    first = _claimed(submit(load_spec("sleepy", None, [])))
    second = _claimed(submit(load_spec("sleepy", None, [])))
    model = first.resident(a, load("a"))
    assert second.resident(a, load("a")) is model  # next job, same base: no reload
    other = second.resident(b, load("b"))  # another base evicts the first
    assert first.resident(a, load("a")) is not model
    assert other is not model and loads == ["a", "b", "a"]


def test_output_counts_cover_every_attempt(ctx: WorkerContext) -> None:
    failed = OutputRecord("bad", "src/bad", "failed", error="not an image")
    ctx.save_outputs([_rec("a", 1), _rec("b", 0), failed])
    msg = lifecycle.requeue_own(ctx.lease, "test: worker shutting down", count_attempt=False)
    assert msg is not None
    second = _claimed(ctx.job_id)  # the resumed attempt labels one more
    second.save_outputs([_rec("c", 2)])
    assert second.output_counts() == {"ok": 3, "failed": 1}
    with pytest.raises(LostOwnership):  # and the first attempt can write no more
        ctx.save_outputs([_rec("d", 0)])


def test_add_sources_records_every_source_once(ctx: WorkerContext) -> None:
    ctx.save_outputs([_rec("a", 1)])
    ctx.add_sources([("a", "copy/a.png"), ("a", "src/a"), ("a", "copy/a.png"), ("zz", "x")])
    ctx.add_sources([("a", "tar!a.png")])  # a later batch, or a resumed attempt
    with session() as s:
        row = s.scalars(select(Output).where(Output.job_id == ctx.job_id)).one()
    assert row.extra["sources"] == ["src/a", "copy/a.png", "tar!a.png"]


def test_an_owner_that_lost_the_job_after_its_last_write_ends_nothing(ctx: WorkerContext) -> None:
    """Frozen between its recipe's last fenced write and its finish: the result is dropped,
    and the job's log (not only the worker's) says the attempt stopped."""
    from vlmjobs.worker import wrapper

    assert lifecycle.requeue_own(ctx.lease, "test: taken over", count_attempt=True) is not None
    second = _claimed(ctx.job_id)
    wrapper._on_result(ctx.lease, ctx, {"value": "stale"})
    wrapper._on_error(ctx.lease, ctx, OSError("a retryable error of the old owner"))
    with session() as s:
        job = s.get_one(Job, ctx.job_id)
        assert (job.state, job.fence, job.result) == ("running", second.lease.token, None)
    log = (ctx.workdir / "job.log").read_text()
    assert "attempt 1 stopped: LostOwnership: another attempt owns the job now; its end as " in log
    assert "its end as succeeded is dropped" in log
    assert "a retryable error of the old owner" in log and log.endswith("not re-queued\n")
