"""The train recipe in-process on the tiny model (CPU, fp32): resume equals an uninterrupted run,
the adapter directory, preflight, and the schedule. The worker path is in test_train_e2e.py."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from vlmjobs.dev.build import make_model
from vlmjobs.errors import PreflightError
from vlmjobs.recipes.train import checkpoints as ckpt
from vlmjobs.recipes.train.data import load_data
from vlmjobs.recipes.train.preflight import plan_memory, preflight
from vlmjobs.recipes.train.recipe import lr_factor, pieces, run, track_best
from vlmjobs.specs.train import PreflightSpec, TrainSpec
from vlmjobs.worker.context import swap_in

T = TypeVar("T")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class LocalContext:
    """The JobContext protocol kept in memory: the recipe runs in this process, no database.

    ``stop_at_step``: should_stop() turns True once progress reached that step, like a
    cancel or a worker shutdown arriving mid-run.
    """

    def __init__(self, workdir: Path, stop_at_step: int | None = None) -> None:
        self.job_id, self.attempt, self.device = 1, 1, "cpu"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger("test.train")
        self.stop_at_step = stop_at_step
        self.done = 0
        self.total: int | None = None
        self.metric_rows: list[tuple[int | None, dict[str, float]]] = []
        self.events: list[str] = []
        self.checkpoints: dict[Path, tuple[int, dict[str, float], bool]] = {}

    def progress(self, done: int, total: int | None = None) -> None:
        self.done, self.total = done, total

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.metric_rows.append((step, dict(values)))

    def event(self, message: str, level: str = "info") -> None:
        self.events.append(message)

    def should_stop(self) -> bool:
        return self.stop_at_step is not None and self.done >= self.stop_at_step

    def record_checkpoint(
        self, step: int, path: Path, metrics: dict[str, float], is_best: bool = False
    ) -> None:
        self.checkpoints[path] = (step, metrics, is_best)

    def forget_checkpoint(self, path: Path) -> None:
        del self.checkpoints[path]

    def publish(self, tmp: Path, final: Path) -> Path:
        old = swap_in(tmp, final)  # the worker's renames, without its ownership check
        if old is not None:
            shutil.rmtree(old)
        return final

    def done_keys(self) -> set[str]:
        return set()

    def save_outputs(self, outputs: Any) -> int:
        raise AssertionError("train saves no outputs")

    def resident(self, key: str, factory: Callable[[], T]) -> T:
        return factory()

    def series(self, name: str) -> dict[int, float]:
        return {s: v[name] for s, v in self.metric_rows if name in v and s is not None}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


def write_boxes_jsonl(folder: Path, n: int) -> Path:
    """``n`` images with one coloured box each, as the seeds' prefix/suffix JSONL."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name, colour = list(COLOURS.items())[i % 3]
        w, h = 56 + 28 * (i % 4), 56 + 28 * (i % 2)  # several lengths, for grouping
        x, y = 4 + i % 7, 6 + i % 5
        image = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(image).rectangle([x, y, x + 20, y + 16], fill=colour)
        image.save(folder / f"{i:03d}.png")
        answer = json.dumps([{"bbox_2d": [x, y, x + 20, y + 16], "label": f"{name} box"}])
        lines.append({"image": f"{i:03d}.png", "prefix": "Find the box.", "suffix": answer})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def make_spec(tiny_dir: Path, data: Path, **overrides: Any) -> TrainSpec:
    fields: dict[str, Any] = {
        "model": {
            "path": str(tiny_dir),
            "quantization": "none",
            "dtype": "fp32",
            "min_pixels": 28 * 28,
            "max_pixels": 112 * 112,
        },
        "data": {"path": str(data), "val_fraction": 0.2, "task": "dense_caption"},
        "micro_batch_size": 2,
        "grad_accum": 2,
        "epochs": 2,
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "eval": {"every_steps": 2, "max_samples": 2, "max_new_tokens": 6},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "gradient_checkpointing": "none",
    }
    for key, value in overrides.items():
        fields[key] = {**fields.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainSpec.model_validate(fields)


def test_stop_and_resume_matches_an_uninterrupted_run(tiny_dir: Path, tmp_path: Path) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)  # 10 train -> 5 micro-batches -> 3 steps/epoch
    spec = make_spec(tiny_dir, data, eval={"generate": False})  # generation: the next test

    whole = LocalContext(tmp_path / "whole")
    result = run(spec, whole)
    assert result["steps"] == result["total_steps"] == 6

    first = LocalContext(tmp_path / "split", stop_at_step=3)  # stops after step 3 (an epoch end)
    stopped = run(spec, first)
    assert stopped == {"stopped": True, "steps": 3, "total_steps": 6}
    second = LocalContext(tmp_path / "split")
    second.checkpoints = first.checkpoints  # the database outlives an attempt
    resumed = run(spec, second)
    assert any(e.startswith("resumed from step-00000003") for e in second.events)
    assert resumed["steps"] == 6 and resumed["epochs_done"] == 2

    # The loss curve continues: steps 1-3 from the first attempt, 4-6 from the second, equal to
    # the uninterrupted run's (dropout is on: the RNG state came back with the checkpoint).
    expected = whole.series("loss")
    assert sorted(first.series("loss")) == [1, 2, 3]
    assert sorted(second.series("loss")) == [4, 5, 6]
    joined = {**first.series("loss"), **second.series("loss")}
    assert joined == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert second.series("val_loss") == pytest.approx(
        {s: v for s, v in whole.series("val_loss").items() if s > 3}, rel=1e-5
    )
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "split" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert set(second.checkpoints) == set(ckpt.list_checkpoints(tmp_path / "split" / "checkpoints"))


