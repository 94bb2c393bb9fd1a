"""TrainSpec: one YAML file per QLoRA fine-tuning job (``vlmjobs submit train train.yaml``).

Every knob has a default taken from the seeds' recipe, and a comment saying what
it costs (GPU memory, time, or quality). Validation happens here, at submit time:
a bad value is exit 2 with the field named, never a failed GPU hour.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from vlmjobs.specs.common import (
    JobSpec,
    ModelSpec,
    ProfileSpec,
    Strict,
    check_job_ref,
    existing_path,
    is_job_ref,
)

# Leaf module names of Qwen2.5-VL's linear layers (transformers 5), by where they live.
# Qwen3.5's gated delta-net (linear attention) layers add theirs; its full-attention layers
# (one in four) have q/k/v/o_proj.
LINEAR_ATTENTION_MODULES = {"in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj"}
LANGUAGE_MODULES = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
} | LINEAR_ATTENTION_MODULES  # fmt: skip
# The vision tower's attention is fused (qkv, proj) in every family; its MLP is
# gate/up/down_proj in Qwen2.5-VL, fc1/fc2 in Qwen2-VL, linear_fc1/linear_fc2 in Qwen3-VL.
VISION_MODULES = {
    "qkv", "proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2", "linear_fc1", "linear_fc2",
}  # fmt: skip
KNOWN_MODULES = LANGUAGE_MODULES | VISION_MODULES | {"all-linear"}

# Task metrics the evaluation can compute, and which direction is better.
METRIC_MODES: dict[str, Literal["min", "max"]] = {
    "loss": "min",  # held-out answer-token CE; needs no generation
    "token_accuracy": "max",  # held-out answer tokens whose argmax is the target; no generation
    "region_f1": "max",  # regions: F1 at IoU 0.5 with phrase match
    "region_precision": "max",
    "region_recall": "max",
    "json_edit_distance": "min",  # JSON: normalised edit distance to the target
    "json_field_accuracy": "max",  # JSON: share of target fields with the right value
    "edit_distance": "min",  # free text: normalised edit distance to the target (as `eval`)
    "exact_match": "max",  # free text: answers equal to the target, whitespace collapsed
    "parse_rate": "max",  # share of generations the task's parser reads as ok/repaired
}


class TrainModelSpec(ModelSpec):
    """The base model. QLoRA by default: nf4 weights (~0.55 bytes/param) with bf16 compute."""

    # nf4: 3B base ~2 GiB on the GPU; int8: ~3.5 GiB; none: bf16 ~7 GiB (fastest steps).
    quantization: Literal["none", "nf4", "int8"] = "nf4"

    @field_validator("adapter")
    @classmethod
    def _no_adapter(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                f"train starts a fresh LoRA adapter; got adapter {value!r}: remove model.adapter"
            )
        return value


class DataSpec(Strict):
    """Clean's output directory (train/val.jsonl + manifest.json) or one JSONL file."""

    # A clean job's output dir, or a JSONL of {"image", "prefix", "suffix"} or {"messages": ...}.
    path: str
    # Validation JSONL; default: <dir>/val.jsonl for clean's output, else held out by val_fraction.
    val_path: str | None = None
    # Share of a single JSONL held out for validation (a seeded split; same each run).
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Use at most this many training samples (None: all). Handy for smoke runs.
    max_samples: int | None = Field(None, ge=1)
    # Batch samples of similar length together: less padding, faster steps; order stays seeded.
    group_by_length: bool = True
    # System prompt for JSONL data without one (clean's output carries its own).
    system: str | None = None
    # Task for JSONL data without a manifest (decides the parser used by evaluation).
    task: str | None = None

    @field_validator("path")
    @classmethod
    def _data_exists(cls, value: str, info: ValidationInfo) -> str:
        if is_job_ref(value):  # a clean job's output, resolved where it is used
            check_job_ref(value, info, kind="clean", key="data_dir", what="data.path")
            return value
        return str(existing_path(value, "data file or directory"))

    @field_validator("val_path")
    @classmethod
    def _val_exists(cls, value: str | None) -> str | None:
        return None if value is None else str(existing_path(value, "validation file"))


