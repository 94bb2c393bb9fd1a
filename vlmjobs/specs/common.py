"""Fields every job kind shares, and the model block that train and infer share.

Each kind's own spec (``specs/clean.py``, ``specs/train.py``, ``specs/infer.py``)
subclasses :class:`JobSpec`. ``extra="forbid"`` everywhere: a typo in a key is
an error at submit time, never a silently ignored setting.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vlmjobs import settings
from vlmjobs.vision.frames import FACTOR  # pixels a visual token covers (default family)

# ``job:42``: another job's output as this job's input (resolved in recipes/refs.py).
JOB_REF = re.compile(r"^job:(\d+)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    """Which Qwen2.5-VL to load and how: a local checkpoint dir, or a hub id when online."""

    path: str = Field(description="local Qwen2.5-VL checkpoint directory, or a hub id when online")
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    # nf4: 4-bit NormalFloat + double quantization (QLoRA); int8: LLM.int8(); none: plain dtype.
    quantization: Literal["none", "nf4", "int8"] = "none"
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    # Pixel budget per image: tokens per image ~= pixels / 28^2. The model's boxes live in
    # the frame these limits produce (vision/frames.py), so train and infer must agree.
    min_pixels: int = Field(256 * FACTOR * FACTOR, ge=FACTOR * FACTOR)
    max_pixels: int = Field(1280 * FACTOR * FACTOR, ge=FACTOR * FACTOR)
    adapter: str | None = Field(None, description="LoRA adapter dir, or a train job id as 'job:42'")
    # nf4 only: quantize the checkpoint once into VLMJOBS_ARTIFACTS/quantized/ and load that
    # copy from then on (no bf16 weights on the card while loading; the first load still has).
    prequantize: bool = False

    @model_validator(mode="after")
    def _prequantize_nf4(self) -> ModelSpec:
        if self.prequantize and self.quantization != "nf4":
            raise ValueError(
                f"prequantize needs quantization: nf4 (got {self.quantization!r}): set both"
            )
        return self

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return local_or_hub(value)


class ProfileSpec(Strict):
    """torch.profiler around a few steps (train: optimizer steps; infer: batches): what
    the job spends its time on, written under its work dir as ``profile/``."""

    # The first step recorded (1 = the first); pick one past warm-up (and, for train, past
    # the first epoch when the vision cache is on) to see the steady state.
    start_step: int = Field(3, ge=1)
    # How many steps to record from start_step; 0 (the default) records nothing.
    steps: int = Field(0, ge=0, le=20)


class JobSpec(Strict):
    """Common fields. ``kind`` is fixed by each subclass."""

    kind: str
    name: str | None = Field(None, description="a label for status tables")
    priority: int = Field(5, ge=0, le=9, description="0 lowest .. 9 highest")
    queue: str | None = Field(None, description="override the kind's default queue (cpu | gpu)")
    max_attempts: int = Field(3, ge=1, le=100, description="runs before a job is failed for good")
    time_limit_s: int | None = Field(None, ge=1, description="hard wall-clock limit of one attempt")


def is_job_ref(value: str | None) -> bool:
    return value is not None and JOB_REF.match(value) is not None


def check_job_ref(ref: str, info: ValidationInfo, *, kind: str, key: str, what: str) -> None:
    """Check ``ref`` with the resolver the caller put in the validation context, if any.

    Specs stay data: submit passes the database lookup (``resolve_job_ref`` in the
    context) so a dangling reference is reported with every other error; the worker
    passes none, and the recipe resolves the reference where it uses it.
    """
    resolve = (info.context or {}).get("resolve_job_ref")
    if resolve is not None:
        resolve(ref, kind=kind, key=key, what=what)


def existing_path(value: str | Path, what: str) -> Path:
    """Expand ``~``, require the path to exist, and make it absolute.

    Relative paths are read against the directory ``submit`` runs in and stored
    absolute, so a worker started elsewhere (or beat, for a schedule) finds them.
    The error says what the path was for.
    """
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{what} {str(value)!r} does not exist: check the path")
    check_allowed(path, what)
    return path.absolute()


def check_allowed(path: Path, what: str) -> None:
    """Refuse ``path`` unless it lies under VLMJOBS_ALLOWED_ROOTS (when set).

    Compared after resolving symlinks, so a link inside an allowed root that points
    outside it is refused too. Called at submit and again when the worker re-validates.
    """
    why = outside_roots(path, settings.allowed_roots(), what)
    if why:
        raise ValueError(why)


def outside_roots(path: Path, roots: list[Path] | None, what: str) -> str | None:
    """Why ``path`` is refused (outside ``roots``, symlinks resolved), or None when allowed.

    For the files a spec's inputs name in turn (images listed in annotations, list
    files, folders): the recipes read ``settings.allowed_roots()`` once and call this
    per file, turning a refusal into a skipped item.
    """
    if roots is None:
        return None
    real = Path(path).expanduser().resolve()
    if any(real.is_relative_to(root) for root in roots):
        return None
    shown = os.pathsep.join(str(r) for r in roots)
    return (
        f"{what} {str(path)!r} (resolves to {str(real)!r}) is outside the allowed roots "
        f"{shown!r}: move the data under one of them or extend VLMJOBS_ALLOWED_ROOTS"
    )


def local_or_hub(value: str) -> str:
    """A model reference: an existing local directory made absolute, else a hub id as given.

    With VLMJOBS_ALLOWED_ROOTS set, a local directory must lie under them, and a hub id
    is refused too (only local checkpoints are allowed then).
    """
    path = Path(value).expanduser()
    if path.exists():
        check_allowed(path, "model path")
        return str(path.absolute())
    if settings.allowed_roots() is not None:
        raise ValueError(
            f"model path {value!r} does not exist locally, and hub ids are refused while "
            "VLMJOBS_ALLOWED_ROOTS is set: point model.path at a checkpoint under an allowed root"
        )
    if not _is_hub_id(value):
        raise ValueError(
            f"model path {value!r} does not exist locally and is not a Hugging Face hub id "
            "(org/name): check the path"
        )
    return value


def _is_hub_id(value: str) -> bool:
    """``org/name`` or ``name`` as the hub spells repo ids (not a path: no leading ``/``,
    ``.``, ``~``, at most one ``/``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith(("/", ".", "~")) or value.count("/") > 1:
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True
