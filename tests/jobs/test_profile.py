"""`profile:` in a train or infer spec: torch.profiler around the asked steps, written
under the job's work dir (profile/ops.txt, profile/trace.json), nothing when the window
is never reached or the attempt stops inside it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_recipe import LocalContext, make_spec, tiny_dir, write_boxes_jsonl  # noqa: F401

from vlmjobs.recipes.train.recipe import run as train

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """In-process training on 2 shared cores: one torch thread is faster; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class InferContext(LocalContext):
    """LocalContext that keeps the infer recipe's output rows in memory."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.outputs: list[Any] = []

    def save_outputs(self, outputs: Any) -> int:
        self.outputs += list(outputs)
        return len(outputs)

    def add_sources(self, aliases: Any) -> None:
        pass

    def output_counts(self) -> dict[str, int]:
        return {"ok": sum(o.status == "ok" for o in self.outputs)}


def _phases(ops: str) -> dict[str, int]:
    """The phase table's counts: name -> how many times the range ran."""
    table = ops.split("phases (vlmjobs.* ranges)")[1].splitlines()[1:]
    return {line.split()[0]: int(line.split()[1]) for line in table if line.strip()}


def test_train_profiles_the_asked_steps(tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write_boxes_jsonl(tmp_path / "data", 12)  # 9 train samples: 3 steps an epoch
    spec = make_spec(tiny_dir, data, profile={"start_step": 2, "steps": 2})
    ctx = LocalContext(tmp_path / "job")
    train(spec, ctx)

    ops = (ctx.workdir / "profile" / "ops.txt").read_text()
    assert ops.startswith("steps 2-3, sorted by self_cpu_time_total")
    assert "aten::" in ops  # the op table itself
    phases = _phases(ops)
    # Micro-batches of 2 over 9 samples, 2 a step: step 2 runs two, step 3 the epoch's last.
    assert phases["vlmjobs.train.forward_loss"] == phases["vlmjobs.train.backward"] == 3
    assert phases["vlmjobs.train.optimizer"] == phases["vlmjobs.train.record"] == 2
    trace = json.loads((ctx.workdir / "profile" / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"vlmjobs.train.forward_loss", "vlmjobs.train.optimizer"} <= names
    assert "profiled steps 2-3: profile/ops.txt, profile/trace.json (Perfetto)" in ctx.events
    assert not list(ctx.workdir.glob(".tmp-*"))


@pytest.mark.parametrize(
    ("window", "stop_at"),
    [({"start_step": 50}, None), ({"start_step": 2, "steps": 5}, 3)],
    ids=["never-reached", "stopped-inside"],
)
def test_train_writes_no_profile_outside_or_cut_short(
    tiny_dir: Path,  # noqa: F811
    tmp_path: Path,
    window: dict[str, int],
    stop_at: int | None,
) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)
    spec = make_spec(tiny_dir, data, profile=window)  # 2 epochs: 6 steps
    ctx = LocalContext(tmp_path / "job", stop_at_step=stop_at)
    result = train(spec, ctx)
    assert result.get("stopped", False) == (stop_at is not None)
    assert not (ctx.workdir / "profile").exists() and not list(ctx.workdir.glob(".tmp-*"))
    assert not any(e.startswith("profiled") for e in ctx.events)


def test_a_window_past_the_last_step_writes_the_steps_that_ran(
    tiny_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)
    spec = make_spec(tiny_dir, data, profile={"start_step": 5, "steps": 10})  # 6 steps in all
    ctx = LocalContext(tmp_path / "job")
    train(spec, ctx)
    ops = (ctx.workdir / "profile" / "ops.txt").read_text()
    assert ops.startswith("steps 5-6, sorted by")
    assert _phases(ops)["vlmjobs.train.optimizer"] == 2
    assert "profiled steps 5-6: profile/ops.txt, profile/trace.json (Perfetto)" in ctx.events


def test_infer_profile_names_prefill_vision_and_decode(
    tiny_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from vlmjobs.recipes.infer.recipe import run as infer
    from vlmjobs.specs.infer import InferSpec

    data = write_boxes_jsonl(tmp_path / "data", 6)
    spec = InferSpec.model_validate(
        {
            "model": {
                "path": str(tiny_dir),
                "dtype": "fp32",
                "min_pixels": 28 * 28,
                "max_pixels": 112 * 112,
            },
            "inputs": [str(data.parent)],
            "batch_size": 2,
            "max_new_tokens": 4,
            "engine": "static",
            "profile": {"start_step": 2, "steps": 1},
        }
    )
    ctx = InferContext(tmp_path / "job")
    result = infer(spec, ctx)
    assert result["ok"] == 6

    ops = (ctx.workdir / "profile" / "ops.txt").read_text()
    assert ops.startswith("steps 2-2, sorted by")
    phases = _phases(ops)
    assert phases["vlmjobs.infer.generate"] == phases["vlmjobs.infer.save"] == 1  # one batch
    assert phases["vlmjobs.generate.prefill"] == phases["vlmjobs.generate.decode"] == 1
    assert phases["vlmjobs.generate.vision_tower"] >= 1  # once per prefill slice
