"""Benchmark of `vlmjobs eval`'s scoring: COCO and DenseCap-style metrics on a large set.

    python bench/eval.py                       # 5,000 images x 50 regions
    python bench/eval.py --images 500 --regions 20

Ground truth: ``--images`` images with ``--regions`` boxes each, phrases "<colour> <noun>"
from a colour x noun vocabulary (so COCO sees ~550 categories, as an open-vocabulary
label set does). Predictions: every truth box jittered (IoU mostly 0.6-0.95), 10% of them
with another phrase, 10% dropped, 10% extra random boxes; random confidences. Times cover
what `vlmjobs eval` does after reading the files: image matching, building COCOeval's
inputs and running it; for DenseCap, the MiniLM embedding of the distinct phrases (shown
apart) and the matching, and the region P/R/F1 that its rows carry. One ranking each (the
command runs two: ranked and confidence=1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

from vlmjobs.eval.coco import coco_engine, coco_inputs, coco_metrics  # noqa: E402
from vlmjobs.eval.data import Predictions, Truth  # noqa: E402
from vlmjobs.eval.densecap import densecap_metrics, minilm_embed  # noqa: E402
from vlmjobs.eval.images import match_images  # noqa: E402
from vlmjobs.eval.tasks import region_f1_metrics  # noqa: E402
from vlmjobs.vision.regions import Regions  # noqa: E402

COLOURS = "red blue green white black yellow brown grey orange pink purple silver".split()
NOUNS = (
    "car tree man woman dog cat window building sign shirt hat bus train clock plate table "
    "chair cup boat bird horse sheep cow fence road sky cloud grass door wall bag bike pole "
    "light umbrella kite pizza laptop phone book bench flower leaf roof wheel jacket"
).split()
PHRASES = [f"{c} {n}" for c in COLOURS for n in NOUNS]


def make_set(images: int, regions: int, seed: int = 0) -> tuple[Truth, Predictions]:
    rng = np.random.default_rng(seed)
    truth, preds = Truth("regions"), Predictions("bench")
    for i in range(images):
        name = f"images/{i:06d}.jpg"
        xy = rng.uniform(0, 500, (regions, 2))
        wh = rng.uniform(10, 200, (regions, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        phrases = [PHRASES[k] for k in rng.integers(0, len(PHRASES), regions)]
        truth.regions[name] = Regions(boxes, phrases)
        truth.sizes[name] = (700, 700)
        keep = rng.random(regions) > 0.1
        jitter = rng.normal(0, 0.04, (regions, 4)) * np.repeat(wh, 2, axis=1)
        p_boxes = (boxes + jitter)[keep]
        p_phrases = [
            p if rng.random() > 0.1 else PHRASES[rng.integers(len(PHRASES))]
            for p in np.array(phrases)[keep]
        ]
        extra = regions // 10
        e_xy = rng.uniform(0, 500, (extra, 2))
        p_boxes = np.concatenate([p_boxes, np.concatenate([e_xy, e_xy + 50], axis=1)])
        p_phrases += [PHRASES[k] for k in rng.integers(0, len(PHRASES), extra)]
        preds.regions[f"/data/set/{name}"] = Regions(p_boxes, p_phrases, rng.random(len(p_phrases)))
    return truth, preds


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--engine", choices=["faster-coco-eval", "pycocotools"], default=None)
    parser.add_argument("--skip-densecap", action="store_true")
    args = parser.parse_args()
    truth, preds = make_set(args.images, args.regions)
    n_pred = sum(len(r) for r in preds.regions.values())
    print(
        f"{args.images} images, {args.images * args.regions} truth regions, {n_pred} predictions, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}"
    )
    match, t_match = timed(lambda: match_images(preds.names, truth.names))
    rows = [("match images by file name", t_match, f"{len(match.pairs)} matched")]
    for agnostic in (False, True):
        inputs, t_in = timed(lambda a=agnostic: coco_inputs(truth, preds, match, class_agnostic=a))
        metrics, t_eval = timed(lambda i=inputs: coco_metrics(i, args.engine))
        what = "class-agnostic" if agnostic else f"{len(inputs.gt['categories'])} categories"
        what += f", {args.engine or coco_engine()}"
        rows.append(
            (f"coco ({what})", t_in + t_eval, f"AP {metrics['AP']:.4f} (inputs {t_in:.1f} s)")
        )
    if args.skip_densecap:
        return _table(rows)
    embed, t_load = timed(minilm_embed)
    gold_to_pred = {g: p for p, g in match.pairs.items()}
    pairs = [(preds.regions.get(gold_to_pred.get(g, "")), r) for g, r in truth.regions.items()]
    _, t_embed = timed(lambda: embed(PHRASES))
    dense, t_dense = timed(lambda: densecap_metrics(pairs, embed))
    rows.append(
        (
            f"densecap (MiniLM load {t_load:.1f} s, embed {len(PHRASES)} phrases {t_embed:.1f} s)",
            t_dense,
            f"mAP {dense['mAP']:.4f}",
        )
    )
    f1, t_f1 = timed(lambda: region_f1_metrics(pairs))
    rows.append(
        ("region P/R/F1 at IoU 0.5 (densecap rows carry it)", t_f1, f"F1 {f1['region_f1']:.4f}")
    )
    _table(rows)


def _table(rows: list[tuple[str, float, str]]) -> None:
    print(f"| {'step':<70} | {'seconds':>8} | result |")
    print(f"| {'-' * 70} | {'-' * 8} | --- |")
    for what, seconds, result in rows:
        print(f"| {what:<70} | {seconds:>8.1f} | {result} |")


if __name__ == "__main__":
    main()