class LoraSpec(Strict):
    """Low-rank adapters: r * (d_in + d_out) params per target per layer (r=4 q,v on 3B: 0.9M)."""

    # Rank: more capacity and optimizer memory; r 4 -> 8 costs ~2x adapter size, ~1% step time.
    r: int = Field(4, ge=1)
    # Scale of the update is alpha / r.
    alpha: float = Field(16, gt=0)
    # Dropout on the LoRA input; 0 is slightly faster.
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # Leaf module names; MLP targets (gate/up/down_proj) roughly triple trainable params.
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    # Also adapt the vision tower: more memory (its activations need grads) and slower steps.
    vision: bool = False

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        if not targets:
            raise ValueError("empty: name at least one module, e.g. [q_proj, v_proj]")
        unknown = [t for t in targets if t not in KNOWN_MODULES]
        if unknown:
            raise ValueError(
                f"unknown module name(s) {unknown}; Qwen-VL models have {sorted(KNOWN_MODULES)}"
            )
        return targets

    @model_validator(mode="after")
    def _vision_targets(self) -> LoraSpec:
        vision_only = [t for t in self.targets if t not in LANGUAGE_MODULES | {"all-linear"}]
        if vision_only and not self.vision:
            raise ValueError(
                f"lora.targets {vision_only} exist only in the vision tower: "
                "set lora.vision: true or drop them"
            )
        return self


class OptimSpec(Strict):
    """AdamW with warm-up then a decay schedule. Optimizer state: 8 bytes per trainable param."""

    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # Warm-up length in optimizer steps; when None, warmup_ratio of the total steps.
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    # After warm-up: cosine to 0, linear to 0, or constant.
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    # Clip the gradient's global norm; None disables clipping.
    max_grad_norm: float | None = Field(1.0, gt=0)


class EvalSpec(Strict):
    """Validation during training. Loss is cheap; task metrics generate text (slow)."""

    # Evaluate every N optimizer steps (and at the end); None: only at epoch ends and the end.
    every_steps: int | None = Field(None, ge=1)
    # Validation samples per evaluation; generation time grows linearly with it.
    max_samples: int = Field(32, ge=1)
    # Generation length cap for the task metric; should cover the longest target.
    max_new_tokens: int = Field(512, ge=1)
    # Also generate and parse to compute task metrics (F1 / JSON scores / parse rate).
    generate: bool = True
    # The metric that picks the best checkpoint and drives early stopping.
    metric: Literal[
        "loss",
        "token_accuracy",
        "region_f1",
        "region_precision",
        "region_recall",
        "json_edit_distance",
        "json_field_accuracy",
        "edit_distance",
        "exact_match",
        "parse_rate",
    ] = "loss"
    # Stop after this many evaluations without improvement; None never stops early.
    early_stopping_patience: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _metric_needs_generation(self) -> EvalSpec:
        if self.metric not in ("loss", "token_accuracy") and not self.generate:
            raise ValueError(f"eval.metric {self.metric!r} needs eval.generate: true")
        return self

    @property
    def mode(self) -> Literal["min", "max"]:
        return METRIC_MODES[self.metric]


class CheckpointSpec(Strict):
    """Resumable checkpoints (adapter + optimizer + RNG + data order), written atomically."""

    # Every N optimizer steps, and at each epoch end. r=4 q,v on 3B: 0.9M params -> ~11 MB
    # (fp32 adapter + two AdamW moments).
    every_steps: int = Field(100, ge=1)
    # How many of the newest checkpoints to keep on disk (resume needs one).
    keep_last: int = Field(2, ge=1)
    # Also keep the checkpoint with the best eval.metric, whatever its age.
    keep_best: bool = True


