"""Setup of an infer job: which model, which pixel budget, which prompt and parser.

Precedence for every setting the adapter's manifest also carries (pixel limits,
prompt, system, task, box convention): a field written in the spec YAML, then the
manifest, then the defaults (ModelSpec / vision.tasks; the box convention and the
frame's factor: the base model's family, vision/family.py). The manifest is what the
adapter was trained with; a model asked in another frame or wording answers worse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmjobs.errors import ModelLoadError
from vlmjobs.recipes.context import OutputRecord, RegionRecord
from vlmjobs.recipes.refs import is_job_ref, resolve_job_ref
from vlmjobs.specs.common import ModelSpec
from vlmjobs.specs.infer import DedupSpec, InferSpec
from vlmjobs.vision import tasks
from vlmjobs.vision.family import DEFAULT, Family

if TYPE_CHECKING:
    from collections.abc import Callable

    from vlmjobs.vision.generate import Generation, Generator


@dataclass
class Parsed:
    """One answer read by the plan's parser; ``regions`` only for the regions parser."""

    status: str  # ok | repaired | truncated | empty | unparseable
    regions: Any = None  # vision.regions.Regions in ORIGINAL pixels, or None
    extra: dict[str, Any] = field(default_factory=dict)


def generate_answers(
    generator: Generator,
    batch: Any,
    spec: InferSpec,
    event: Callable[[str, str], None] | None = None,
) -> list[Generation]:
    """The spec's generation settings over one batch of model inputs (images or a clip).

    On CUDA out-of-memory the Generator frees the failed batch's cache and graphs and goes
    on at half the batch, down to one row (vision/generate.py); ``event`` hears of it.
    """
    return generator.generate(
        batch,
        max_new_tokens=spec.max_new_tokens,
        min_new_tokens=spec.min_new_tokens,
        repetition_penalty=spec.repetition_penalty,
        on_oom=None if event is None else lambda message: event(message, "warning"),
    )


def answer_record(
    gen: Generation,
    parsed: Parsed,
    *,
    key: str,
    source: str,
    size: tuple[int, int],
    frame: tuple[int, int],
    latency_ms: float,
    t_start: float | None,
    t_end: float | None,
    extra: dict[str, Any],
    regions: list[RegionRecord] | None = None,
) -> OutputRecord:
    """The output row of one generated answer (an image, a video frame or a clip): its text,
    how it parsed, the original ``size`` and model ``frame`` (w, h), token counts, ``extra``
    beside the parser's own, and the regions kept."""
    return OutputRecord(
        item_key=key,
        source=source,
        status="ok",
        raw_text=gen.text,
        parse_status=parsed.status,
        image_w=size[0],
        image_h=size[1],
        input_w=frame[0],
        input_h=frame[1],
        prompt_tokens=gen.prompt_tokens,
        generated_tokens=len(gen.token_ids),
        latency_ms=latency_ms,
        t_start=t_start,
        t_end=t_end,
        extra={"finished": gen.finished, **extra, **parsed.extra},
        regions=regions or [],
    )


