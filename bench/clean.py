"""Benchmark of the clean pipeline on a Visual-Genome-sized synthetic set; prints a table.

    python bench/clean.py                      # 1000 images, embeddings on cuda if present
    python bench/clean.py --images 5000 --embed-model DIR

The set is written in VG's layout (region_descriptions.json + image_data.json +
VG_100K/<id>.jpg): ~50 regions per image, several overlapping boxes per object
(jittered copies, IoU mostly 0.5-0.9) with paraphrased phrases drawn from a
shared vocabulary, so phrases repeat across images as in VG. The pipeline runs
as the job runs it (``recipes.clean.recipe.clean``: read, check image headers, group,
embed, cluster, write JSONL), without Celery or a database.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# The repo root instead of bench/ (bench/queue.py would shadow the stdlib's queue).
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

from vlmjobs.recipes.clean.embed import PhraseVectors, embed_device, load_sentence_model  # noqa: E402
from vlmjobs.recipes.clean.recipe import clean  # noqa: E402
from vlmjobs.specs.clean import CleanSpec  # noqa: E402

COLOURS = "red blue green white black yellow brown grey orange pink purple silver".split()
NOUNS = (
    "car tree man woman dog cat window building sign shirt hat bus train clock plate table "
    "chair cup boat bird horse sheep cow fence road sky cloud grass door wall bag bike pole "
    "light umbrella kite pizza laptop phone book bench flower leaf roof wheel jacket"
).split()
PLACES = (
    "street road field wall table ground water beach sidewalk grass snow building park "
    "shelf floor counter window corner background foreground"
).split()
TEMPLATES = (
    "{c} {n}",
    "a {c} {n}",
    "the {n} is {c}",
    "{c} {n} on the {p}",
    "a {n} that is {c}",
    "{n} in the {p}",
    "the {c} {n} near the {p}",
    "part of a {n}",
)
SIZES = ((800, 600), (600, 800), (500, 375), (1024, 768), (640, 480), (800, 533))


def _object_regions(rng: np.random.Generator, w: int, h: int) -> list[dict]:
    """Several annotators describing one object: jittered boxes, paraphrased phrases."""
    bw, bh = rng.uniform(0.08, 0.5) * w, rng.uniform(0.08, 0.5) * h
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    c, n = rng.choice(COLOURS), rng.choice(NOUNS)
    out = []
    for _ in range(1 + rng.poisson(2.6)):
        jx, jy = rng.normal(0, 0.07, 2) * (bw, bh)
        sx, sy = rng.normal(1.0, 0.08, 2)
        phrase = rng.choice(TEMPLATES).format(c=c, n=n, p=rng.choice(PLACES))
        out.append(
            {
                "x": int(max(0, x + jx)),
                "y": int(max(0, y + jy)),
                "width": int(max(2, bw * sx)),
                "height": int(max(2, bh * sy)),
                "phrase": phrase,
            }
        )
    return out


def make_vg_set(root: Path, n_images: int, seed: int = 0) -> dict[str, float]:
    """Write the synthetic set under ``root``; returns its statistics."""
    rng = np.random.default_rng(seed)
    (root / "VG_100K").mkdir(parents=True, exist_ok=True)
    regions, meta, phrases = [], [], []
    for image_id in range(1, n_images + 1):
        w, h = SIZES[rng.integers(len(SIZES))]
        Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3))).save(
            root / "VG_100K" / f"{image_id}.jpg", quality=60
        )
        rs = [r for _ in range(14) for r in _object_regions(rng, w, h)]
        regions.append({"id": image_id, "regions": rs})
        meta.append({"image_id": image_id, "width": w, "height": h})
        phrases += [r["phrase"] for r in rs]
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    (root / "image_data.json").write_text(json.dumps(meta))
    return {
        "regions_per_image": len(phrases) / n_images,
        "unique_phrase_pct": 100.0 * len(set(phrases)) / len(phrases),
    }


def _row(name: str, device: str, summary: dict, stats: dict) -> str:
    r, emb = summary["regions"], summary.get("embeddings", {})
    return (
        f"| {name} | {device} | {summary['images']['processed']} "
        f"| {stats['regions_per_image']:.1f} | {stats['unique_phrase_pct']:.0f}% "
        f"| {summary['images_per_s']:.1f} | {r['before']} | {r['after']} "
        f"| {summary['removed_pct']:.1f}% | {emb.get('encoded', '-')} "
        f"| {emb.get('seconds', '-')} | {summary['seconds']:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-model", default=None, help="SentenceTransformer dir (default MiniLM)")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--chunk-size", type=int, default=256)
    args = ap.parse_args()

    device = args.device or embed_device()
    with tempfile.TemporaryDirectory(prefix="clean-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        stats = make_vg_set(root / "vg", args.images, args.seed)
        print(f"synthetic VG set: {args.images} images in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        model = load_sentence_model(args.embed_model, device)
        print(f"sentence model loaded on {device} in {time.perf_counter() - started:.1f} s")
        base = {"input": str(root / "vg"), "chunk_size": args.chunk_size}
        if args.embed_model:
            base["embed_model"] = args.embed_model
        rows = []
        for name, semantic in (("semantic", True), ("exact phrases", False)):
            spec = CleanSpec(**base, semantic=semantic)
            vectors = PhraseVectors(model, spec.embed_batch_size) if semantic else None
            summary = clean(spec, root / f"out-{semantic}", vectors=vectors)
            assert summary is not None
            rows.append(_row(name, device if semantic else "-", summary, stats))
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} CPUs, chunk {args.chunk_size}\n")
    print(
        "| run | embed device | images | regions/img | unique phrases | images/s "
        "| regions before | after | removed | phrases embedded | embed s | total s |"
    )
    print("|" + "---|" * 12)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
