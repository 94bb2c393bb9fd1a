"""Load a Qwen-VL checkpoint of any family (Qwen2-VL, 2.5-VL, 3-VL, 3.5) and its processor.

The checkpoint's config.json model_type picks the family (vision/family.py), and with it
the model class, the processor and the pixel frame.

    model, processor = load_model(spec, device="cuda")

Works with and without torchvision: without it, ``AutoProcessor`` silently
returns a bare tokenizer (its video processor needs torchvision), so the processor is
assembled here from the image processor's PIL variant + the tokenizer + the chat template.
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BitsAndBytesConfig, ProcessorMixin, Qwen2_5_VLProcessor

from vlmjobs.errors import ModelLoadError
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.family import Family, family_of

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Quantizing the vision tower or lm_head costs accuracy for little memory; bitsandbytes'
# llm_int8_skip_modules match from the start of the full module name, so "visual" alone
# would match nothing.
SKIP_QUANT = ["model.visual", "lm_head"]


@cache
def has_torchvision() -> bool:
    """True when torchvision imports AND works (a PyPI build beside a CPU torch may not)."""
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def resolve_path(path: str) -> Path:
    """A local checkpoint dir for ``path``: the dir itself, or a hub id's cached snapshot.

    Hub ids are looked up in the local cache first, then downloaded unless HF_HUB_OFFLINE
    (or TRANSFORMERS_OFFLINE) is set. Raises ModelLoadError saying what to do.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"model dir {str(local)!r} has no config.json: is it a checkpoint?"
            )
        return local
    from huggingface_hub import snapshot_download

    offline = any(
        os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    for local_only in (True, False) if not offline else (True,):
        try:
            return Path(snapshot_download(path, local_files_only=local_only))
        except _hub_errors() as err:  # not cached / not found / bad id / no network
            reason = err
    raise ModelLoadError(
        f"model {path!r} is not a local directory and could not be loaded from the hub cache "
        f"({type(reason).__name__}); point model.path at a local Qwen-VL checkpoint directory"
    )


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What snapshot_download raises for a missing, invalid or unreachable repo: its own
    errors subclass OSError or ValueError; network failures come from httpx."""
    try:
        import httpx
    except ImportError:
        return (OSError, ValueError)
    return (OSError, ValueError, httpx.HTTPError)


def model_family(path: str) -> Family:
    """The family of the checkpoint ``path`` (a local dir, or a hub id resolved as loading does)."""
    return family_of(resolve_path(path))


def _saved_quantization(path: Path) -> str | None:
    """How a pre-quantized checkpoint was quantized ("bitsandbytes nf4"), or None."""
    from vlmjobs.vision.quantize import checkpoint_quantization

    saved = checkpoint_quantization(path)
    if saved is None:
        return None
    return f"{saved.get('quant_method')} {saved.get('bnb_4bit_quant_type', '')}".strip()


def _check_awq(path: Path, device: str, for_training: bool) -> None:
    """AWQ checkpoints (e.g. Qwen2.5-VL-3B-Instruct-AWQ) load for inference on CUDA through
    transformers' AWQ support, which needs the gptqmodel package's kernels."""
    from transformers.utils import is_gptqmodel_available

    if for_training:
        raise ModelLoadError(
            f"{str(path)!r} is an AWQ checkpoint: train from the bf16 checkpoint "
            "(quantization: nf4 is QLoRA), then infer with the AWQ one if you like"
        )
    if not device.startswith("cuda"):
        raise ModelLoadError(
            f"{str(path)!r} is an AWQ checkpoint and AWQ kernels run on CUDA (device "
            f"{device!r}): run it on a GPU worker, or use the bf16 checkpoint with nf4"
        )
    if not is_gptqmodel_available():
        raise ModelLoadError(
            f"{str(path)!r} is an AWQ checkpoint; transformers loads AWQ with the gptqmodel "
            "package's kernels: pip install gptqmodel on this GPU host, or use the bf16 "
            "checkpoint with quantization: nf4"
        )


def quantization_config(spec: ModelSpec) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for spec.quantization (nf4 = QLoRA's 4-bit + double quant)."""
    if spec.quantization == "none":
        return None
    if spec.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[spec.dtype],
            llm_int8_skip_modules=SKIP_QUANT,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANT)


def _check_attention(spec: ModelSpec, device: str) -> None:
    if spec.attn_implementation != "flash_attention_2":
        return
    from transformers.utils import is_flash_attn_2_available

    if not device.startswith("cuda") or not is_flash_attn_2_available():
        raise ModelLoadError(
            f"attn_implementation 'flash_attention_2' needs the flash-attn package and CUDA "
            f"(device {device!r}); install flash-attn or use 'sdpa'"
        )


