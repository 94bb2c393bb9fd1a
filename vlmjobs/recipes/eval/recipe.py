"""The eval recipe: run a model over data with ground truth, then score what it answered.

Phases of ``run(spec, ctx)``:

1. setup: read the ground truth, a clean job's split (targets parsed back into original
   pixels with its manifest) or a ground-truth file, and list its images.
2. inference: the infer recipe over that list, with this job's context, so the outputs
   are this job's own, resumable like infer's (done images are skipped on a retry).
3. scoring: the job's outputs read back and scored by ``vlmjobs.eval.score`` (ranked by
   confidence and with confidence 1.0); metrics recorded, predictions written as jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmjobs.errors import DataError
from vlmjobs.eval.data import Truth, load_truth, predictions_from_outputs
from vlmjobs.recipes.context import JobContext
from vlmjobs.recipes.refs import is_job_ref, resolve_job_ref
from vlmjobs.specs.eval import EvalSpec
from vlmjobs.specs.infer import InferSpec


def run(spec: EvalSpec, ctx: JobContext) -> dict[str, Any]:
    truth, manifest = read_truth(spec)
    names = truth.names[: spec.limit] if spec.limit else truth.names
    truth = _subset(truth, names)
    images = ctx.workdir / "images.txt"
    images.parent.mkdir(parents=True, exist_ok=True)
    images.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    ctx.event(f"eval: {len(names)} images from {spec.data}")
    infer_summary = _infer(spec, ctx, images, manifest, truth)
    if ctx.should_stop():
        return {"infer": infer_summary, "stopped": True}
    return _score(spec, ctx, truth, infer_summary)


def read_truth(spec: EvalSpec) -> tuple[Truth, Any]:
    """The ground truth keyed by ABSOLUTE image path (what infer records as the source), and
    the clean job's manifest (None for a ground-truth file)."""
    if is_job_ref(spec.data):
        directory = resolve_job_ref(spec.data, kind="clean", key="data_dir", what="data")
        return _clean_split(directory, spec.split)
    path = Path(spec.data)
    try:
        truth = load_truth(path)
    except (ValueError, KeyError) as e:
        raise DataError(str(e)) from e
    root = Path(spec.image_root) if spec.image_root else path.parent
    return _rename(truth, {n: str((root / n).resolve()) for n in truth.names}), None


def _clean_split(directory: Path, split: str) -> tuple[Truth, Any]:
    from vlmjobs.recipes.train.data import read_manifest, read_samples
    from vlmjobs.vision.parse import parse_regions
    from vlmjobs.vision.tasks import parser_for

    manifest = read_manifest(directory / "manifest.json")
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} is missing: this clean job wrote no {split} split; use another")
    samples = read_samples(path, system=manifest.system)
    if parser_for(manifest.task) != "regions":
        return Truth("text", texts={str(s.image): s.answer for s in samples}), manifest
    truth = Truth("regions")
    convention = manifest.frame_convention  # the family's: absolute (Qwen2.5-VL) or 0-1000
    for s in samples:
        size = s.image_size or _size_of(s.image)
        frame = manifest.input_size(size)  # in the family's frame: multiples of 28 or 32
        parsed = parse_regions(s.answer, input_size=frame, image_size=size, convention=convention)
        truth.regions[str(s.image)] = parsed.regions
        truth.sizes[str(s.image)] = size
    return truth, manifest


def _size_of(image: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image) as opened:
        return opened.size


def _rename(truth: Truth, new: dict[str, str]) -> Truth:
    out = Truth(truth.kind, categories=truth.categories)
    out.regions = {new[n]: r for n, r in truth.regions.items()}
    out.texts = {new[n]: t for n, t in truth.texts.items()}
    out.sizes = {new[n]: s for n, s in truth.sizes.items()}
    out.image_ids = {new[n]: i for n, i in truth.image_ids.items()}
    return out


