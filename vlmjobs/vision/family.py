"""Model families: what a checkpoint's ``config.json`` ``model_type`` decides.

    family = family_of(path)            # or FAMILIES["qwen3_vl"]
    family.factor, family.convention    # 32, "1000"

One table, read by the loader (model class, processor), clean and train (frame
factor, box convention written into the manifest), infer (reads them back) and the
generation engine (whether the static-KV-cache decoder runs it):

| family      | patch x merge | boxes in the text            | static engine |
| ----------- | ------------- | ---------------------------- | ------------- |
| qwen2_vl    | 14 x 2 = 28   | 0-1000 of the image          | yes           |
| qwen2_5_vl  | 14 x 2 = 28   | pixels of the resized image  | yes           |
| qwen3_vl    | 16 x 2 = 32   | 0-1000 of the image          | yes           |
| qwen3_vl_moe| 16 x 2 = 32   | 0-1000 of the image          | no (experts)  |
| qwen3_5     | 16 x 2 = 32   | 0-1000 of the image          | no (recurrent state) |
| qwen3_5_moe | 16 x 2 = 32   | 0-1000 of the image          | no (recurrent state, experts) |

Pixel limits are always pinned (``default_min_pixels`` / ``default_max_pixels``:
256 to 1280 visual tokens per image): Qwen3-VL's processor would otherwise allow
up to 16,384 tokens per image, and qwen-vl-utils' default for Qwen2.5-VL is 16,384
too, the usual cause of out-of-memory on a 12-24 GB card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlmjobs.errors import ModelLoadError
from vlmjobs.vision import frames
from vlmjobs.vision.frames import Convention

# Visual tokens per image of the pinned budget (the same for every family, so a
# 4-bit 3B/4B on a 12 GB card sees the same sequence lengths whatever the family).
MIN_TOKENS = 256
MAX_TOKENS = 1280


@dataclass(frozen=True)
class Family:
    """What differs between Qwen-VL generations, for one ``model_type``."""

    name: str  # the config's model_type
    title: str  # for messages and the README
    model_class: str  # transformers class of the generation model
    processor_class: str  # transformers processor (used when torchvision works)
    patch_size: int  # vision patch, pixels
    merge_size: int  # patches merged per side into one token
    convention: Convention  # how boxes are written in the model's text
    # Image normalisation of the family's processor (tiny checkpoints write it).
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # The static-KV-cache engine (vision/static_decode.py) reproduces this family's
    # decoder layers exactly; other families decode with transformers' generate.
    static_engine: bool
    # Says why the static engine does not run it (logged when infer falls back).
    engine_note: str = ""
    # Gated delta-net (linear attention) layers beside full attention (Qwen3.5): LoRA may
    # target their projections (in_proj_qkv, in_proj_z, out_proj, ...).
    linear_attention: bool = False

    @property
    def factor(self) -> int:
        """Side of one visual token in pixels: resized images are multiples of this."""
        return self.patch_size * self.merge_size

    @property
    def default_min_pixels(self) -> int:
        return MIN_TOKENS * self.factor**2

    @property
    def default_max_pixels(self) -> int:
        return MAX_TOKENS * self.factor**2

    def input_size(
        self, image_size: tuple[int, int], min_pixels: int, max_pixels: int
    ) -> tuple[int, int]:
        """(w, h) of the frame this family's processor resizes an original (w, h) image to."""
        return frames.input_size(image_size, min_pixels, max_pixels, factor=self.factor)

    def image_tokens(self, image_size: tuple[int, int], min_pixels: int, max_pixels: int) -> int:
        """Visual tokens the image becomes in the language model."""
        w, h = self.input_size(image_size, min_pixels, max_pixels)
        return (w // self.factor) * (h // self.factor)

    def load_class(self) -> Any:
        """The transformers generation class (imported on demand: they are heavy)."""
        import transformers

        cls = getattr(transformers, self.model_class, None)
        if cls is None:  # a transformers older than the family
            raise ModelLoadError(
                f"{self.title} ({self.name}) needs transformers' {self.model_class}, which "
                f"transformers {transformers.__version__} lacks: pip install -U transformers"
            )
        return cls


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_NO_STATIC = (
    "the static engine runs dense Qwen2/2.5/3-VL decoder layers only; {title} decodes with "
    "transformers' generate (slower on a GPU, same greedy output)"
)

# Every family name (a config.json ``model_type``), once: clean's spec takes its choices here.
FamilyName = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2_vl",
            title="Qwen2-VL",
            model_class="Qwen2VLForConditionalGeneration",
            processor_class="Qwen2VLProcessor",
            patch_size=14,
            merge_size=2,
            convention="1000",
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
            static_engine=True,
        ),
        Family(
            name="qwen2_5_vl",
            title="Qwen2.5-VL",
            model_class="Qwen2_5_VLForConditionalGeneration",
            processor_class="Qwen2_5_VLProcessor",
            patch_size=14,
            merge_size=2,
            convention="absolute",
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
            static_engine=True,
        ),
        Family(
            name="qwen3_vl",
            title="Qwen3-VL",
            model_class="Qwen3VLForConditionalGeneration",
            processor_class="Qwen3VLProcessor",
            patch_size=16,
            merge_size=2,
            convention="1000",
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            static_engine=True,
        ),
        Family(
            name="qwen3_vl_moe",
            title="Qwen3-VL-MoE",
            model_class="Qwen3VLMoeForConditionalGeneration",
            processor_class="Qwen3VLProcessor",
            patch_size=16,
            merge_size=2,
            convention="1000",
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            static_engine=False,
            engine_note=_NO_STATIC.format(title="Qwen3-VL-MoE (expert layers)"),
        ),
        # Qwen3.5: Qwen3-VL's vision tower (no DeepStack) and frame, a hybrid language model:
        # 3 of 4 layers are gated delta-net linear attention, whose per-row recurrent and
        # convolution state a KV cache cannot hold. Its chat template thinks by default.
        Family(
            name="qwen3_5",
            title="Qwen3.5",
            model_class="Qwen3_5ForConditionalGeneration",
            processor_class="Qwen3VLProcessor",
            patch_size=16,
            merge_size=2,
            convention="1000",
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            static_engine=False,
            engine_note=_NO_STATIC.format(
                title="Qwen3.5 (gated delta-net layers carry a recurrent state, not a KV cache)"
            ),
            linear_attention=True,
        ),
        Family(
            name="qwen3_5_moe",
            title="Qwen3.5-MoE",
            model_class="Qwen3_5MoeForConditionalGeneration",
            processor_class="Qwen3VLProcessor",
            patch_size=16,
            merge_size=2,
            convention="1000",
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            static_engine=False,
            engine_note=_NO_STATIC.format(
                title="Qwen3.5-MoE (gated delta-net layers carry a recurrent state; expert layers)"
            ),
            linear_attention=True,
        ),
    )
}
DEFAULT = FAMILIES["qwen2_5_vl"]


def get_family(name: str) -> Family:
    """The family called ``name`` (a model_type); ValueError naming the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(path: str | Path) -> Family:
    """The family of the checkpoint directory ``path``, from its config.json's model_type.

    Raises ModelLoadError naming the file or the model_type and the families vlmjobs runs.
    """
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise ModelLoadError(f"cannot read the model_type of {str(config)!r}: {err}") from err
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"model {str(path)!r} has model_type {model_type!r}; vlmjobs runs "
            + ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())
        )
    return FAMILIES[model_type]


def family_of_model(model: Any) -> Family:
    """The family of a loaded model (a PeftModel or the transformers model itself)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ModelLoadError(f"model_type {model_type!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[model_type]
