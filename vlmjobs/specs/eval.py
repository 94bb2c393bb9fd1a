"""EvalSpec: score a model on held-out data (``vlmjobs submit eval eval.yaml``).

    kind: eval
    model: {path: /models/qwen2.5-vl-3b, adapter: "job:42"}
    data: "job:12"          # a clean job (its `split`), or a ground-truth file
    split: test

Inference runs through the infer recipe (same engine, same parsing); the outputs are
this job's own (``vlmjobs results ID``), then scored by ``vlmjobs.eval``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from vlmjobs.specs.common import JobSpec, check_job_ref, existing_path, is_job_ref
from vlmjobs.specs.infer import InferModelSpec
from vlmjobs.vision.tasks import EVAL_TASKS, Task, check_task


class EvalSpec(JobSpec):
    """A model (+ adapter), data with ground truth, and how to score it."""

    kind: Literal["eval"] = "eval"
    model: InferModelSpec
    # A clean job ("job:12": its split below, boxes already in original pixels), or a ground
    # truth file: COCO instances JSON, region_descriptions.json, regions.jsonl, {image, suffix}.
    data: str
    split: Literal["test", "val"] = "test"
    # Ground-truth file only: the folder its image names are relative to (default: its folder).
    image_root: str | None = None
    # coco | densecap | grounding | json | text; None: from the ground truth's shape.
    metric: Literal["coco", "densecap", "grounding", "json", "text"] | None = None
    # coco: any phrase may find any box.
    class_agnostic: bool = False
    # coco: regions whose phrase names no category are left out (exclude) or false positives
    # of the category of the truth box they overlap most (fp); counted in the result either way.
    unmatched: Literal["exclude", "fp"] = "exclude"
    # The infer knobs that matter for a score; the task, prompt and pixel limits come from the
    # clean job's manifest (else the adapter's, else dense_caption). detect asks for the
    # truth's categories (COCO) or phrases; ground (a phrase per query) is not run here yet.
    task: Task | None = None
    batch_size: int = Field(16, ge=1, le=256)
    max_new_tokens: int = Field(512, ge=1)
    engine: Literal["auto", "hf", "static"] = "auto"
    # Score at most this many images (None: the whole split).
    limit: int | None = Field(None, ge=1)

    @field_validator("task")
    @classmethod
    def _task_scorable(cls, value: str | None) -> str | None:
        return check_task(value, EVAL_TASKS, "eval")

    @field_validator("data")
    @classmethod
    def _data_exists(cls, value: str, info: ValidationInfo) -> str:
        if is_job_ref(value):
            check_job_ref(value, info, kind="clean", key="data_dir", what="data")
            return value
        return str(existing_path(value, "ground-truth file (or write a clean job as 'job:12')"))

    @field_validator("image_root")
    @classmethod
    def _root_exists(cls, value: str | None) -> str | None:
        return None if value is None else str(existing_path(value, "image_root"))

    @model_validator(mode="after")
    def _one_prompt_per_job(self) -> EvalSpec:
        # Infer asks one prompt of every image; a referring phrase differs per query.
        if self.task == "ground":
            raise ValueError(
                "task 'ground' is not run by eval jobs yet (each query needs its own phrase): "
                "run one infer job per phrase (task: ground, phrase: ...) and score them with "
                "`vlmjobs eval --pred job:ID --gt TRUTH --metric grounding`"
            )
        if self.task == "custom" and not is_job_ref(self.data):
            raise ValueError(
                "task 'custom' needs its prompt, which an eval job reads from a clean job's "
                "manifest: set data to that clean job (job:ID)"
            )
        return self

    @model_validator(mode="after")
    def _coco_only_knobs(self) -> EvalSpec:
        if self.unmatched == "fp" and self.metric not in (None, "coco"):
            raise ValueError(f"unmatched: fp applies to metric coco only, not {self.metric}")
        if self.unmatched == "fp" and self.class_agnostic:
            raise ValueError(
                "unmatched: fp with class_agnostic: every phrase matches the one category "
                "there, so nothing is unmatched; drop one of them"
            )
        return self
