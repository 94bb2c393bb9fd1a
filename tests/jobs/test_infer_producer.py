"""The infer producer: skips done keys and duplicates before decoding, honours limit,
buckets each read-ahead window by image tokens, and reports what it settled."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
from PIL import Image

from vlmjobs.dev.build import make_model
from vlmjobs.recipes.infer import producer
from vlmjobs.recipes.infer.inputs import iter_items
from vlmjobs.recipes.infer.plan import make_plan
from vlmjobs.recipes.infer.producer import Unit
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.model import load_processor

SIZES = [(300, 60), (60, 60), (200, 200), (90, 120), (300, 300), (56, 56), (140, 70)]


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    path = make_model(tmp_path_factory.mktemp("tiny") / "m", arch="tiny")
    return path, load_processor(path, min_pixels=784, max_pixels=50176)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Seven images of different sizes, a duplicate of the first, a non-image."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i, size in enumerate(SIZES):
        Image.new("RGB", size, (i * 30, 0, 0)).save(root / f"{i}.png")
    (root / "7_dup.png").write_bytes((root / "0.png").read_bytes())
    (root / "8_bad.png").write_text("text")
    return root


def produce(spec: InferSpec, processor, done: set[str]) -> list[Unit]:
    plan = make_plan(spec)
    units: queue.Queue = queue.Queue()
    producer.produce(spec, plan, processor, done, units, threading.Event())
    return list(units.queue)


def make_spec(path: Path, folder: Path, **fields: object) -> InferSpec:
    model = {"path": str(path), "min_pixels": 784, "max_pixels": 50176}
    return InferSpec.model_validate({"model": model, "inputs": [str(folder)], **fields})


def test_windows_are_bucketed_by_tokens(processor, folder: Path) -> None:
    path, proc = processor
    units = produce(make_spec(path, folder, batch_size=2, read_ahead=2), proc, set())
    batches = [u.ready for u in units if u.ready]
    assert [len(b) for b in batches] == [2, 2, 2, 1]  # windows of 4, then the rest
    for window in ([*batches[0], *batches[1]], [*batches[2], *batches[3]]):
        assert [r.tokens for r in window] == sorted(r.tokens for r in window)
    assert sorted(Path(r.source).name for b in batches for r in b) == [f"{i}.png" for i in range(7)]
    for unit in units:
        if unit.ready:  # the batch was built for exactly these images, in this order
            grid = unit.batch["image_grid_thw"]
            assert [(int(h) // 2) * (int(w) // 2) for _, h, w in grid] == [
                r.tokens for r in unit.ready
            ]
    assert sum(u.skipped for u in units) == 1  # the duplicate
    assert [f.error for u in units for f in u.failed] == [
        "not an image: Pillow cannot identify the file's format"
    ]


def test_done_keys_are_skipped_and_limit_counts_them(processor, folder: Path) -> None:
    path, proc = processor
    spec = make_spec(path, folder, batch_size=4, limit=5)
    first_three = {raw.key for raw in list(iter_items([folder], [], []))[:3]}
    units = produce(spec, proc, first_three)
    labeled = [Path(r.source).name for u in units for r in u.ready]
    assert sorted(labeled) == ["3.png", "4.png"]  # 3 done + 2 new = limit 5
    assert sum(u.skipped for u in units) == 3


_WINDOW_RSS = """
import queue, resource, sys, threading
from pathlib import Path
from vlmjobs.recipes.infer.producer import produce
from vlmjobs.recipes.infer.plan import make_plan
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.model import load_processor

model, folder = sys.argv[1], sys.argv[2]
proc = load_processor(model, min_pixels=784, max_pixels=50176)
spec = InferSpec.model_validate({
    "model": {"path": model, "min_pixels": 784, "max_pixels": 50176},
    "inputs": [folder], "batch_size": 2, "read_ahead": 4, "max_image_pixels": 10**9,
})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
units = queue.Queue()  # unbounded: every prepared image stays alive to the end
produce(spec, make_plan(spec), proc, set(), units, threading.Event())
ready = [r for u in units.queue if u.ready for r in u.ready]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
print(len(ready), all(r.image.size == r.frame for r in ready))
"""


@pytest.mark.slow
def test_read_ahead_window_holds_model_frames_not_originals(processor, tmp_path: Path) -> None:
    """Eight 6000 x 6000 PNGs (108 MB each decoded) in one read-ahead window: the window keeps
    them at the model's frame, so the peak grows by about one original, not eight."""
    import subprocess
    import sys

    path, _ = processor
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (6000, 6000), (i * 30, 90, 10)).save(folder / f"{i}.png")
    out = subprocess.run(
        [sys.executable, "-c", _WINDOW_RSS, str(path), str(folder)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    grown, count, at_frame = out.stdout.split()[-3:]
    assert int(grown) < 400, f"peak RSS grew {grown} MB: originals kept in the window"
    assert (count, at_frame) == ("8", "True")
