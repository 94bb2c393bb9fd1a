"""Training data: samples from clean's output or a JSONL file; a seeded, length-grouped order.

Two record formats, one line each:

- clean's chat format: ``{"messages": [system, user(image, prompt), assistant(target)],
  "image_size": [w, h], ...}`` (image paths absolute);
- the seeds' format: ``{"image": "a.jpg", "prefix": prompt, "suffix": target}``
  (image paths relative to the JSONL file).

The batch order of an epoch is a pure function of (lengths, micro-batch size, seed,
epoch): a resumed run recomputes nothing, it reads the order from its checkpoint,
and an uninterrupted run computes the same one.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmjobs import settings
from vlmjobs.errors import DataError
from vlmjobs.recipes.refs import is_job_ref, resolve_job_ref
from vlmjobs.specs.common import outside_roots
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.family import Family
from vlmjobs.vision.frames import FACTOR, input_size
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.manifest import Manifest, convention_for
from vlmjobs.vision.model import model_family

# Batches sorted by length are formed inside windows of this many micro-batches, so
# that grouping cuts padding while the order stays random across the epoch.
GROUP_WINDOW = 16


@dataclass(frozen=True)
class Sample:
    """One training example: an image, the user prompt and the assistant's target text."""

    image: Path
    prompt: str
    answer: str
    system: str | None = None
    image_size: tuple[int, int] | None = None  # (w, h) original pixels, when the record says


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line is a DataError naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{number}: not JSON ({error.msg}): fix or drop the line"
                ) from error
    return records


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _image(content: str | list[dict[str, Any]]) -> str | None:
    if isinstance(content, str):
        return None
    for part in content:
        if part.get("type") == "image":
            return str(part.get("image") or part.get("path") or part.get("url") or "")
    return None


def to_sample(record: dict[str, Any], base: Path, system: str | None) -> Sample:
    """One record in either format -> Sample; ``base`` resolves relative image paths."""
    size = tuple(record["image_size"]) if "image_size" in record else None
    if "messages" in record:
        by_role = {m["role"]: m["content"] for m in record["messages"]}
        if "user" not in by_role or "assistant" not in by_role:
            raise ValueError("messages need a user and an assistant turn")
        image = _image(by_role["user"])
        if not image:
            raise ValueError("the user turn has no image part")
        own_system = _text(by_role["system"]) if "system" in by_role else system
        return Sample(
            base / image, _text(by_role["user"]), _text(by_role["assistant"]), own_system, size
        )  # type: ignore[arg-type]
    if {"image", "prefix", "suffix"} <= record.keys():
        return Sample(base / record["image"], record["prefix"], record["suffix"], system, size)  # type: ignore[arg-type]
    raise ValueError(
        f"record has keys {sorted(record)}: expected 'messages' or 'image', 'prefix', 'suffix'"
    )


def read_samples(path: Path, system: str | None = None) -> list[Sample]:
    """All samples of a JSONL file; errors name the file and line."""
    samples = []
    roots = settings.allowed_roots()
    for number, record in enumerate(read_jsonl(path), 1):
        try:
            sample = to_sample(record, path.parent, system)
        except (KeyError, ValueError, TypeError) as error:
            raise DataError(f"{path}: record {number}: {error}") from error
        refused = outside_roots(sample.image, roots, "image")
        if refused:
            raise DataError(f"{path}: record {number}: {refused}")
        if not sample.image.is_file():
            raise DataError(f"{path}: record {number}: image {sample.image} does not exist")
        samples.append(sample)
    if not samples:
        raise DataError(f"{path} has no records: point data.path at a non-empty dataset")
    return samples


def split_off(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, val): a seeded share ``fraction`` held out (at least one when fraction > 0)."""
    if fraction <= 0 or len(samples) < 2:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * fraction))
    val_ids = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_ids]
    return train, [s for i, s in enumerate(samples) if i in val_ids]


def image_tokens(sample: Sample, min_pixels: int, max_pixels: int, *, factor: int = FACTOR) -> int:
    """Tokens the image becomes: one per factor x factor patch of the resized frame (28 for
    Qwen2/2.5-VL, 32 for Qwen3-VL; vision/family.py). Reads the image header only."""
    size = sample.image_size
    if size is None:
        with Image.open(sample.image) as image:
            size = image.size
    w, h = input_size(size, min_pixels, max_pixels, factor=factor)
    return (w // factor) * (h // factor)


def epoch_batches(
    lengths: list[int], micro_batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """The epoch's micro-batches as lists of sample indices; same arguments -> same batches.

    With ``group_by_length``, samples are sorted by length inside windows of
    GROUP_WINDOW micro-batches (less padding), the batches are shuffled, and the
    longest batch goes first so that an out-of-memory error shows at step 1.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size {micro_batch_size} must be >= 1")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    window = micro_batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + micro_batch_size] for i in range(0, len(chunk), micro_batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
    longest = max(range(len(batches)), key=lambda b: (max(lengths[i] for i in batches[b]), -b))
    batches.insert(0, batches.pop(longest))
    return batches


# ---------------------------------------------------------------- a train job's data


@dataclass
class TrainData:
    train: list[Sample]
    val: list[Sample]
    manifest: Manifest  # carried into the adapter: what infer must do to match training


def data_path(spec: TrainSpec) -> Path:
    """``data.path`` as a local path (``job:ID`` resolved against the artifact root)."""
    if is_job_ref(spec.data.path):
        return resolve_job_ref(spec.data.path, kind="clean", key="data_dir", what="data.path")
    return Path(spec.data.path)


def data_dir(spec: TrainSpec) -> Path | None:
    """Clean's output directory, or None when data.path is a single JSONL file."""
    path = data_path(spec)
    return path if path.is_dir() else None


