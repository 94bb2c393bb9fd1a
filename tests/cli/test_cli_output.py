"""What `status`, `submit --wait`, `workers` and `schedule` print: readable on a terminal,
plain (no escape codes, no carriage returns) in a log, JSON for scripts."""

from __future__ import annotations

import json
import re

import pytest

from vlmjobs.cli.console import PlainProgress
from vlmjobs.cli.view import indent_message, result_lines
from vlmjobs.db.models import Job, JobEvent, Metric
from vlmjobs.db.session import session

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize(
    "result, lines",
    [
        pytest.param({"ok": 3}, ["    ok  3"], id="one-key"),
        pytest.param(
            {"adapter": "jobs/2/adapter", "best_f1": 0.123456},
            ["    adapter  jobs/2/adapter", "    best_f1  0.1235"],
            id="aligned-floats-rounded",
        ),
        pytest.param(
            {"splits": {"train": 8, "val": 2}, "sizes": [1, 2]},
            ["    splits:", "      train  8", "      val    2", "    sizes   1, 2"],
            id="nested-dict-indents-list-inline",
        ),
    ],
)
def test_result_lines(result: dict, lines: list[str]) -> None:
    assert result_lines(result) == lines


@pytest.mark.parametrize(
    "message, lines",
    [
        pytest.param("one line", ["> one line"], id="single"),
        pytest.param("head\n  a = 1\nb", ["> head", "    a = 1", "  b"], id="continuations-align"),
        pytest.param("", ["> "], id="empty"),
    ],
)
def test_indent_message(message: str, lines: list[str]) -> None:
    assert indent_message(message, "> ") == lines


def test_plain_progress_line_has_rate_elapsed_and_eta() -> None:
    p = PlainProgress("job 7")
    p.line(0, 10, "running")  # the first sample: no rate yet
    p.t0 -= 2.0  # two seconds later, 4 items done: 2/s, 3 s left
    line = p.line(4, 10, "running")
    assert line.startswith("job 7 running  4/10  2.00/s  elapsed 0:00:02")
    assert line.endswith("ETA 0:00:03")


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # output formatting; the backends are covered by the system tests


def _train_job() -> int:
    """A train job row whose LAST metric written is `epoch`, as the recipe writes them."""
    spec = {"kind": "train", "eval": {"metric": "region_f1"}}
    with session() as s:
        job = Job(kind="train", spec=spec, queue="gpu", state="succeeded", name="t")
        s.add(job)
        s.flush()
        s.add_all(
            [Metric(job_id=job.id, step=i, name="loss", value=2.0 / i) for i in (1, 2, 3)]
            + [
                Metric(job_id=job.id, step=3, name="val_region_f1", value=0.5),
                Metric(job_id=job.id, step=3, name="epoch", value=0.4545),
            ]
        )
        job.result = {"adapter": "jobs/1/adapter", "eval": {"region_f1": 0.5, "loss": 0.7}}
        s.add(JobEvent(job_id=job.id, message="preflight: micro-batch 8\n  weights 1.2 GiB"))
        return job.id


def test_status_shows_a_train_jobs_loss_and_eval_metric(vlmjobs_cli) -> None:
    job_id = _train_job()
    row = next(x for x in vlmjobs_cli("status").stdout.splitlines() if x.startswith(str(job_id)))
    assert "loss=0.6667@3 val_region_f1=0.5@3" in row and "epoch" not in row
    detail = vlmjobs_cli("status", str(job_id)).stdout
    assert "\n  result\n    adapter  jobs/1/adapter\n    eval:\n      region_f1  0.5\n" in detail
    lines = detail.splitlines()
    first = next(i for i, x in enumerate(lines) if "preflight: micro-batch 8" in x)
    assert lines[first + 1] == " " * lines[first].index("preflight") + "  weights 1.2 GiB"
    assert not ANSI.search(detail)  # not a terminal: no colour codes


def test_terminal_output_is_coloured_and_tabled(vlmjobs_cli, monkeypatch) -> None:
    job_id = _train_job()
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the output as a terminal
    table = vlmjobs_cli("status").stdout
    assert ANSI.search(table) and "succeeded" in ANSI.sub("", table)
    detail = ANSI.sub("", vlmjobs_cli("status", str(job_id)).stdout)
    assert "val_region_f1=0.5@3" in detail


@pytest.mark.slow
def test_wait_writes_plain_progress_lines_to_a_log(vlmjobs_cli, start_worker, tmp_path) -> None:
    start_worker(queues="cpu")
    cfg = tmp_path / "s.yaml"
    cfg.write_text("items: 6\nsleep_s: 0.3\n")
    res = vlmjobs_cli("submit", "sleepy", str(cfg), "--wait")
    assert res.exit_code == 0, res.stderr
    assert "\r" not in res.stderr and not ANSI.search(res.stderr)
    last = res.stderr.splitlines()[-1]
    assert last.startswith(f"job {res.stdout.strip()} succeeded  6/6  ") and "elapsed" in last


def test_schedule_show_json(vlmjobs_cli) -> None:
    assert vlmjobs_cli("schedule", "add", "tick", "sleepy", "--every", "1h").exit_code == 0
    shown = json.loads(vlmjobs_cli("schedule", "show", "tick", "--json").stdout)
    assert shown["name"] == "tick" and shown["every_s"] == 3600.0 and shown["kind"] == "sleepy"
    assert shown["next_run_at"] and shown["last_run_at"] is None
    assert [e["message"] for e in shown["events"]] == ["added: every 3600s"]