def _subset(truth: Truth, names: list[str]) -> Truth:
    keep = set(names)
    out = Truth(truth.kind, categories=truth.categories)
    out.regions = {n: r for n, r in truth.regions.items() if n in keep}
    out.texts = {n: t for n, t in truth.texts.items() if n in keep}
    out.sizes = {n: s for n, s in truth.sizes.items() if n in keep}
    out.image_ids = {n: i for n, i in truth.image_ids.items() if n in keep}
    return out


def _infer(
    spec: EvalSpec, ctx: JobContext, images: Path, manifest: Any, truth: Truth
) -> dict[str, Any]:
    from vlmjobs.recipes.infer import recipe as infer

    return infer.run(infer_spec(spec, images, manifest, truth), ctx)


def infer_spec(spec: EvalSpec, images: Path, manifest: Any, truth: Truth) -> InferSpec:
    """The infer job an eval job runs over ``images`` (a list file): the clean manifest's
    prompt, system and pixel limits when the data is a clean job's; ``detect`` without a
    manifest asks for the truth's categories (COCO) or its distinct phrases."""
    fields: dict[str, Any] = {
        "model": spec.model,
        "inputs": [str(images)],
        "batch_size": spec.batch_size,
        "max_new_tokens": spec.max_new_tokens,
        "engine": spec.engine,
    }
    if spec.task or manifest is not None:
        fields["task"] = spec.task or manifest.task
    if manifest is not None:
        # Ask what the data's targets answer, in the frame they were written in.
        fields |= {"prompt": manifest.prompt, "system": manifest.system}
        fields |= {"min_pixels": manifest.min_pixels, "max_pixels": manifest.max_pixels}
    elif fields.get("task") == "detect":
        names = truth.categories.values() if truth.categories else _phrases(truth)
        fields["labels"] = sorted(set(names))
    return InferSpec(**fields)


def _phrases(truth: Truth) -> list[str]:
    from vlmjobs.vision.regions import normalize_phrase

    return [normalize_phrase(p) for regions in truth.regions.values() for p in regions.phrases]


def _score(
    spec: EvalSpec, ctx: JobContext, truth: Truth, infer_summary: dict[str, Any]
) -> dict[str, Any]:
    from vlmjobs.db.outputs import iter_outputs
    from vlmjobs.eval.score import default_metric, score
    from vlmjobs.exports import jsonl_lines

    outputs = list(iter_outputs(ctx.job_id))
    predictions = ctx.workdir / "predictions.jsonl"
    predictions.write_text("".join(line + "\n" for line in jsonl_lines(outputs)), encoding="utf-8")
    metric = spec.metric or default_metric(truth)
    preds = predictions_from_outputs(outputs, f"job:{ctx.job_id}")
    from vlmjobs.eval.densecap import minilm_embed

    # DenseCap's phrase vectors on the worker's device (MiniLM is ~20x faster on a GPU).
    embed = minilm_embed(ctx.device) if metric == "densecap" else None
    rows = score(
        truth,
        preds,
        metric,
        class_agnostic=spec.class_agnostic,
        unmatched=spec.unmatched,
        embed=embed,
    )
    ranked = rows[0].metrics
    flat = {f"{k}_conf1": v for k, v in rows[1].metrics.items()} if len(rows) > 1 else {}
    ctx.metrics({**ranked, **flat})
    return {
        "metric": metric,
        "metrics": ranked,
        "metrics_confidence_1": rows[1].metrics if len(rows) > 1 else None,
        "images_matched": len(rows[0].match.pairs),
        "images_without_prediction": len(rows[0].match.unmatched_gt),
        "regions_unknown_phrase": sum(rows[0].unknown_phrases.values()),
        "unknown_phrases_top": rows[0].unknown_phrases.most_common(10),
        "predictions": _relative_to_artifacts(predictions),
        "infer": infer_summary,
    }


def _relative_to_artifacts(path: Path) -> str:
    from vlmjobs import settings

    try:
        return str(path.resolve().relative_to(settings.artifacts_root().resolve()))
    except ValueError:
        return str(path.resolve())
