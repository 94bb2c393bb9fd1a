"""Training you can follow: the job log's step and eval lines, and TensorBoard event files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from test_train_recipe import LocalContext, make_spec, write_boxes_jsonl

from vlmjobs.dev.build import make_model
from vlmjobs.recipes.train.recipe import run
from vlmjobs.recipes.train.report import duration, eval_line, step_line

VALUES = {"loss": 1.23456, "lr": 2e-4, "grad_norm": 0.8712, "samples_per_s": 12.34, "epoch": 0.5}


@pytest.mark.parametrize(
    "seconds, text",
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(42.4, "42s", id="seconds"),
        pytest.param(75.2, "1m15s", id="minutes"),
        pytest.param(3725, "1h02m", id="hours"),
        pytest.param(-3, "0s", id="negative-clamped"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "values, eta, text",
    [
        pytest.param(
            VALUES,
            65,
            "step 40/120 loss 1.2346 lr 2.00e-04 grad_norm 0.871 samples/s 12.3 eta 1m05s",
            id="cpu",
        ),
        pytest.param(
            {**VALUES, "gpu_mem_gib": 7.356},
            None,
            "step 40/120 loss 1.2346 lr 2.00e-04 grad_norm 0.871 samples/s 12.3 "
            "gpu_mem 7.36 GiB eta ?",
            id="gpu-first-step-no-eta",
        ),
    ],
)
def test_step_line(values: dict[str, float], eta: float | None, text: str) -> None:
    assert step_line(40, 120, values, eta) == text


def test_eval_line_sorts_metrics() -> None:
    line = eval_line(12, {"region_f1": 0.5, "loss": 0.91234})
    assert line == "eval step 12: loss 0.9123 region_f1 0.5000"


@pytest.mark.slow
def test_recipe_logs_every_n_steps_and_writes_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny = make_model(tmp_path / "tiny", "tiny", seed=0)
    data = write_boxes_jsonl(tmp_path / "data", 12)  # 10 train: 3 steps an epoch, 6 in all
    spec = make_spec(tiny, data, log_every_steps=4, report_to=["tensorboard"])
    ctx = LocalContext(tmp_path / "job")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    ctx.log.addHandler(handler)
    ctx.log.setLevel(logging.INFO)
    try:
        run(spec, ctx)
    finally:
        ctx.log.removeHandler(handler)

    steps = [line for line in lines if line.startswith("step ")]
    # Every 4th step, and the last one whatever the interval.
    assert [line.split()[1] for line in steps] == ["4/6", "6/6"]
    pattern = r"step 4/6 loss (\S+) lr \S+ grad_norm \S+ samples/s \S+ eta \d+s"
    match = re.fullmatch(pattern, steps[0])
    assert match and float(match[1]) == pytest.approx(ctx.series("loss")[4], abs=1e-4)
    assert steps[1].endswith("eta 0s")
    evals = [line for line in lines if line.startswith("eval step ")]
    assert [line.split(":")[0] for line in evals] == [f"eval step {s}" for s in (2, 3, 4, 6)]

    # TensorBoard: the same numbers, offline, in the job's folder.
    (events,) = (ctx.workdir / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert loss == pytest.approx(ctx.series("loss"), rel=1e-5)
    val = {e.step: e.value for e in acc.Scalars("val/loss")}
    assert val == pytest.approx(ctx.series("val_loss"), rel=1e-5)
