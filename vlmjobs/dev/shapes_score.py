"""How well an infer job found the shapes of a make-shapes data set (its truth.jsonl).

Counting is vlmjobs.eval's (F1 at IoU 0.5 with phrase match, micro-averaged); this
module only lines the job's outputs up with the truth and adds two numbers a demo
needs: the share of answers that parsed as written, and how well the boxes sit
regardless of phrase (mean IoU over a one-to-one greedy matching by IoU).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmjobs.eval.answers import RegionCounts, match_regions
from vlmjobs.vision.regions import iou_matrix, match_pairs


@dataclass(frozen=True)
class ShapesScore:
    images: int  # truth images the job labeled
    parse_ok: float  # share of them whose answer parsed as written (status ok)
    mean_iou: float  # mean IoU of greedily matched (prediction, truth) box pairs; 0 if none
    counts: RegionCounts  # F1 at IoU 0.5 with phrase match

    def line(self) -> str:
        """``held-out shapes: parse ok 95.0%, mean IoU 0.62, F1 0.71``."""
        return (
            f"held-out shapes: parse ok {100 * self.parse_ok:.1f}%, "
            f"mean IoU {self.mean_iou:.2f}, F1 {self.counts.f1:.2f}"
        )


def matched_ious(pred: np.ndarray, gold: np.ndarray) -> list[float]:
    """IoUs of a one-to-one matching, greedy from the highest IoU; pairs at 0 are not matched."""
    iou = iou_matrix(pred, gold)
    pairs = match_pairs(iou, iou > 0, 0.0)  # phrases ignored; boxes that do not touch never pair
    return [float(iou[i, j]) for i, j in pairs]


def score_outputs(outputs: Iterable[dict[str, Any]], truth: Path) -> ShapesScore:
    """Score infer outputs (``results``' dicts: source, status, parse_status, regions)
    against ``truth`` (truth.jsonl; image paths relative to it). Outputs of other images
    are ignored, truth images it did not process are not scored, and a failed item counts
    as a miss."""
    root = truth.parent.resolve()
    rows = [json.loads(line) for line in truth.read_text().splitlines() if line.strip()]
    gold = {str((root / r["image"]).resolve()): r["regions"] for r in rows}
    seen: dict[str, dict[str, Any]] = {}
    for out in outputs:
        source = str(Path(out["source"]).resolve())
        if out.get("t_start") is not None:  # a sampled video frame: truth names it by time
            source += f"#t={float(out['t_start']):.3f}"
        if source in gold:
            seen[source] = out
    if not seen:
        raise ValueError(f"no output of the job is an image of {truth}: wrong job or data set?")
    counts, ious, parsed = RegionCounts(), [], 0
    for source, regions in gold.items():
        if source not in seen:
            continue  # not in this job (a limit, another folder): not scored
        out = seen[source]
        gold_boxes = np.array([r["bbox"] for r in regions], dtype=float).reshape(-1, 4)
        gold_phrases = [r["phrase"] for r in regions]
        parsed += out["status"] == "ok" and out["parse_status"] == "ok"
        preds = out["regions"] if out["status"] == "ok" else []
        boxes = np.array([p["bbox"] for p in preds], dtype=float).reshape(-1, 4)
        counts = counts + match_regions(
            boxes, [p["phrase"] for p in preds], gold_boxes, gold_phrases
        )
        ious += matched_ious(boxes, gold_boxes)
    mean = float(np.mean(ious)) if ious else 0.0
    return ShapesScore(len(seen), parsed / len(seen), mean, counts)
