"""The train preflight sizes a Qwen3-VL-4B from its config alone: the pinned budget fits a
12 GB card at micro-batch 8; Qwen3-VL's own processor budget (up to 16,384 tokens per image)
does not, and the refusal shows the arithmetic in Qwen3-VL's units (32 px tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmjobs.dev.build import make_tokenizer
from vlmjobs.dev.build_family import model_config
from vlmjobs.errors import DataError, PreflightError
from vlmjobs.recipes.train.preflight import preflight
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.family import FAMILIES

QWEN3 = FAMILIES["qwen3_vl"]


@pytest.fixture(scope="module")
def qwen3_4b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.json + tokenizer of Qwen3-VL-4B, no weights: all the preflight reads."""
    path = tmp_path_factory.mktemp("qwen3vl-4b")
    model_config("qwen3vl-4b").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def photo_data(tmp_path: Path) -> Path:
    Image.new("RGB", (2000, 1500), "white").save(tmp_path / "photo.png")
    record = {"image": "photo.png", "prefix": "Locate every object.", "suffix": "[]" * 200}
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    return tmp_path / "data.jsonl"


def spec(model: Path, data: Path, min_pixels: int, max_pixels: int) -> TrainSpec:
    """The spec, through the preflight submit runs (a refusal raises PreflightError/DataError)."""
    validated = TrainSpec.model_validate({
        "model": {"path": str(model), "quantization": "nf4",
                  "min_pixels": min_pixels, "max_pixels": max_pixels},
        "data": {"path": str(data), "val_fraction": 0},
        "micro_batch_size": 8,
    })  # fmt: skip
    preflight(validated)
    return validated


def test_the_pinned_budget_fits_a_12_gb_card(qwen3_4b: Path, photo_data: Path) -> None:
    spec(qwen3_4b, photo_data, QWEN3.default_min_pixels, QWEN3.default_max_pixels)


def test_the_processors_own_budget_is_refused_with_its_arithmetic(
    qwen3_4b: Path, photo_data: Path
) -> None:
    processor_default = 16384 * QWEN3.factor**2  # Qwen3-VL's preprocessor_config longest_edge
    with pytest.raises(PreflightError) as caught:
        spec(qwen3_4b, photo_data, 65536, processor_default)
    message = str(caught.value)
    # 2000x1500 in 32 px tokens: 62 x 47 (in 28 px tokens it would be 71 x 54 = 3,834).
    assert "exceeds preflight.gpu_memory_gib 12.0 (largest image 2914 tokens" in message
    # Qwen3-VL-4B's sizes: 36 layers of 2,560; patches of 3 x 2 x 16 x 16 values.
    assert "x 36 layers x 5120 B" in message and "patches x 1536 x 2 B" in message
    assert "card needs:" in message and "lower micro_batch_size or model.max_pixels" in message


def test_data_cleaned_for_another_family_is_refused(qwen3_4b: Path, tmp_path: Path) -> None:
    from vlmjobs.vision.manifest import Manifest

    cleaned = tmp_path / "cleaned"  # what a clean job wrote for Qwen2.5-VL (the default family)
    Manifest(base_model=None, min_pixels=QWEN3.default_min_pixels,
             max_pixels=QWEN3.default_max_pixels, task="dense_caption",
             prompt="Locate every object.").write(cleaned)  # fmt: skip
    (cleaned / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="cleaned for model family 'qwen2_5_vl'.*Qwen3-VL"):
        spec(qwen3_4b, cleaned, QWEN3.default_min_pixels, QWEN3.default_max_pixels)
