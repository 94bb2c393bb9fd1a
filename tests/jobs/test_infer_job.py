"""The infer job end to end: the real CLI, a real worker process, Redis, SQLite, the tiny model.

Over a folder, a tar.gz and a zip of synthetic images with bad files among them;
every export format read back; a worker killed with SIGKILL mid-job; batched
generation equal to one image at a time.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from sqlalchemy import func, select

from vlmjobs.db.models import Metric, Output
from vlmjobs.db.session import session
from vlmjobs.dev.build import make_model
from vlmjobs.render import MIN_SIDE

pytestmark = pytest.mark.slow

TASK = "dense_caption"
# Small frames keep the tiny model fast: 4..64 image tokens per image.
PIXELS = "min_pixels: 3136\n  max_pixels: 50176"
# Workers share 2 cores with the suite: torch's default 2 threads mostly spin-wait there.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# What the tiny model is taught to answer for every image: a region, a near-duplicate of it
# (IoU 0.9: de-duplication drops it) and a second region, in input-frame pixels.
ANSWER = (
    '```json\n[\n\t{"bbox_2d": [8, 10, 40, 50], "label": "a red square"},\n'
    '\t{"bbox_2d": [9, 10, 40, 51], "label": "a red square"},\n'
    '\t{"bbox_2d": [50, 20, 70, 60], "label": "a blue bar"}\n]\n```'
)


# Every distinct good image the tests below feed the model (folder, tar, zip, the kill test).
TEST_IMAGES = (0, 1, 2, 3, 4, 10, 11, 12, 20, 21, 22)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model ("base") and a copy fine-tuned in seconds to answer ANSWER
    ("answering"): random weights only ever emit newlines, which would leave the region
    path (parse, score, dedup, exports) untested.

    It is trained until its greedy answer IS ``ANSWER`` for every image the tests use,
    checked by generating, so the tests never depend on how well one library version's
    numerics generalize from a few training images to the others.
    """
    from vlmjobs.specs.common import ModelSpec
    from vlmjobs.vision.generate import Generator
    from vlmjobs.vision.inputs import build_inputs
    from vlmjobs.vision.model import load_model
    from vlmjobs.vision.tasks import prompt_for

    root = tmp_path_factory.mktemp("tiny")
    base = make_model(root / "base", arch="tiny", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 busy cores: one thread is several times faster here
    try:
        spec = ModelSpec(path=str(base), dtype="fp32", min_pixels=3136, max_pixels=50176)
        model, processor = load_model(spec, for_training=True)
        images = {i: Image.open(io.BytesIO(shape_png(i))).convert("RGB") for i in TEST_IMAGES}
        taught, wrong = [0, 3], list(TEST_IMAGES)
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _round in range(4):
            picked = [images[i] for i in taught]
            batch = build_inputs(
                processor, picked, [prompt_for(TASK)] * len(picked), answers=[ANSWER] * len(picked)
            )
            model.train()
            for _ in range(300):
                loss = model(**batch).loss
                if loss.item() < 0.01:
                    break
                loss.backward()
                opt.step()
                opt.zero_grad()
            wrong = _not_answering(model, processor, images, Generator, build_inputs, prompt_for)
            if not wrong:
                break
            taught = sorted(set(taught) | set(wrong))
        assert not wrong, f"the tiny model did not learn ANSWER for images {wrong}"
    finally:
        torch.set_num_threads(threads)
    out = root / "answering"
    model.save_pretrained(out)
    for f in base.iterdir():
        if not f.name.startswith(("model", "config")):
            shutil.copy(f, out / f.name)
    return {"base": base, "answering": out}


def _not_answering(model, processor, images, Generator, build_inputs, prompt_for) -> list[int]:
    """The ids of the images whose greedy answer is not exactly ANSWER."""
    model.eval()
    ids = list(images)
    batch = build_inputs(processor, [images[i] for i in ids], [prompt_for(TASK)] * len(ids))
    out = Generator(model, processor, max_batch=len(ids), engine="hf").generate(
        batch, max_new_tokens=128
    )
    return [i for i, g in zip(ids, out, strict=True) if g.text.strip() != ANSWER]


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the job system's own tests cover both backends; this keeps CPU time down."""
    return sqlite_url


def shape_png(i: int) -> bytes:
    """A distinct synthetic image: a coloured rectangle on a grey ground, sizes vary."""
    w, h = 96 + 17 * (i % 5), 72 + 13 * (i % 4)
    image = Image.new("RGB", (w, h), (128, 128, 128))
    image.paste((40 * i % 256, 90, 200 - 7 * i % 200), (5 + i % 20, 6, w // 2 + i % 30, h - 8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def big_png() -> bytes:
    """1200x1000 px, tiny on disk: over the test spec's max_image_pixels."""
    buf = io.BytesIO()
    Image.new("L", (1200, 1000), 0).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def data(tmp_path: Path) -> dict:
    """A folder (5 good, 4 bad), a tar.gz (3 good + a copy of a folder image + '../x.png'),
    a zip (3 good, one absolute member name)."""
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / ("sub" if i % 2 else "") / f"img{i}.png").write_bytes(shape_png(i))
    (folder / "corrupt.png").write_bytes(shape_png(99)[:200])
    (folder / "notes.png").write_text("not an image at all\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(big_png())
    tgz = tmp_path / "batch.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        members = [(f"t/{i}.png", shape_png(i)) for i in range(10, 13)]
        for name, blob in [*members, ("t/copy.png", shape_png(0)), ("../x.png", shape_png(50))]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    zpath = tmp_path / "batch.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(20, 23):
            zf.writestr(f"z/{i}.png", shape_png(i))
        zf.writestr("/abs.png", shape_png(51))
    return {"folder": folder, "tgz": tgz, "zip": zpath, "good": 5 + 3 + 3, "items": 9 + 5 + 4}


def write_spec(path: Path, model: Path, inputs: list, **extra: object) -> Path:
    lines = [
        "kind: infer",
        f"model:\n  path: {model}\n  dtype: fp32\n  {PIXELS}",
        f"inputs: {json.dumps([str(p) for p in inputs])}",
        f"task: {TASK}",
        "engine: hf",
        "max_image_pixels: 1000000",
    ] + [f"{k}: {json.dumps(v)}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def outputs_of(job_id: int) -> list[Output]:
    with session() as s:
        return list(s.scalars(select(Output).where(Output.job_id == job_id).order_by(Output.id)))


def test_infer_job_over_folder_tar_zip_and_exports(
    tiny, data, tmp_path, vlmjobs_cli, start_worker, wait_for_state
) -> None:
    start_worker(env=ONE_THREAD)
    cfg = write_spec(
        tmp_path / "infer.yaml",
        tiny["answering"],
        [data["folder"], data["tgz"], data["zip"]],
        batch_size=4,
        max_new_tokens=128,
    )
    res = vlmjobs_cli("submit", "infer", str(cfg))
    assert res.exit_code == 0, res.output
    job_id = int(res.stdout.strip())
    job = wait_for_state(job_id, {"succeeded"}, timeout=120)

    outs = outputs_of(job_id)
    ok = [o for o in outs if o.status == "ok"]
    failed = {Path(o.source.split("!")[-1]).name: o.error for o in outs if o.status == "failed"}
    assert len(ok) == data["good"] and len({o.item_key for o in outs}) == len(outs)
    assert failed["corrupt.png"].startswith("corrupt image")
    assert failed["notes.png"].startswith("not an image")
    assert failed["empty.png"] == "empty file (0 bytes)"
    assert failed["bomb.png"].startswith("decompression bomb: 1200x1000")
    assert failed["x.png"].startswith("unsafe archive member name '../x.png'")
    assert failed["abs.png"].startswith("unsafe archive member name '/abs.png'")
    assert not any("copy.png" in o.source for o in outs)  # same bytes as folder/img0.png
    assert all(o.raw_text is not None and o.generated_tokens and o.input_w for o in ok)
    assert (job.progress_done, job.progress_total) == (data["items"], data["items"])
    assert job.result["ok"] == data["good"] and job.result["failed"] == 6
    assert job.result["skipped"] == 1  # the duplicate
    with session() as s:
        names = set(s.scalars(select(Metric.name).where(Metric.job_id == job_id)))
    assert {"images_per_s", "parse_ok_rate"} <= names

    shown = vlmjobs_cli("status", str(job_id)).output
    assert (
        f"images    {data['items']}/{data['items']} done, " in shown and "parse ok 100.0%" in shown
    )
    check_exports(job_id, vlmjobs_cli, tmp_path, data)


def check_exports(job_id: int, vlmjobs_cli, tmp_path: Path, data: dict) -> None:
    paths = {}
    for fmt in ("jsonl", "coco", "labelstudio", "csv"):
        paths[fmt] = tmp_path / f"out.{fmt}"
        res = vlmjobs_cli("results", str(job_id), "--format", fmt, "--out", str(paths[fmt]))
        assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert len(rows) == data["good"] + 6 and {r["status"] for r in rows} == {"ok", "failed"}
    coco = COCO(str(paths["coco"]))
    assert len(coco.getImgIds()) == data["good"]
    regions = sum(len(r["regions"]) for r in rows)
    assert regions == 2 * data["good"]  # ANSWER's three, less the near-duplicate
    for r in rows:  # boxes come back in ORIGINAL pixels, from the frame each image was seen in
        if r["status"] == "ok":
            scale = [r["image_w"] / r["input_w"], r["image_h"] / r["input_h"]] * 2
            expected = [v * k for v, k in zip([50, 20, 70, 60], scale, strict=True)]
            assert r["regions"][1]["bbox"] == pytest.approx(expected)
    assert len(coco.getAnnIds()) == regions
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"a red square", "a blue bar"}
    res = coco.loadRes(json.loads(paths["coco"].read_text())["annotations"])
    assert all(0 < a["score"] <= 1 for a in res.anns.values())
    tasks = json.loads(paths["labelstudio"].read_text())
    assert len(tasks) == data["good"] and tasks[0]["predictions"][0]["model_version"] == "answering"
    assert len(list(csv.DictReader(paths["csv"].open()))) == regions
    res = vlmjobs_cli("render", str(job_id), "--out", str(tmp_path / "overlays"), "--limit", "4")
    assert res.exit_code == 0, res.output
    drawn = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(drawn) == 4
    sizes = {(r["image_w"], r["image_h"]) for r in rows if r["status"] == "ok"}
    # Drawn enlarged to at least MIN_SIDE (aspect kept), with the score legend below.
    scaled = {(round(w * max(1, MIN_SIDE / min(w, h))), round(h * max(1, MIN_SIDE / min(w, h))))
              for w, h in sizes}  # fmt: skip
    for p in drawn:
        w, h = Image.open(p).size
        assert any(w == sw and h >= sh for sw, sh in scaled), (w, h, scaled)


def test_killed_worker_resumes_with_one_output_per_image(
    tiny, tmp_path, vlmjobs_cli, start_worker, wait_for_state
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    n = 16
    for i in range(n):
        (folder / f"{i:02d}.png").write_bytes(shape_png(i))
    (folder / "zz-copy.png").write_bytes(shape_png(0))  # the same image from another file
    cfg = write_spec(
        tmp_path / "infer.yaml", tiny["base"], [folder], batch_size=2, read_ahead=1,
        max_new_tokens=32, min_new_tokens=32,
    )  # fmt: skip
    worker = start_worker(env=ONE_THREAD)
    job_id = int(vlmjobs_cli("submit", "infer", str(cfg)).stdout.strip())
    deadline = time.monotonic() + 90
    while _count(job_id) < 4:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.05)
    worker.kill()  # SIGKILL: no clean-up, the message is not acknowledged
    worker.wait()
    done_before = _count(job_id)
    assert done_before < n, "the job finished before the kill: make it longer"

    start_worker(env=ONE_THREAD)
    job = wait_for_state(job_id, {"succeeded"}, timeout=150)
    outs = outputs_of(job_id)
    assert len(outs) == n and len({o.item_key for o in outs}) == n
    assert all(o.status == "ok" for o in outs)
    assert job.attempts == 2 and job.result["skipped"] >= done_before
    assert (job.result["ok"], job.result["failed"]) == (n, 0)  # both attempts' rows, not the last's
    (first,) = [o for o in outs if o.source.endswith("00.png")]
    assert first.extra["sources"] == [str(folder / "00.png"), str(folder / "zz-copy.png")]


def _count(job_id: int) -> int:
    with session() as s:
        return int(s.scalar(select(func.count()).where(Output.job_id == job_id)) or 0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process generation on 2 shared cores: one torch thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("which", ["base", "answering"])
def test_batched_equals_one_at_a_time(tiny, tmp_path, one_thread, which: str) -> None:
    from vlmjobs.recipes.infer.inputs import iter_items
    from vlmjobs.recipes.infer.plan import make_plan
    from vlmjobs.recipes.infer.producer import Ready, prepare
    from vlmjobs.recipes.infer.recipe import label
    from vlmjobs.specs.infer import InferSpec
    from vlmjobs.vision.generate import Generator
    from vlmjobs.vision.model import load_model

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(shape_png(i))
    model_spec = {"path": str(tiny[which]), "dtype": "fp32", "min_pixels": 3136}
    spec = InferSpec.model_validate(
        {
            "model": {**model_spec, "max_pixels": 50176},
            "inputs": [str(folder)],
            "task": TASK,
            "max_new_tokens": 24 if which == "base" else 104,  # ANSWER: 98 tokens + EOS
            "engine": "hf",
        }
    )
    plan = make_plan(spec)
    model, processor = load_model(plan.model)
    generator = Generator(model, processor, max_batch=6, engine="hf")
    ready = [prepare(raw, spec, plan) for raw in iter_items(spec.inputs, [], [])]
    assert all(isinstance(r, Ready) for r in ready)
    assert len({r.tokens for r in ready}) > 1  # different sizes: real padding in the batch
    batched = label(generator, processor, ready, spec, plan)
    single = [label(generator, processor, [r], spec, plan)[0] for r in ready]
    for b, s in zip(batched, single, strict=True):
        assert (b.raw_text, b.generated_tokens, b.parse_status) == (
            s.raw_text,
            s.generated_tokens,
            s.parse_status,
        )
        assert [(r.x1, r.y1, r.x2, r.y2, r.phrase) for r in b.regions] == [
            (r.x1, r.y1, r.x2, r.y2, r.phrase) for r in s.regions
        ]
        assert [r.score for r in b.regions] == pytest.approx([r.score for r in s.regions], abs=1e-4)
        assert b.extra["mean_logprob"] == pytest.approx(s.extra["mean_logprob"], abs=1e-4)
    means = [b.extra["mean_logprob"] for b in batched]
    if which == "base":  # the images differ to the model: a row mix-up would show
        assert max(means) - min(means) > 1e-2
    else:  # the near-duplicate is gone, the other two regions are kept, scored
        assert all(b.parse_status == "ok" for b in batched)
        assert [[r.phrase for r in b.regions] for b in batched] == [
            ["a red square", "a blue bar"]
        ] * 6
        assert all(0 < r.score <= 1 for b in batched for r in b.regions)
