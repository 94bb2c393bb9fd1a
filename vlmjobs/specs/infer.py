"""InferSpec: one YAML file per bulk-labeling job (``vlmjobs submit infer infer.yaml``).

    kind: infer
    model: {path: /models/qwen2.5-vl-3b, adapter: "job:42"}
    inputs: [/data/shelf-photos, /data/batch-7.tar.gz]
    task: dense_caption

A train job's adapter carries a manifest (pixel limits, prompt, system,
coordinate convention); infer honours it, and a field here overrides it only
when it is written in the YAML. Input paths are checked at submit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from vlmjobs.specs.common import (
    JobSpec,
    ModelSpec,
    ProfileSpec,
    Strict,
    existing_path,
    is_job_ref,
)
from vlmjobs.vision.frames import FACTOR
from vlmjobs.vision.tasks import Task, parser_for


class InferModelSpec(ModelSpec):
    """The base model (+ an adapter dir, or a train job's adapter as 'job:42')."""

    @field_validator("adapter")
    @classmethod
    def _adapter_exists(cls, value: str | None) -> str | None:
        if value is not None and not is_job_ref(value):
            return str(existing_path(value, "adapter directory (or write a train job as 'job:42')"))
        return value


class DedupSpec(Strict):
    """Drop repeated regions (the seeds repeat one box many times): same place, same phrase."""

    enabled: bool = True
    # Two regions are one when their IoU is above this ...
    iou_threshold: float = Field(0.7, gt=0.0, le=1.0)
    # ... and their phrases are at least this similar.
    phrase_threshold: float = Field(0.8, ge=0.0, le=1.0)
    # exact: 1 when equal after lower-casing and dropping articles / end punctuation, else 0
    # (free). embedding: cosine of all-MiniLM-L6-v2 vectors ("red car" ~ "red automobile");
    # loads a 90 MB model once per job and embeds each new phrase once (~ms per image).
    phrase_similarity: Literal["exact", "embedding"] = "exact"


class InferPreflightSpec(Strict):
    """Estimate peak GPU memory at submit and before loading: batch x tokens -> KV cache +
    prefill + weights, from the model's config.json, images at max_pixels."""

    # The card's budget; the design point is a 12 GB card.
    gpu_memory_gib: float = Field(12.0, gt=0)
    # refuse: fail (exit 2 at submit) showing the arithmetic; adjust: run at the largest
    # batch that fits (the job's events show it). Either way, an out-of-memory error while
    # running halves the batch, down to one image.
    on_exceed: Literal["refuse", "adjust"] = "refuse"


class VideoSpec(Strict):
    """How video files (.mp4 .webm .mkv) are sampled. describe: each clip goes to the model
    as one video; every other task: each sampled frame as an image (the image pixel limits)."""

    # Frames sampled per second of video (qwen-vl-utils' default is 2).
    fps: float = Field(2.0, gt=0.0, le=60.0)
    # Frames per clip (a video, or a window) at least / at most; the count is a multiple of 2
    # for describe. Frame tasks (detect, ...) sample max_frames per clip too, and at least one
    # frame: time grows linearly with it.
    min_frames: int = Field(4, ge=1, le=768)
    max_frames: int = Field(64, ge=1, le=768)
    # describe: one answer per window of this many seconds; None: one per video. Windows
    # also bound what is decoded and held at once (one clip's sampled frames).
    window_s: float | None = Field(None, gt=0.0)
    # describe: visual tokens per frame at least / at most (a token is 28x28 px, 32x32 for
    # Qwen3-VL), and for the whole clip at most: frames shrink to fit (qwen-vl-utils' rule).
    # Pinned well below the families' own defaults (768 per frame, 115,200 per video).
    min_frame_tokens: int = Field(16, ge=4)
    max_frame_tokens: int = Field(256, ge=4)
    max_tokens: int = Field(4096, ge=4)

    @model_validator(mode="after")
    def _ordered(self) -> VideoSpec:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} > max_frames {self.max_frames}")
        if self.min_frame_tokens > self.max_frame_tokens:
            raise ValueError(
                f"min_frame_tokens {self.min_frame_tokens} > max_frame_tokens "
                f"{self.max_frame_tokens}"
            )
        return self


