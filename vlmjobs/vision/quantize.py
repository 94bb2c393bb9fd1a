"""Pre-quantized checkpoints: quantize a bf16 Qwen-VL checkpoint to bitsandbytes nf4 once,
save it, and load it later without quantizing again.

Why: loading a bf16 checkpoint with ``quantization: nf4`` quantizes while loading, and the
bf16 weights pass through the card on the way (the 7B peaked at 15.5 GiB loading, though
it generates in 9.9 GiB). A saved nf4 checkpoint holds the 4-bit weights and their
quantization state; transformers reads them as they are.

    vlmjobs dev quantize /models/qwen2.5-vl-7b /models/qwen2.5-vl-7b-nf4 --nf4
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vlmjobs.errors import ModelLoadError
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.family import family_of

# Files of the checkpoint that the quantized one rewrites; everything else is copied as is.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json")


def checkpoint_quantization(path: Path) -> dict[str, Any] | None:
    """The ``quantization_config`` a checkpoint was saved with, or None (plain weights)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {Path(path) / 'config.json'}: {err}") from err
    return config.get("quantization_config")


def quantize_checkpoint(
    source: str | Path, out: str | Path, *, dtype: str = "bf16", device: str = "cpu"
) -> Path:
    """Write ``source`` (a bf16/fp32 checkpoint dir) as an nf4 checkpoint at ``out``.

    The settings are the ones QLoRA training uses (nf4, double quantization, ``dtype``
    compute; vision tower and LM head left unquantized). ``out`` appears complete or not
    at all. Raises ModelLoadError for a checkpoint that is already quantized, and
    FileExistsError when ``out`` exists.
    """
    from vlmjobs.vision.model import load_model

    source, out = Path(source).expanduser(), Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{str(out)!r} exists: choose a new directory for the nf4 model")
    family_of(source)  # a Qwen-VL checkpoint, before the long load
    existing = checkpoint_quantization(source)
    if existing is not None:
        raise ModelLoadError(
            f"{str(source)!r} is already quantized ({existing.get('quant_method')}, "
            f"{existing.get('bnb_4bit_quant_type', '')}): use it as it is"
        )
    spec = ModelSpec.model_validate({"path": str(source), "dtype": dtype, "quantization": "nf4"})
    model, _ = load_model(spec, device=device)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        model.save_pretrained(tmp)
        for item in source.iterdir():
            if (
                item.is_file()
                and item.name not in WEIGHT_FILES
                and not item.name.startswith("model-")
            ):
                shutil.copy2(item, tmp / item.name)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cached_nf4(source: Path, *, dtype: str = "bf16", device: str = "cpu") -> Path:
    """The nf4 copy of ``source`` under the artifact root, quantized on first use.

    Keyed by the source's path, its weight files' sizes and times, and ``dtype``: a changed
    checkpoint gets a new copy. Every host sharing the artifact root reuses it; two workers
    quantizing at once both succeed (the second rename loses and its copy is dropped).
    """
    from vlmjobs import settings

    source = Path(source).resolve()
    stamp = [
        (f.name, f.stat().st_size, int(f.stat().st_mtime))
        for f in sorted(source.iterdir())
        if f.name == "config.json" or f.name.startswith("model")
    ]
    key = hashlib.sha256(json.dumps([str(source), dtype, stamp]).encode()).hexdigest()[:16]
    out = settings.artifacts_root() / "quantized" / f"{source.name}-nf4-{key}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_checkpoint(source, out, dtype=dtype, device=device)
    except OSError:  # FileExistsError, or a rename onto the copy another worker finished
        if not (out / "config.json").is_file():
            raise
    return out