@dataclass
class Plan:
    model: ModelSpec  # adapter resolved to a directory, pixel limits final
    task: str
    prompt: str
    system: str | None
    parser: str  # regions | json | text
    convention: str  # how the model writes boxes: absolute (input-frame px) | ...
    dedup_spec: DedupSpec
    json_schema: dict[str, Any] | None = None
    device: str = "cpu"  # where the phrase-embedding model runs, when dedup uses one
    family: Family = DEFAULT  # the base model's: frame factor, engine support
    # What images are asked when it differs from ``prompt`` (describe: the video prompt).
    image_prompt: str = ""
    _vectors: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.image_prompt = self.image_prompt or self.prompt

    @property
    def min_pixels(self) -> int:
        return self.model.min_pixels

    @property
    def max_pixels(self) -> int:
        return self.model.max_pixels

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) of the frame the model sees for an original (w, h) image."""
        return self.family.input_size(size, self.min_pixels, self.max_pixels)

    def describe(self) -> str:
        return (
            f"family={self.family.name} task={self.task} parser={self.parser} "
            f"convention={self.convention} "
            f"pixels=[{self.min_pixels}, {self.max_pixels}] adapter={self.model.adapter}"
        )

    def parse(
        self, text: str, frame: tuple[int, int], size: tuple[int, int], *, finished: bool
    ) -> Parsed:
        """Read one answer; ``frame`` / ``size``: (w, h) of the model's input and the original."""
        if self.parser == "regions":
            from vlmjobs.vision.parse import parse_regions

            result = parse_regions(
                text,
                input_size=frame,
                image_size=size,
                convention="1000" if self.convention == "1000" else "absolute",
            )
            return Parsed(result.status, result.regions, {"dropped": result.dropped})
        if self.parser == "json":
            from vlmjobs.vision.parse import parse_json

            value, parsed_status = parse_json(text)
            status: str = parsed_status
            extra: dict[str, Any] = {"json": value}
            if value is not None and self.json_schema is not None:
                errors = schema_errors(value, self.json_schema)
                if errors:
                    status, extra["schema_errors"] = "schema_invalid", errors[:10]
            return Parsed(status, None, extra)
        status = "empty" if not text.strip() else ("ok" if finished else "truncated")
        return Parsed(status)

    def dedup(self, regions: Any, scores: list[float | None]) -> list[tuple]:
        """(box xyxy, phrase, score) of the regions kept, in order; repeats (IoU above the
        threshold and the same normalised phrase) dropped when enabled, best score kept."""
        from vlmjobs.vision.regions import Regions, dedup

        # Scores are probabilities in (0, 1]; -1 stands for "none" and ranks last.
        ranked = Regions(
            regions.boxes, regions.phrases, np.array([-1.0 if s is None else s for s in scores])
        )
        if self.dedup_spec.enabled and len(ranked) > 1:
            ranked = dedup(
                ranked,
                iou_threshold=self.dedup_spec.iou_threshold,
                phrase_similarity=self._embedding_similarity
                if self.dedup_spec.phrase_similarity == "embedding"
                else None,
                phrase_threshold=self.dedup_spec.phrase_threshold,
            )
        return [
            (box, phrase, None if score < 0 else score)
            for box, phrase, score in zip(
                ranked.boxes.tolist(),
                ranked.phrases,
                [] if ranked.scores is None else ranked.scores.tolist(),
                strict=True,
            )
        ]

    def _embedding_similarity(self, phrases: list[str]) -> Any:
        """(N, N) cosine similarity of the phrases' MiniLM vectors (cached per phrase)."""
        from vlmjobs.recipes.clean.embed import PhraseVectors, load_sentence_model
        from vlmjobs.vision.regions import normalize_phrase

        if self._vectors is None:
            self._vectors = PhraseVectors(load_sentence_model(None, self.device))
        keys = [normalize_phrase(p) for p in phrases]
        found = self._vectors.lookup(keys)
        vectors = np.stack([found[k] for k in keys])
        return vectors @ vectors.T


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Where ``value`` breaks the JSON Schema ``schema`` (jsonschema, the schema's own draft
    or 2020-12), one ``$.path: message`` line per error in document order; [] when it
    conforms. The schema itself was checked at submit (specs/infer.py)."""
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.path])
    return [f"{error.json_path}: {error.message}" for error in errors]


def resolve_adapter(adapter: str | None) -> str | None:
    """An adapter directory: ``job:42`` -> that train job's ``result["adapter"]`` (relative
    to the artifact root), a path -> itself. ModelLoadError says what is wrong."""
    if adapter is None:
        return None
    if not is_job_ref(adapter):
        return str(Path(adapter).expanduser())
    try:
        return str(resolve_job_ref(adapter, kind="train", key="adapter", what="adapter"))
    except ValueError as error:
        raise ModelLoadError(str(error)) from None


def read_manifest(adapter_dir: str | None) -> Any:
    """The adapter's manifest, or None (no adapter, or an adapter made elsewhere)."""
    if adapter_dir is None:
        return None
    from vlmjobs.vision.manifest import Manifest

    path = Path(adapter_dir)
    if not (path / "manifest.json").is_file():
        return None
    return Manifest.read(path)


def _pick(explicit: Any, from_manifest: Any, default: Any) -> Any:
    for value in (explicit, from_manifest):
        if value is not None:
            return value
    return default


def make_plan(spec: InferSpec, device: str = "cpu") -> Plan:
    """Resolve the adapter, read its manifest, and settle every setting once."""
    from vlmjobs.vision.model import model_family

    adapter = resolve_adapter(spec.model.adapter)
    manifest = read_manifest(adapter)
    family = model_family(spec.model.path)
    if manifest is not None and manifest.family != family.name:
        raise ModelLoadError(
            f"adapter {adapter!r} was trained on a {manifest.family!r} model but model.path is "
            f"a {family.title} checkpoint ({family.name!r}): use the base model it was trained on"
        )
    m = spec.model
    written = m.model_fields_set
    pixels = {
        name: _pick(
            getattr(spec, name) or (getattr(m, name) if name in written else None),
            getattr(manifest, name, None),
            getattr(m, name),
        )
        for name in ("min_pixels", "max_pixels")
    }
    if pixels["min_pixels"] > pixels["max_pixels"]:
        raise ModelLoadError(
            f"min_pixels {pixels['min_pixels']} > max_pixels {pixels['max_pixels']} "
            "after applying the manifest: set both in the spec"
        )
    model = m.model_copy(update={"adapter": adapter, **pixels})
    task = (
        spec.task
        if "task" in spec.model_fields_set
        else _pick(None, _m(manifest, "task"), spec.task)
    )
    same_task = manifest is not None and _m(manifest, "task") == task
    prompt = spec.prompt or (_m(manifest, "prompt") if same_task else None)
    prompt = prompt or tasks.prompt_for(task, labels=spec.labels, phrase=spec.phrase)
    return Plan(
        model=model,
        task=task,
        prompt=prompt,
        image_prompt=tasks.CAPTION_PROMPT if task == "describe" and not spec.prompt else prompt,
        system=_pick(spec.system, _m(manifest, "system"), None),
        parser=spec.parser or tasks.parser_for(task),
        convention=manifest.frame_convention if manifest is not None else family.convention,
        dedup_spec=spec.dedup,
        json_schema=spec.json_schema,
        device=device,
        family=family,
    )


def _m(manifest: Any, name: str) -> Any:
    return getattr(manifest, name, None) if manifest is not None else None