class InferSpec(JobSpec):
    """Label images and videos with a (fine-tuned) Qwen-VL; one output row per image, per
    sampled video frame or per described video window, regions per output."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["infer"] = "infer"
    model: InferModelSpec
    # Folders (recursive), list files (.txt, one path a line), .tar / .tar.gz / .tgz / .zip;
    # images and videos (.mp4 .webm .mkv: see video).
    inputs: list[str] = Field(min_length=1)
    # Globs over names relative to a folder or archive root; default: common image and video
    # suffixes.
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # dense_caption | detect (labels) | ground (phrase) | extract_json | caption | custom (prompt).
    # Left out: the adapter manifest's task, else dense_caption.
    # describe: a video (or window) as a video, one text each (an image: described as one).
    task: Task = "dense_caption"
    labels: list[str] | None = None
    phrase: str | None = None
    # Replaces the task's prompt (and the manifest's).
    prompt: str | None = None
    # extract_json: a JSON schema each answer is validated against (failures: parse_status).
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    # How answers are read: regions | json | text; default: the task's own parser.
    parser: Literal["regions", "json", "text"] | None = None
    system: str | None = None
    # Images per generate call: throughput against GPU memory (KV cache grows with it).
    batch_size: int = Field(16, ge=1, le=256)
    # Images decoded ahead = read_ahead * batch_size; bucketing by size happens in that window.
    read_ahead: int = Field(4, ge=1, le=64)
    # Generation length cap; a dense caption of ~25 regions is ~550 tokens.
    max_new_tokens: int = Field(512, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    # >1 discourages the repeated boxes random and under-trained models emit.
    repetition_penalty: float = Field(1.0, gt=0.0)
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    # auto: the static-cache fast path on CUDA, else transformers' generate; hf | static force one.
    engine: Literal["auto", "hf", "static"] = "auto"
    # Label at most this many images (None: all).
    limit: int | None = Field(None, ge=1)
    # Refuse images above this many pixels before decoding (decompression bombs); Pillow's
    # default. Pillow itself still refuses above twice its own limit (179 Mpx).
    max_image_pixels: int = Field(89_478_485, ge=1)
    # Pixel budget of the model's input frame; None: the adapter manifest's, else model's.
    min_pixels: int | None = Field(None, ge=FACTOR * FACTOR)
    max_pixels: int | None = Field(None, ge=FACTOR * FACTOR)
    preflight: InferPreflightSpec = Field(default_factory=InferPreflightSpec)
    video: VideoSpec = Field(default_factory=VideoSpec)
    # Profile a few batches (CPU ops, CUDA kernels): profile/ops.txt and a Perfetto trace.
    profile: ProfileSpec = Field(default_factory=ProfileSpec)

    @field_validator("inputs")
    @classmethod
    def _inputs_exist(cls, inputs: list[str]) -> list[str]:
        missing = [p for p in inputs if not _exists(p)]
        if missing:
            raise ValueError(f"input path(s) {missing} do not exist: check the paths")
        return [str(existing_path(p, "input")) for p in inputs]

    @model_validator(mode="after")
    def _task_arguments(self) -> InferSpec:
        if self.task == "detect" and not self.labels and not self.prompt:
            raise ValueError("task 'detect' needs labels: the object names to find")
        if self.task == "ground" and not self.phrase and not self.prompt:
            raise ValueError("task 'ground' needs phrase: the referring expression to locate")
        if self.task == "custom" and not self.prompt:
            raise ValueError("task 'custom' needs prompt: the instruction text")
        if self.json_schema is not None and (self.parser or parser_for(self.task)) != "json":
            raise ValueError("schema is only read by the json parser: use task extract_json")
        if self.json_schema is not None:
            _check_schema(self.json_schema)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


def _check_schema(schema: dict[str, Any]) -> None:
    """A JSON Schema that jsonschema can use, or a ValueError saying where it is not one."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(p) for p in error.path) or "(top)"
        raise ValueError(f"schema is not a valid JSON Schema at {where}: {error.message}") from None


def _exists(path: str) -> bool:
    # Only existence here: existing_path then says why an existing path is refused (roots).
    return Path(path).expanduser().exists()