def test_adapter_dir_checkpoints_and_result(tiny_dir: Path, tmp_path: Path) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)
    spec = make_spec(tiny_dir, data, eval={"metric": "region_f1"})
    ctx = LocalContext(tmp_path / "job")
    result = run(spec, ctx)

    adapter = ctx.workdir / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in adapter.iterdir()
    }
    # The processor's settings travel with the adapter (transformers 5: processor_config.json).
    saved = json.loads((adapter / "processor_config.json").read_text())
    assert saved["image_processor"]["size"]["longest_edge"] == 112 * 112
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["base_model"] == str(tiny_dir)
    assert (manifest["min_pixels"], manifest["max_pixels"]) == (28 * 28, 112 * 112)
    assert result["adapter"] == str(adapter.resolve())  # outside any artifact root here
    # keep_last 2 + the best: the rows the context holds are exactly the dirs on disk.
    on_disk = set(ckpt.list_checkpoints(ctx.workdir / "checkpoints"))
    assert on_disk == set(ctx.checkpoints) and 2 <= len(on_disk) <= 3
    best = [p for p, (_, _, is_best) in ctx.checkpoints.items() if is_best]
    assert best and result["best"]["step"] in {ckpt.step_of(p) for p in best}
    for name in ("val_loss", "val_region_f1", "val_parse_rate", "lr", "grad_norm", "samples_per_s"):
        assert ctx.series(name), f"no {name} metric recorded"
    assert ctx.done == ctx.total == 6
    assert ctx.series("lr")[1] == pytest.approx(1e-2 / 2)  # step 1 ran at half the peak (warm-up)


