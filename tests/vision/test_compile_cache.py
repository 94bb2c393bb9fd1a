"""The static engine keeps inductor's compile cache under VLMJOBS_HOME unless the user chose."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.model import load_model
from vlmjobs.vision.static_decode import StaticDecoder


@pytest.mark.parametrize(
    "preset, expected",
    [
        (None, "home/compile-cache"),  # case: a worker's default: local disk, under its home
        ("mine", "mine"),  # case: the user's TORCHINDUCTOR_CACHE_DIR wins
    ],
)
def test_compiling_engine_points_inductor_at_a_persistent_cache(
    tiny_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset, expected: str
) -> None:
    monkeypatch.setenv("VLMJOBS_HOME", str(tmp_path / "home"))
    if preset is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / preset))
    model, _ = load_model(ModelSpec(path=str(tiny_checkpoint), dtype="fp32"))
    StaticDecoder(model, max_batch=1, eos_ids=[2], compile_kernels=False)
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == (str(tmp_path / preset) if preset else None)
    StaticDecoder(model, max_batch=1, eos_ids=[2], compile_kernels=True)  # compiles lazily
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / expected)
