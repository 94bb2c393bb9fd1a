"""The infer memory preflight: the estimate against measured peaks, refuse / adjust, submit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlmjobs.dev.build import make_model, model_config
from vlmjobs.errors import PreflightError
from vlmjobs.recipes.infer.memory import estimate_infer_memory, plan_batch
from vlmjobs.recipes.train.memory import architecture
from vlmjobs.specs.infer import InferSpec

PROMPT_90_TOKENS = "x" * 120  # text_tokens: 120 / 2 + 30 = 90, the benchmark's prompt
PIXELS_999_TOKENS = 999 * 28 * 28  # the benchmark's 1036x756 image: 999 image tokens


@pytest.fixture(scope="module")
def arch_3b() -> dict[str, int]:
    return architecture(model_config("3b", vocab_size=151936))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny") / "model", arch="tiny", seed=0)


def spec_for(model: str, images: Path, **fields: object) -> InferSpec:
    return InferSpec.model_validate({"model": {"path": model}, "inputs": [str(images)], **fields})


@pytest.mark.parametrize(
    "arch, quantization, batch, measured_gib",
    [
        ("3b", "none", 48, 10.40),  # case: 3B bf16, static engine (H100, BENCHMARKS.md)
        ("7b", "nf4", 32, 9.90),  # case: 7B nf4 while generating (H100, BENCHMARKS.md)
    ],
)
def test_estimate_is_within_5_percent_of_measured_peaks(
    tmp_path, arch: str, quantization: str, batch: int, measured_gib: float
) -> None:
    model = {"path": "Qwen/not-local", "quantization": quantization}
    spec = InferSpec.model_validate(
        {"model": model, "inputs": [str(tmp_path)], "batch_size": batch, "max_new_tokens": 256}
    )
    estimate = estimate_infer_memory(
        spec,
        batch=batch,
        max_pixels=PIXELS_999_TOKENS,
        prompt=PROMPT_90_TOKENS,
        arch=architecture(model_config(arch, vocab_size=151936)),
    )
    assert estimate.allocated_gib == pytest.approx(measured_gib, rel=0.05)
    names = [line.split(":")[0] for line in estimate.lines]
    assert names[1] == "KV cache" and "1,408 slots" in estimate.lines[1]  # the engine's slots


def test_kv_cache_and_hf_prefill_grow_with_the_batch(arch_3b, tmp_path) -> None:
    def gib(batch: int, engine: str) -> float:
        spec = spec_for("Qwen/not-local", tmp_path, max_new_tokens=256, engine=engine)
        return estimate_infer_memory(
            spec, batch=batch, max_pixels=PIXELS_999_TOKENS, prompt=PROMPT_90_TOKENS, arch=arch_3b
        ).allocated_gib

    # 48 more rows of 1,408 slots x 36 layers x 2 x 256 x 2 B = 2.32 GiB
    assert gib(96, "static") - gib(48, "static") == pytest.approx(2.32, abs=0.02)
    # transformers' generate prefills all rows at once: far more than 4 at a time
    assert gib(16, "hf") > gib(16, "static") + 2


def test_refuse_shows_the_arithmetic_and_adjust_picks_the_largest_batch_that_fits(
    arch_3b, tmp_path
) -> None:
    args = dict(max_pixels=PIXELS_999_TOKENS, prompt=PROMPT_90_TOKENS, arch=arch_3b)
    refuse = spec_for(
        "Qwen/not-local", tmp_path, batch_size=96, max_new_tokens=256,
        preflight={"gpu_memory_gib": 11.5},
    )  # fmt: skip
    with pytest.raises(
        PreflightError, match=r"at batch 96 exceeds .* 11.5 .*\n  weights: .*\n  KV cache: 96 rows"
    ):
        plan_batch(refuse, **args)

    adjust = refuse.model_copy(
        update={"preflight": refuse.preflight.model_copy(update={"on_exceed": "adjust"})}
    )
    batch, estimate = plan_batch(adjust, **args)
    assert 1 < batch < 96 and estimate.total_gib <= 11.5
    over = estimate_infer_memory(adjust, batch=batch + 1, **args)
    assert over.total_gib > 11.5  # the largest that fits, not just one that fits

    tiny_card = adjust.model_copy(
        update={"preflight": adjust.preflight.model_copy(update={"gpu_memory_gib": 4.0})}
    )
    with pytest.raises(PreflightError, match="at batch 1 exceeds"):  # weights alone: 7 GiB
        plan_batch(tiny_card, **args)


def test_submit_refuses_with_exit_2_and_the_arithmetic(vlmjobs_cli, tiny_dir, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    spec = {"kind": "infer", "model": {"path": str(tiny_dir)}, "inputs": [str(images)]}
    from vlmjobs.recipes.infer.memory import preflight

    preflight(spec_for(str(tiny_dir), images))  # the tiny model fits the default 12 GiB
    with pytest.raises(PreflightError, match="estimated peak GPU memory"):
        preflight(spec_for(str(tiny_dir), images, preflight={"gpu_memory_gib": 0.001}))
    path = tmp_path / "infer.yaml"
    path.write_text(yaml.safe_dump({**spec, "preflight": {"gpu_memory_gib": 0.001}}))
    result = vlmjobs_cli("submit", "infer", str(path))
    assert result.exit_code == 2, result.output
    assert "KV cache" in result.output + result.stderr


class Events:
    """The one part of the JobContext protocol the worker-side preflight uses."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def event(self, message: str, level: str = "info") -> None:
        self.seen.append(message)


def test_worker_preflight_adjusts_the_batch_with_the_plans_pixels(tiny_dir, tmp_path) -> None:
    from vlmjobs.recipes.infer.plan import make_plan
    from vlmjobs.recipes.infer.recipe import preflight

    spec = spec_for(str(tiny_dir), tmp_path, batch_size=8)
    plan = make_plan(spec)
    prompt = (plan.system or "You are a helpful assistant.") + plan.prompt
    budget = plan_batch(
        spec.model_copy(update={"batch_size": 2}), max_pixels=plan.max_pixels, prompt=prompt
    )[1].total_gib
    adjust = spec_for(
        str(tiny_dir), tmp_path, batch_size=8,
        preflight={"gpu_memory_gib": budget, "on_exceed": "adjust"},
    )  # fmt: skip
    events = Events()
    assert preflight(adjust, plan, events).batch_size == 2  # type: ignore[arg-type]
    assert events.seen[0].startswith("preflight: batch 2 (adjusted from 8)")
    assert "KV cache: 2 rows" in events.seen[0]


@pytest.mark.parametrize(("arch", "factor"), [("tiny-qwen2vl", 28), ("tiny-qwen3vl", 32)])
def test_image_tokens_follow_the_familys_frame(tmp_path: Path, arch: str, factor: int) -> None:
    """max_pixels / 28^2 over-counted Qwen3-VL's (and Qwen3.5's) 32 px tokens by 31%."""
    from vlmjobs.dev.build_family import model_config as family_config

    config = architecture(family_config(arch))
    assert config["factor"] == factor
    spec = spec_for("Qwen/not-local", tmp_path, max_new_tokens=64)
    found = estimate_infer_memory(spec, batch=2, max_pixels=factor * factor * 400, prompt="",
                                  arch=config)  # fmt: skip
    assert "(430 prompt + 64 new" in found.lines[1]  # 400 image tokens + 30 for the template
    clip = estimate_infer_memory(spec, batch=1, max_pixels=0, prompt="", arch=config,
                                 image_tokens=1000)  # fmt: skip
    assert "(1,030 prompt + 64 new" in clip.lines[1]