def test_preflight_refuses_with_arithmetic_or_adjusts(tiny_dir: Path, tmp_path: Path) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 4)
    # Submit's preflight refuses (exit 2 through the CLI), arithmetic included.
    with pytest.raises(PreflightError, match=r"estimated peak GPU memory .*\n.*GiB"):
        preflight(make_spec(tiny_dir, data, preflight={"gpu_memory_gib": 0.01}))
    ok = make_spec(tiny_dir, data)
    train = load_data(ok).train
    refuse = ok.model_copy(update={"preflight": PreflightSpec(gpu_memory_gib=0.01)})
    with pytest.raises(PreflightError, match=r"exceeds preflight.gpu_memory_gib 0.01.*\n.*GiB"):
        plan_memory(refuse, train)

    # adjust: the budget of micro-batch 1 forces splitting a micro-batch of 8 until it fits.
    def estimate(mbs: int) -> float:
        return plan_memory(make_spec(tiny_dir, data, micro_batch_size=mbs), train)[1].total_gib

    budget = estimate(1)
    adjust = make_spec(
        tiny_dir,
        data,
        micro_batch_size=8,
        preflight={"gpu_memory_gib": budget, "on_exceed": "adjust"},
    )
    splits, chosen = plan_memory(adjust, train)
    assert splits > 1 and chosen.total_gib <= budget < estimate(8 // (splits // 2))
    # adjust cannot go below oom.min_micro_batch: then it refuses too.
    floor = adjust.model_copy(update={"oom": adjust.oom.model_copy(update={"min_micro_batch": 8})})
    with pytest.raises(PreflightError, match="micro-batch 8"):
        plan_memory(floor, train)


@pytest.mark.parametrize(
    "step, warmup, total, schedule, expected",
    [
        (0, 4, 10, "cosine", 0.2),  # case: warm-up starts above zero
        (3, 4, 10, "cosine", 0.8),  # case: last warm-up step
        (4, 4, 10, "cosine", 1.0),  # case: peak after warm-up
        (7, 4, 10, "cosine", 0.5),  # case: cosine halfway
        (10, 4, 10, "cosine", 0.0),  # case: cosine ends at zero
        (7, 4, 10, "linear", 0.5),  # case: linear halfway
        (9, 0, 10, "constant", 1.0),  # case: constant, no warm-up
        (12, 0, 10, "linear", 0.0),  # case: past the end stays at zero
    ],
)
def test_lr_factor(step: int, warmup: int, total: int, schedule: str, expected: float) -> None:
    assert lr_factor(step, warmup, total, schedule) == pytest.approx(expected)


@pytest.mark.parametrize(
    "batch, splits, expected",
    [
        ([1, 2, 3, 4], 1, [[1, 2, 3, 4]]),  # case: no split
        ([1, 2, 3, 4], 2, [[1, 2], [3, 4]]),  # case: halves
        ([1, 2, 3], 2, [[1, 2], [3]]),  # case: odd
        ([1], 4, [[1]]),  # case: more splits than samples
    ],
)
def test_pieces(batch: list[int], splits: int, expected: list[list[int]]) -> None:
    assert pieces(batch, splits) == expected


@pytest.mark.parametrize(
    "metric, values, best_step, since",
    [
        ("loss", [3.0, 2.0, 2.5, 2.1], 2, 2),  # case: lower is better
        ("token_accuracy", [0.1, 0.3, 0.2], 2, 1),  # case: higher is better
        ("loss", [1.0, 1.0], 1, 1),  # case: a tie is no improvement
    ],
)
def test_track_best(
    tiny_dir: Path, tmp_path: Path, metric: str, values: list[float], best_step: int, since: int
) -> None:
    spec = make_spec(tiny_dir, write_boxes_jsonl(tmp_path, 2), eval={"metric": metric})
    state = ckpt.TrainState()
    flags = []
    for step, value in enumerate(values, 1):
        state.step = step
        flags.append(track_best(spec, state, {metric: value}))
    assert (state.best_step, state.evals_since_best) == (best_step, since)
    assert flags[0] and flags.count(True) == len({s for s in [best_step, 1]})


def test_early_stopping_ends_the_run(tiny_dir: Path, tmp_path: Path) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)
    # A learning rate of ~0 cannot improve the loss: patience 1 stops at the second eval.
    spec = make_spec(
        tiny_dir,
        data,
        max_steps=10,
        optim={"lr": 1e-30},
        eval={"every_steps": 1, "generate": False, "early_stopping_patience": 1},
        checkpoint={"every_steps": 100},
    )
    ctx = LocalContext(tmp_path / "job")
    result = run(spec, ctx)
    assert result["steps"] == 2 and result["total_steps"] == 10
    assert any(e.startswith("early stop at step 2") for e in ctx.events)
    assert (ctx.workdir / "adapter" / "adapter_model.safetensors").is_file()


def test_prefetched_batches_equal_inline_collation(tiny_dir: Path, tmp_path: Path) -> None:
    from vlmjobs.recipes.train.data import Prefetcher, collate
    from vlmjobs.vision.model import load_processor

    spec = make_spec(tiny_dir, write_boxes_jsonl(tmp_path / "data", 6))
    train = load_data(spec).train
    processor = load_processor(tiny_dir, min_pixels=28 * 28, max_pixels=112 * 112)
    prefetch = Prefetcher(processor, train)
    try:
        prefetch.ahead([[0, 1], [2, 3]])
        for part in ([0, 1], [2, 3], [4]):  # two collated ahead, one inline
            got = prefetch.take(part, "cpu")
            want = collate(processor, [train[i] for i in part], "cpu")
            assert got.keys() == want.keys()
            for key, value in want.items():
                torch.testing.assert_close(got[key], value, msg=key)
        assert not prefetch._pending  # every batch asked for ahead was taken
    finally:
        prefetch.close()


def test_preflight_counts_text_with_the_models_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from vlmjobs.recipes.train.preflight import longest_text_tokens

    spec = make_spec(tiny_dir, write_boxes_jsonl(tmp_path / "data", 6))
    train = load_data(spec).train
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    exact = max(
        len(tokenizer(f"{s.system or ''}\n{s.prompt}\n{s.answer}")["input_ids"]) for s in train
    )
    assert longest_text_tokens(spec, train) == exact + 30
    # No tokenizer next to the weights: a dense characters / 2 guess, never below the truth.
    bare = tmp_path / "bare"
    bare.mkdir()
    guess = longest_text_tokens(spec.model_copy(update={"model": spec.model.model_copy(
        update={"path": str(bare)})}), train)  # fmt: skip
    assert guess >= exact
