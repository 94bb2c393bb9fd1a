"""`vlmjobs dev quantize MODEL OUT --nf4`: a saved nf4 checkpoint loads without quantizing
again, gives the same outputs as quantizing on load, and trains (CPU, bitsandbytes)."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from vlmjobs.cli.main import cli
from vlmjobs.dev.build import make_model
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("quantize")
    base = make_model(root / "base", "tiny", seed=0)
    result = CliRunner().invoke(cli, ["dev", "quantize", str(base), str(root / "nf4"), "--nf4"])
    assert result.exit_code == 0, result.output
    return base, root / "nf4"


@pytest.fixture
def quantize_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Counts bitsandbytes' 4-bit quantization calls (the real function still runs)."""
    calls: list[tuple] = []
    real = bnb.functional.quantize_4bit

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(bnb.functional, "quantize_4bit", counting)
    return calls


def _first_logits(model, processor) -> torch.Tensor:
    batch = build_inputs(processor, [Image.new("RGB", (90, 70), "red")], ["Describe."])
    with torch.no_grad():
        return model(**batch).logits[0, -1].float()


def test_saved_nf4_holds_packed_language_weights(models) -> None:
    _, nf4 = models
    with safe_open(nf4 / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        q = "model.layers.0.self_attn.q_proj.weight"  # the checkpoint format's names
        assert f.get_tensor(q).dtype == torch.uint8  # two 4-bit codes per byte
        assert any(k.startswith(q + ".quant_state") for k in keys)
        # The vision tower is left in bf16 (its quantization costs accuracy for little memory).
        assert f.get_tensor("visual.blocks.0.attn.qkv.weight").dtype == torch.bfloat16


def test_loading_it_does_not_quantize_and_matches_quantize_on_load(models, quantize_calls):
    base, nf4 = models
    on_load, processor = load_model(ModelSpec(path=str(base), quantization="nf4"))
    assert quantize_calls, "quantize-on-load should have called bitsandbytes"
    quantize_calls.clear()
    saved, _ = load_model(ModelSpec(path=str(nf4), quantization="nf4"))
    assert quantize_calls == []
    layer = saved.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    torch.testing.assert_close(_first_logits(saved, processor), _first_logits(on_load, processor))


def test_a_qlora_step_runs_on_the_saved_checkpoint(models) -> None:
    from peft import LoraConfig, get_peft_model

    _, nf4 = models
    model, processor = load_model(ModelSpec(path=str(nf4), quantization="nf4"), for_training=True)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    batch = build_inputs(processor, [Image.new("RGB", (90, 70))], ["hi"], answers=["[]"])
    loss = model(**batch).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert np.isfinite(loss.item()) and all(g is not None for g in grads)


@pytest.mark.parametrize(
    "args,message",
    [
        pytest.param(["NF4", "--nf4"], "already quantized", id="already-quantized"),
        pytest.param(["BASE", "BASE"], "Missing option '--nf4'", id="no-scheme"),
        pytest.param(["BASE", "NF4", "--nf4"], "exists", id="out-exists"),
    ],
)
def test_bad_calls_exit_2_saying_why(models, tmp_path: Path, args, message) -> None:
    base, nf4 = models
    names = {"BASE": str(base), "NF4": str(nf4)}
    argv = [names.get(a, a) for a in args]
    if args[0] == "NF4":
        argv = [str(nf4), str(tmp_path / "again"), "--nf4"]
    result = CliRunner().invoke(cli, ["dev", "quantize", *argv])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize(
    "device,for_training,message",
    [
        pytest.param("cpu", False, "AWQ kernels run on CUDA", id="cpu-worker"),
        pytest.param("cpu", True, "train from the bf16 checkpoint", id="training"),
    ],
)
def test_awq_checkpoints_get_a_clear_message(models, tmp_path, device, for_training, message):
    """Qwen2.5-VL-3B-Instruct-AWQ's quantization_config on the tiny model's config."""
    import json
    import shutil

    from vlmjobs.errors import ModelLoadError

    base, _ = models
    awq = tmp_path / "awq"
    shutil.copytree(base, awq)
    config = json.loads((awq / "config.json").read_text())
    config["quantization_config"] = {"bits": 4, "group_size": 128, "quant_method": "awq",
                                     "version": "gemm", "zero_point": True}  # fmt: skip
    (awq / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load_model(ModelSpec(path=str(awq)), device=device, for_training=for_training)


def test_prequantize_quantizes_once_into_the_artifact_root(
    models, quantize_calls, tmp_path, monkeypatch
):
    from pydantic import ValidationError

    base, _ = models
    monkeypatch.setenv("VLMJOBS_ARTIFACTS", str(tmp_path / "artifacts"))
    spec = ModelSpec(path=str(base), quantization="nf4", prequantize=True)
    first, processor = load_model(spec)
    assert quantize_calls, "the first load quantizes"
    cached = list((tmp_path / "artifacts" / "quantized").iterdir())
    assert [p.name.startswith("base-nf4-") for p in cached] == [True]
    quantize_calls.clear()
    again, _ = load_model(spec)  # a later job, or another worker on the shared root
    assert quantize_calls == []
    torch.testing.assert_close(_first_logits(again, processor), _first_logits(first, processor))
    with pytest.raises(ValidationError, match="prequantize needs quantization: nf4"):
        ModelSpec(path=str(base), prequantize=True)
