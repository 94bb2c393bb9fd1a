"""DenseCap-style AP: the protocol on hand-built cases, and the real MiniLM phrase similarity."""

from __future__ import annotations

import numpy as np
import pytest

from vlmjobs.eval.densecap import average_precision, densecap_metrics, minilm_embed
from vlmjobs.vision.regions import Regions

A, B, C = [0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]
GOLD = Regions(np.array([A, B, C], float), ["red circle", "blue square", "green star"])

# Hand-made unit vectors: a phrase is similar only to itself, except "crimson circle",
# which is 0.8 like "red circle". Testing the protocol needs exact similarities.
VECTORS = {
    "red circle": np.array([1.0, 0, 0, 0]),
    "crimson circle": np.array([0.8, 0.6, 0, 0]),
    "blue square": np.array([0, 0, 1.0, 0]),
    "green star": np.array([0, 0, 0, 1.0]),
}


def table(phrases: list[str]) -> dict[str, np.ndarray]:
    return {p: VECTORS[p] for p in phrases}


def pred(rows: list[tuple[list[float], str, float]]) -> Regions:
    boxes = np.array([b for b, _, _ in rows], float).reshape(-1, 4)
    return Regions(boxes, [p for _, p, _ in rows], np.array([s for _, _, s in rows]))


@pytest.mark.parametrize(
    "rows, key, want",
    [
        pytest.param(
            [(A, "red circle", 0.9), (B, "blue square", 0.8), (C, "green star", 0.7)],
            "mAP",
            1.0,
            id="perfect",
        ),
        pytest.param([(A, "red circle", 0.9)], "mAP", 1 / 3, id="one-of-three"),
        pytest.param(
            [(A, "red circle", 0.9), (A, "red circle", 0.8)], "AP_loc", 1 / 3, id="duplicate-after"
        ),
        pytest.param(
            [(A, "red circle", 0.5), (B, "green star", 0.9)],
            "AP_loc",
            2 / 3,
            id="wrong-phrase-located",
        ),
        pytest.param(
            [(A, "red circle", 0.5), (B, "green star", 0.9)],
            "AP_sim0.5",
            1 / 6,
            id="wrong-phrase-ranked-first",
        ),
        pytest.param([(A, "crimson circle", 0.9)], "AP_sim0.7", 1 / 3, id="paraphrase-passes-0.7"),
        pytest.param([(A, "crimson circle", 0.9)], "AP_sim0.9", 0.0, id="paraphrase-fails-0.9"),
        pytest.param([([0, 0, 10, 14], "red circle", 0.9)], "AP_iou0.7", 1 / 3, id="iou-0.71"),
        pytest.param([([0, 0, 10, 16], "red circle", 0.9)], "AP_iou0.7", 0.0, id="iou-0.625"),
        pytest.param([], "mAP", 0.0, id="nothing"),
    ],
)
def test_densecap_protocol(rows: list, key: str, want: float) -> None:
    got = densecap_metrics([(pred(rows), GOLD)], table)
    assert got[key] == pytest.approx(want)


def test_an_image_without_prediction_counts_as_missed() -> None:
    perfect = pred([(A, "red circle", 0.9), (B, "blue square", 0.8), (C, "green star", 0.7)])
    got = densecap_metrics([(perfect, GOLD), (None, GOLD)], table)
    assert got["mAP"] == pytest.approx(0.5) and got["ground_truth"] == 6


@pytest.mark.parametrize(
    "hits, scores, n_gold, want",
    [
        pytest.param([1, 1], [0.9, 0.8], 2, 1.0, id="all-right"),
        pytest.param([0, 1], [0.9, 0.8], 1, 0.5, id="wrong-first"),
        pytest.param([1, 0, 1], [0.9, 0.8, 0.7], 2, 0.5 + 0.5 * 2 / 3, id="interpolated"),
        pytest.param([1, 0, 1], [0.7, 0.8, 0.9], 2, 0.5 + 0.5 * 2 / 3, id="ranked-by-score"),
        pytest.param([1], [0.9], 4, 0.25, id="low-recall"),
    ],
)
def test_average_precision(hits: list, scores: list, n_gold: int, want: float) -> None:
    ap = average_precision(np.array(hits, bool)[:, None], np.array(scores, float), n_gold)
    assert ap[0] == pytest.approx(want)


def test_minilm_similarity_puts_a_paraphrase_between_same_and_other() -> None:
    embed = minilm_embed()
    v = embed(["red circle", "crimson circle", "blue square"])
    para, other = (
        float(v["red circle"] @ v["crimson circle"]),
        float(v["red circle"] @ v["blue square"]),
    )
    assert 0.5 < para < 0.99 and other < para
    got = densecap_metrics([(pred([(A, "crimson circle", 0.9)]), GOLD)], embed)
    assert got["AP_loc"] == pytest.approx(1 / 3) and got["AP_sim0.9"] == 0.0
