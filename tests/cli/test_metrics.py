"""`vlmjobs metrics JOB [--csv] [--plot]` against a real SQLite database."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlmjobs.cli.main import cli
from vlmjobs.cli.metrics import fmt, pivot


@pytest.mark.parametrize(
    "rows, steps, names, values",
    [
        pytest.param(
            [(1, "loss", 2.0), (1, "lr", 1e-4), (2, "loss", 1.5)],
            [1, 2],
            ["loss", "lr"],
            [[2.0, 1e-4], [1.5, None]],
            id="gaps-stay-empty",
        ),
        pytest.param(
            [(3, "loss", 9.0), (3, "loss", 1.0)],
            [3],
            ["loss"],
            [[1.0]],
            id="resumed-step-last-write-wins",
        ),
        pytest.param(
            [(2, "val_loss", 1.0), (2, "zeta", 3.0), (2, "grad_norm", 0.5), (None, "total", 7.0)],
            [None, 2],
            ["grad_norm", "total", "zeta", "val_loss"],
            [[None, 7.0, None, None], [0.5, None, 3.0, 1.0]],
            id="column-order-and-stepless-first",
        ),
    ],
)
def test_pivot(rows: list, steps: list, names: list, values: list) -> None:
    table = pivot(rows)
    assert (table.steps, table.names, table.values) == (steps, names, values)


@pytest.mark.parametrize(
    "value, text",
    [
        pytest.param(None, "", id="missing"),
        pytest.param(3.0, "3", id="integer"),
        pytest.param(0.123456, "0.1235", id="fraction"),
        pytest.param(2e-4, "2.000e-04", id="learning-rate"),
    ],
)
def test_fmt(value: float | None, text: str) -> None:
    assert fmt(value) == text


@pytest.fixture
def train_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A train job with 20 steps of loss/lr and two evaluations, in a fresh SQLite file."""
    from vlmjobs.db.models import Job, Metric, utcnow
    from vlmjobs.db.session import session

    monkeypatch.setenv("VLMJOBS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLMJOBS_DB_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    start = utcnow()
    with session() as s:
        job = Job(kind="train", spec={"kind": "train"}, state="succeeded", queue="gpu")
        s.add(job)
        s.flush()
        for step in range(1, 21):
            at = start + timedelta(seconds=step)
            s.add(Metric(job_id=job.id, step=step, name="loss", value=3.0 / step, time=at))
            s.add(Metric(job_id=job.id, step=step, name="lr", value=1e-3, time=at))
        for step, f1 in ((10, 0.25), (20, 0.75)):
            at = start + timedelta(seconds=step, milliseconds=500)
            s.add(Metric(job_id=job.id, step=step, name="val_loss", value=1.0 / step, time=at))
            s.add(Metric(job_id=job.id, step=step, name="val_region_f1", value=f1, time=at))
        return job.id


def test_table_csv_and_plot(train_job: int, tmp_path: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(cli, ["metrics", str(train_job)])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["step", "loss", "lr", "val_loss", "val_region_f1"]
    assert lines[10].split() == ["10", "0.3", "0.001", "0.1", "0.25"]
    assert lines[9].split() == ["9", "0.3333", "0.001"]  # no eval at step 9

    png_path = str(tmp_path / "c.png")
    out = runner.invoke(cli, ["metrics", str(train_job), "--csv", "--plot", png_path])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 20 and float(rows[19]["val_region_f1"]) == 0.75
    assert rows[0]["val_loss"] == "" and float(rows[0]["loss"]) == 3.0
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG" and png.size == (800, 900)  # loss, lr, eval panels
        assert len(png.convert("RGB").getcolors(1_000_000) or []) > 10  # curves, not blank


def test_bad_input(train_job: int, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["metrics", "999"])
    assert missing.exit_code == 2 and "no job 999" in missing.stderr
    not_png = runner.invoke(cli, ["metrics", str(train_job), "--plot", str(tmp_path / "a.jpg")])
    assert not_png.exit_code == 2 and "name a .png file" in not_png.stderr