def fix_cpu_4bit(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights in place on AVX512-BF16 CPUs: it does so
    during no-grad passes (in_features % 64 == 0), and a training step after any eval then
    fails with "a view of a leaf Variable ... is being used in an in-place operation"."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit
            module.support_avx512bf16_for_cpu = False  # type: ignore[assignment]


def load_model(
    spec: ModelSpec, *, device: str = "cpu", for_training: bool = False
) -> tuple[Any, Qwen2_5_VLProcessor]:
    """Load ``spec``'s model (+ LoRA adapter) on ``device`` and its processor.

    Returns ``(model, processor)``; the model is in eval mode unless ``for_training``.
    ``spec.adapter`` must already be a directory (callers resolve 'job:42').
    Raises ModelLoadError naming the path and what to do.
    """
    path = resolve_path(spec.path)
    _check_attention(spec, device)
    kwargs: dict[str, Any] = {
        "dtype": DTYPES[spec.dtype],
        "attn_implementation": spec.attn_implementation,
    }
    quant = quantization_config(spec)
    saved = _saved_quantization(path)
    if spec.prequantize and saved is None:  # quantize once into the artifact root, then reuse
        from vlmjobs.vision.quantize import cached_nf4

        path = cached_nf4(path, dtype=spec.dtype, device=device)
        saved = _saved_quantization(path)
    if saved is not None and saved.startswith("awq"):
        _check_awq(path, device, for_training)
    if saved is not None:  # pre-quantized (dev quantize, AWQ): read the saved weights as is
        log.info("%s is pre-quantized (%s): loading it as saved", path, saved)
        quant = None
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device != "cpu":
        kwargs["device_map"] = {"": device}
    try:
        model = family_of(path).load_class().from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        raise ModelLoadError(f"cannot load model {str(path)!r}: {err}") from err
    if (quant is not None or saved is not None) and device == "cpu":
        fix_cpu_4bit(model)
    if spec.adapter:
        model = _load_adapter(model, spec.adapter, trainable=for_training)
    model.train(for_training)
    processor = load_processor(path, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    return model, processor


def _load_adapter(model: Any, adapter: str, *, trainable: bool) -> Any:
    from peft import PeftModel

    adapter_dir = Path(adapter).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"adapter {adapter!r} is not a LoRA adapter directory (no adapter_config.json); "
            "point model.adapter at a train job's adapter dir"
        )
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def load_processor(path: str | Path, *, min_pixels: int, max_pixels: int) -> Qwen2_5_VLProcessor:
    """The family's processor for the checkpoint at ``path`` with this pixel budget.

    Produces ``input_ids`` (with one <|image_pad|> per merged 28x28 or 32x32 patch),
    ``attention_mask``, ``pixel_values`` and ``image_grid_thw``; resize sizes are
    exactly ``frames.input_size``. A video processor is attached only with torchvision.
    """
    path = resolve_path(str(path))
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}: swap them")
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = tokenizer.chat_template or _read_template(path)
    image = _image_processor(path, min_pixels, max_pixels)
    video = _video_processor(path) if has_torchvision() else None
    if video is not None:
        import transformers

        processor_class = getattr(transformers, family_of(path).processor_class)
        return processor_class(
            image_processor=image,
            tokenizer=tokenizer,
            video_processor=video,
            chat_template=template,
        )
    return ImageOnlyProcessor(image_processor=image, tokenizer=tokenizer, chat_template=template)


def _video_processor(path: Path) -> Any | None:
    """The checkpoint's video processor, or None (vlmjobs sends images only, so a checkpoint
    without a loadable video config still works)."""
    from transformers import AutoVideoProcessor

    try:
        return AutoVideoProcessor.from_pretrained(path)
    except (OSError, ValueError, ImportError) as err:
        log.info("no video processor for %s (%s); images only", path, err)
        return None


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without the video processor (which needs torchvision).

    For images, Qwen2-VL's and Qwen3-VL's processors do the same as this one (one
    <|image_pad|> per merged patch of ``image_grid_thw``); they differ only for video.

    ProcessorMixin takes its sub-processors from ``__init__``'s parameter names, so
    leaving ``video_processor`` out of the signature is what makes it optional.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template=None):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def _image_processor(path: Path, min_pixels: int, max_pixels: int) -> Any:
    """The checkpoint's image processor with this pixel budget; PIL-based without torchvision."""
    # As kwargs, these override the checkpoint's own min/max_pixels (a size= would not).
    if has_torchvision():
        from transformers import AutoImageProcessor

        image = AutoImageProcessor.from_pretrained(
            path, min_pixels=min_pixels, max_pixels=max_pixels
        )
    else:
        image_class: Any
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
                Qwen2VLImageProcessorPil,
            )

            image_class = Qwen2VLImageProcessorPil
        except ImportError:  # transformers before the PIL/torchvision split: the slow one is PIL
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
                Qwen2VLImageProcessor,
            )

            image_class = Qwen2VLImageProcessor
        image = image_class.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    return image


def _read_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None