class PreflightSpec(Strict):
    """Estimate peak GPU memory before loading anything, from the largest images and this config."""

    # The card's budget; the design point is a 12 GB card.
    gpu_memory_gib: float = Field(12.0, gt=0)
    # refuse: fail the job (exit 2 at submit) showing the arithmetic; adjust: run each
    # micro-batch in 2, 4, ... parts (down to oom.min_micro_batch) until the estimate fits.
    on_exceed: Literal["refuse", "adjust"] = "refuse"


class OomSpec(Strict):
    """What to do when a step runs out of GPU memory anyway."""

    # Retry the step with each micro-batch run in halves (same samples per step), down to
    # this many samples per forward pass; below it the attempt fails with the error.
    min_micro_batch: int = Field(1, ge=1)
    # Retrying with fewer pixels is NOT implemented yet (it changes the frame the targets'
    # boxes live in); true is refused so that no one relies on it.
    shrink_pixels: bool = False

    @field_validator("shrink_pixels")
    @classmethod
    def _not_yet(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "shrinking pixels after out-of-memory is not implemented yet: leave it false "
                "and lower model.max_pixels (the step is retried with smaller micro-batches)"
            )
        return value


class TrainSpec(JobSpec):
    """A QLoRA fine-tuning job: base model + data -> a PEFT adapter that infer can load."""

    kind: Literal["train"] = "train"
    model: TrainModelSpec
    data: DataSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    # Samples per forward pass: speed (GPU utilisation) against activation memory. The 3B
    # nf4 at ~1,000 image tokens: 4 -> 2.5x the seed recipe at 6.0 GiB, 8 -> 2.9x at
    # 7.4 GiB, 12 -> 3.0x at 9.4 GiB (BENCHMARKS.md); the preflight checks the data's own.
    micro_batch_size: int = Field(8, ge=1)
    # Micro-batches per optimizer step; effective batch = micro_batch_size * grad_accum.
    grad_accum: int = Field(1, ge=1)
    # Passes over the training data (ignored when max_steps is set).
    epochs: int = Field(1, ge=1)
    # Stop after this many optimizer steps, whatever epochs says.
    max_steps: int | None = Field(None, ge=1)
    # none: fastest, most memory; language: recompute LM layers in backward (~1.6x step time,
    # ~1/3 the activation memory); all: also the vision tower (only useful with lora.vision).
    gradient_checkpointing: Literal["none", "language", "all"] = "language"
    # Tokens per chunk of the LM-head + cross-entropy; the full-vocab logits never exist at
    # once. Smaller: less memory (chunk x 151,936 x 4 bytes), slightly slower.
    loss_chunk_size: int = Field(1024, ge=1)
    # CPU RAM for the frozen vision tower's output, reused from the second epoch on (~30% of
    # a step); 4 MB per 1,000-token image of the 3B. 0 turns it off; unused with lora.vision.
    vision_cache_gib: float = Field(4.0, ge=0)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    # Profile a few steps (CPU ops, CUDA kernels): profile/ops.txt and a Perfetto trace.
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    # One line in job.log (`vlmjobs logs -f`) every N optimizer steps: loss, lr, grad norm,
    # samples/s, ETA. Costs nothing measurable; the metrics table gets every step anyway.
    log_every_steps: int = Field(10, ge=1)
    # Also write the step and eval metrics to these trackers, offline, into the job's folder:
    # tensorboard (event files), wandb (offline run), mlflow (file store). Each is an extra:
    # pip install 'vlmjobs[tensorboard]'.
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    # Seeds python, numpy, torch and the data order; same seed + data = same run.
    seed: int = 0
    # Also write base + adapter merged into one bf16 checkpoint (3B: ~7 GB of disk).
    merge_export: bool = False
    preflight: PreflightSpec = Field(default_factory=PreflightSpec)
    oom: OomSpec = Field(default_factory=OomSpec)

    @model_validator(mode="after")
    def _oom_floor(self) -> TrainSpec:
        if self.oom.min_micro_batch > self.micro_batch_size:
            raise ValueError(
                f"oom.min_micro_batch {self.oom.min_micro_batch} is above micro_batch_size "
                f"{self.micro_batch_size}: lower it"
            )
        return self
