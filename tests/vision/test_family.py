"""Model families: the config decides; frames round-trip per family; smart_resize equals
each family's transformers image processor (PIL backend, and torchvision where it works)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmjobs.errors import ModelLoadError
from vlmjobs.vision import frames
from vlmjobs.vision.family import FAMILIES, family_of, get_family
from vlmjobs.vision.manifest import Manifest, convention_for
from vlmjobs.vision.model import has_torchvision
from vlmjobs.vision.parse import format_regions, parse_regions

FAMILY_NAMES = sorted(FAMILIES)


@pytest.mark.parametrize(
    "model_type,factor,convention",
    [
        pytest.param("qwen2_vl", 28, "1000", id="qwen2-vl"),
        pytest.param("qwen2_5_vl", 28, "absolute", id="qwen2.5-vl"),
        pytest.param("qwen3_vl", 32, "1000", id="qwen3-vl"),
        pytest.param("qwen3_vl_moe", 32, "1000", id="qwen3-vl-moe"),
        pytest.param("qwen3_5", 32, "1000", id="qwen3.5"),
    ],
)
def test_config_model_type_decides_the_family(tmp_path, model_type, factor, convention):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    family = family_of(tmp_path)
    assert (family.name, family.factor, family.convention) == (model_type, factor, convention)
    # Pinned budgets: 256..1280 visual tokens, never the processor's 16,384.
    assert family.default_max_pixels // factor**2 == 1280
    assert family.load_class().__name__ == family.model_class


@pytest.mark.parametrize(
    "config,message",
    [
        pytest.param({"model_type": "llava"}, "model_type 'llava'", id="other-model"),
        pytest.param({}, "model_type None", id="no-model-type"),
        pytest.param(None, "cannot read", id="no-config"),
    ],
)
def test_unknown_checkpoints_are_named(tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        family_of(tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        get_family("qwen9_vl")


# Image sizes from thumbnails to large photos, and aspect ratios up to the 200 limit.
sizes = st.tuples(st.integers(1, 6000), st.integers(1, 6000)).filter(
    lambda s: max(s) / min(s) <= frames.MAX_ASPECT
)
extreme = st.integers(1, 40).flatmap(
    lambda short: st.tuples(st.just(short), st.integers(short * 100, short * 200))
)
budgets = st.sampled_from([(256, 1280), (4, 64), (1, 1), (1280, 1280), (16, 16384)])


def _boxes(data: st.DataObject, size: tuple[int, int], min_side: np.ndarray) -> np.ndarray:
    """1-6 boxes inside the image, each side at least ``min_side`` (w, h) px."""
    rows = []
    for _ in range(data.draw(st.integers(1, 6))):
        row = []
        for axis in (0, 1):
            lo = data.draw(st.floats(0, size[axis] - min_side[axis]))
            row.append((lo, data.draw(st.floats(lo + min_side[axis], size[axis]))))
        rows.append([row[0][0], row[1][0], row[0][1], row[1][1]])
    return np.array(rows)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(sizes, extreme, extreme.map(lambda s: s[::-1])), budget=budgets, data=st.data()
)
def test_train_to_infer_round_trips_for_every_family(name, size, budget, data):
    family = FAMILIES[name]
    lo, hi = budget[0] * family.factor**2, budget[1] * family.factor**2
    frame = family.input_size(size, lo, hi)
    assert frame[0] % family.factor == 0 and frame[1] % family.factor == 0
    # Half a unit of what the model writes (a pixel of the frame, or 1/1000), in original px.
    unit = np.array(frame if family.convention == "absolute" else (1000, 1000), dtype=float)
    tolerance = 0.5 * np.array(size) / unit + 1e-9
    boxes = _boxes(data, size, 2 * tolerance + 1e-6)
    # Float conversions are exact inverses (what clean writes, what infer reads back).
    there = frames.to_model_frame(boxes, size, frame, family.convention)
    back = frames.from_model_frame(there, frame, size, family.convention)
    np.testing.assert_allclose(back, boxes, rtol=1e-12, atol=1e-9)
    # Through the target text (integers) and the parser: every box comes back, off by at
    # most half a unit per coordinate.
    text = format_regions(there, [f"r{i}" for i in range(len(boxes))])
    parsed = parse_regions(text, input_size=frame, image_size=size, convention=family.convention)
    assert parsed.regions.phrases == [f"r{i}" for i in range(len(boxes))]
    assert np.all(np.abs(parsed.regions.boxes - boxes) <= np.tile(tolerance, 2))


def test_manifest_carries_family_and_convention(tmp_path):
    family = FAMILIES["qwen3_vl"]
    m = Manifest(
        base_model=None,
        min_pixels=family.default_min_pixels,
        max_pixels=family.default_max_pixels,
        family=family.name,
        convention=convention_for(family),
        task="dense_caption",
        prompt="Locate every object.",
    )
    back = Manifest.read(m.write(tmp_path))
    assert (back.family, back.frame_convention) == ("qwen3_vl", "1000")
    assert back.input_size((1000, 500)) == family.input_size(
        (1000, 500), back.min_pixels, back.max_pixels
    )
    legacy = json.loads((tmp_path / "manifest.json").read_text())
    del legacy["family"], legacy["convention"]  # written before families existed
    (tmp_path / "manifest.json").write_text(json.dumps(legacy))
    assert Manifest.read(tmp_path).family == "qwen2_5_vl"


def _pil_processor(family, lo: int, hi: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil(
        patch_size=family.patch_size, merge_size=family.merge_size, min_pixels=lo, max_pixels=hi
    )


def _torchvision_processor(family, lo: int, hi: int):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        patch_size=family.patch_size, merge_size=family.merge_size, min_pixels=lo, max_pixels=hi
    )


BACKENDS = [
    pytest.param(_pil_processor, id="pil"),
    pytest.param(
        _torchvision_processor,
        id="torchvision",
        marks=pytest.mark.skipif(
            not has_torchvision(),
            reason="torchvision does not import beside this torch (a PyPI build beside a CPU "
            "torch fails with 'operator torchvision::nms does not exist')",
        ),
    ),
]
# Small budgets keep each processor call cheap; shapes still cover scale-up and scale-down.
small_sizes = st.one_of(
    st.tuples(st.integers(1, 700), st.integers(1, 700)),
    st.integers(1, 6).flatmap(lambda s: st.tuples(st.just(s), st.integers(s * 100, s * 200))),
).filter(lambda s: max(s) / min(s) <= frames.MAX_ASPECT)


@pytest.mark.parametrize("make", BACKENDS)
@pytest.mark.parametrize("name", FAMILY_NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=small_sizes, budget=st.sampled_from([(4, 64), (1, 16), (64, 256)]))
def test_smart_resize_equals_the_family_image_processor(make, name, size, budget):
    family = FAMILIES[name]
    lo, hi = budget[0] * family.factor**2, budget[1] * family.factor**2
    processor = make(family, lo, hi)
    out = processor(images=[Image.new("RGB", size)], return_tensors="pt")
    t, gh, gw = out["image_grid_thw"][0].tolist()
    assert (gw * family.patch_size, gh * family.patch_size) == family.input_size(size, lo, hi)
    assert out["pixel_values"].shape[0] == gh * gw


def test_family_names_are_listed_once() -> None:
    """clean's spec offers exactly the families the family layer knows."""
    from typing import get_args

    from vlmjobs.specs.clean import CleanSpec
    from vlmjobs.vision.family import FAMILIES, FamilyName

    assert set(get_args(FamilyName)) == set(FAMILIES)
    assert CleanSpec.model_fields["family"].annotation == FamilyName


def test_each_kind_refuses_a_task_it_cannot_do(tmp_path) -> None:
    """One task Literal; clean and eval narrow it with a message naming what they can do."""
    import pytest
    from pydantic import ValidationError

    from vlmjobs.specs.clean import CleanSpec
    from vlmjobs.vision.tasks import CLEAN_TASKS

    source = tmp_path / "regions.jsonl"
    source.write_text("")
    with pytest.raises(ValidationError, match="task 'ground' is not one a clean job can do"):
        CleanSpec.model_validate({"input": str(source), "task": "ground"})
    for task in CLEAN_TASKS:
        assert CleanSpec.model_validate({"input": str(source), "task": task}).task == task