def load_data(spec: TrainSpec) -> TrainData:
    """Train/val samples and the manifest, from clean's output dir or one JSONL file."""
    directory = data_dir(spec)
    if directory is not None:
        manifest = read_manifest(directory / "manifest.json")
        check_frame(manifest, spec, model_family(spec.model.path))
        train = read_samples(directory / "train.jsonl", system=manifest.system)
        val_path = Path(spec.data.val_path) if spec.data.val_path else directory / "val.jsonl"
        val = read_samples(val_path, system=manifest.system) if val_path.is_file() else []
    else:
        path = data_path(spec)
        train = read_samples(path, system=spec.data.system)
        if spec.data.val_path:
            val = read_samples(Path(spec.data.val_path).expanduser(), system=spec.data.system)
        else:
            train, val = split_off(train, spec.data.val_fraction, spec.seed)
        manifest = manifest_for_jsonl(spec, train)
    if spec.data.max_samples:
        train = train[: spec.data.max_samples]
    return TrainData(train, val[: spec.eval.max_samples], manifest)


def read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise DataError(f"{path} is missing: data.path must be a clean job's output directory")
    return Manifest.read(path)


def check_frame(manifest: Manifest, spec: TrainSpec, family: Family | None = None) -> None:
    """The targets' boxes are pixels of the frame clean resized to: training must see the same,
    with the same model family (its frame factor and box convention). ``family``: the base
    model's, when known (None skips that check)."""
    if family is not None and family.name != manifest.family:
        raise DataError(
            f"data was cleaned for model family {manifest.family!r} but model.path is a "
            f"{family.title} checkpoint ({family.name!r}): its targets' boxes would be in the "
            f"wrong frame and convention; clean the data again with family: {family.name}"
        )
    ours = (spec.model.min_pixels, spec.model.max_pixels)
    theirs = (manifest.min_pixels, manifest.max_pixels)
    if ours != theirs:
        raise DataError(
            f"data was cleaned for min/max pixels {theirs} but model.min_pixels/max_pixels "
            f"are {ours}: the boxes in the targets would be in the wrong frame; set "
            f"model.min_pixels: {theirs[0]} and model.max_pixels: {theirs[1]}"
        )


def manifest_for_jsonl(spec: TrainSpec, train: list[Sample]) -> Manifest:
    """A manifest for prefix/suffix JSONL data (no clean job wrote one).

    The prompt recorded is the first record's; when records differ, ``extra`` says so
    (infer must then be given each prompt explicitly).
    """
    prompts = {s.prompt for s in train}
    family = model_family(spec.model.path)
    return Manifest(
        base_model=spec.model.path,
        min_pixels=spec.model.min_pixels,
        max_pixels=spec.model.max_pixels,
        family=family.name,
        convention=convention_for(family),
        task=spec.data.task or "custom",
        prompt=train[0].prompt,
        system=spec.data.system,
        source=str(spec.data.path),
        extra={"prompts_vary": True} if len(prompts) > 1 else {},
    )


def sample_lengths(samples: list[Sample], processor: Any, spec: TrainSpec) -> list[int]:
    """Tokens per sample (image patches + prompt + answer): what length grouping sorts by."""
    texts = [s.prompt + s.answer for s in samples]
    text_tokens = [len(ids) for ids in processor.tokenizer(texts)["input_ids"]]
    lo, hi = spec.model.min_pixels, spec.model.max_pixels
    image = processor.image_processor
    factor = image.patch_size * image.merge_size
    return [
        t + image_tokens(s, lo, hi, factor=factor)
        for s, t in zip(samples, text_tokens, strict=True)
    ]


def collate(processor: Any, samples: list[Sample], device: str) -> dict[str, torch.Tensor]:
    """One micro-batch: chat template, image patches, labels on the answer tokens only."""
    return to_device(collate_cpu(processor, samples), device)


def collate_cpu(processor: Any, samples: list[Sample]) -> dict[str, Any]:
    """``collate`` up to the host: decoded images, resized, patchified, tokenized."""
    images = []
    for sample in samples:
        with Image.open(sample.image) as image:
            images.append(image.convert("RGB"))
    batch = build_inputs(
        processor,
        images,
        [s.prompt for s in samples],
        system=samples[0].system,
        answers=[s.answer for s in samples],
    )
    return dict(batch.items())


def to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Prefetcher:
    """Collates the next step's micro-batches on a CPU thread while the GPU runs this one.

    Inline, image decoding and the processor's resize cost the 3B job ~25% of each step
    (bench/jobs_gpu.py). Batches are keyed by their sample indices, so a part that was not
    asked for ahead (first step, a new epoch, a split after out-of-memory) is collated
    inline: the same function either way, so results do not depend on timing. The thread
    has its own processor copy: a fast tokenizer used from two threads at once raises.
    """

    def __init__(self, processor: Any, samples: list[Sample]) -> None:
        self._processor = copy.deepcopy(processor)
        self._inline = processor
        self._samples = samples
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlmjobs-collate")
        self._pending: dict[tuple[int, ...], Future[dict[str, Any]]] = {}

    def ahead(self, parts: list[list[int]]) -> None:
        for part in parts:
            key = tuple(part)
            if key not in self._pending:
                chosen = [self._samples[i] for i in part]
                self._pending[key] = self._pool.submit(collate_cpu, self._processor, chosen)

    def take(self, part: list[int], device: str) -> dict[str, Any]:
        future = self._pending.pop(tuple(part), None)
        if future is not None:
            batch = future.result()
        else:
            batch = collate_cpu(self._inline, [self._samples[i] for i in part])
        return to_device(batch, device)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
