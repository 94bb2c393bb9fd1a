"""Pure parts of the clean job's output: split, reading order, caps, histogram, image checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmjobs.recipes.clean.images import check_image, draw_panel, kept_mask, safe_name
from vlmjobs.recipes.clean.records import assign_splits, cap_regions, reading_order, split_counts
from vlmjobs.recipes.clean.report import Tally, hist_labels, histogram
from vlmjobs.render import DROPPED, KEPT, MIN_SIDE
from vlmjobs.specs.clean import SplitSpec


@pytest.mark.parametrize(
    ("total", "shares", "expected"),
    [
        (100, (0.8, 0.1, 0.1), {"train": 80, "val": 10, "test": 10}),  # case: exact shares
        (10, (0.9, 0.1, 0.0), {"train": 9, "val": 1, "test": 0}),  # case: the default
        (5, (0.95, 0.05, 0.0), {"train": 4, "val": 1, "test": 0}),  # case: val rounds to 0 -> 1
        (1, (0.9, 0.1, 0.0), {"train": 1, "val": 0, "test": 0}),  # case: one image stays train
        (2, (0.9, 0.05, 0.05), {"train": 1, "val": 1, "test": 0}),  # case: no room for test
        (7, (1.0, 0.0, 0.0), {"train": 7, "val": 0, "test": 0}),  # case: all train
        (0, (0.9, 0.1, 0.0), {"train": 0, "val": 0, "test": 0}),  # case: empty
    ],
)
def test_split_counts(total, shares, expected):
    split = SplitSpec(train=shares[0], val=shares[1], test=shares[2])
    assert split_counts(total, split) == expected


def test_assign_splits_is_seeded_and_exact():
    split = SplitSpec(train=0.7, val=0.2, test=0.1)
    a, b, c = (assign_splits(50, split, seed) for seed in (3, 3, 4))
    assert a == b and a != c
    assert (a.count("train"), a.count("val"), a.count("test")) == (35, 10, 5)


def test_split_shares_must_add_up():
    with pytest.raises(ValueError, match="must add up to 1"):
        SplitSpec(train=0.9, val=0.2)


@pytest.mark.parametrize(
    ("boxes", "phrases", "expected"),
    [
        ([[0, 50, 9, 60], [0, 10, 9, 20]], ["low", "high"], [1, 0]),  # case: top first
        ([[50, 10, 60, 20], [5, 10, 9, 20]], ["right", "left"], [1, 0]),  # case: then left
        ([[5, 10.4, 9, 20], [2, 9.6, 9, 20]], ["b", "a"], [1, 0]),  # case: y rounds to 10 both
        ([[5, 10, 9, 20], [5, 10, 9, 20]], ["zebra", "apple"], [1, 0]),  # case: ties by phrase
        ([[5, 10, 9, 30], [5, 10, 9, 20]], ["tall", "short"], [1, 0]),  # case: then by y2
    ],
)
def test_reading_order(boxes, phrases, expected):
    assert reading_order(np.asarray(boxes, dtype=float), phrases) == expected


BOXES = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 20, 20], [0, 0, 30, 30]], dtype=float)


@pytest.mark.parametrize(
    ("indices", "sizes", "limit", "expected"),
    [
        ([0, 1, 2, 3], [1, 1, 1, 1], None, [0, 1, 2, 3]),  # case: no cap
        ([0, 1, 2, 3], [1, 1, 1, 1], 2, [1, 3]),  # case: equal clusters: the largest boxes
        ([0, 1, 2, 3], [5, 1, 1, 1], 2, [0, 1]),  # case: a big cluster beats a big box
        ([0, 2], [1, 1], 5, [0, 2]),  # case: under the cap
    ],
)
def test_cap_regions(indices, sizes, limit, expected):
    assert cap_regions(indices, sizes, BOXES, limit) == expected


def test_histogram_bins():
    assert hist_labels() == ["0", "1", "2-5", "6-10", "11-20", "21-50", "51-100", "101-200", "201+"]
    assert histogram([0, 1, 2, 5, 6, 300, 1000]) == [1, 1, 2, 1, 0, 0, 0, 0, 2]


def test_tally_summary_counts_reasons_and_removed_share():
    tally = Tally(images_total=3)
    tally.skip("x", "/x.png", "missing", "no file at /x.png")
    counts = {"before": 8, "malformed": 0, "too_small": 1, "merged": 3, "capped": 0, "after": 4}
    tally.image("a", "train", counts)
    summary = tally.summary()
    assert summary["removed_pct"] == 50.0
    assert summary["images"]["skipped_by_reason"] == {"missing": 1}
    assert summary["regions_per_image"]["before"][3] == 1  # 8 regions: the 6-10 bin


def _png(path: Path, size=(40, 30)) -> Path:
    Image.new("RGB", size, (1, 2, 3)).save(path)
    return path


def test_check_image_kinds(tmp_path):
    good = _png(tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png(tmp_path / "big.png", (400, 300)).read_bytes()[:200])
    (tmp_path / "text.png").write_text("not an image")
    assert check_image(good, (40, 30)) == ((40, 30), None)
    assert check_image(good, None) == ((40, 30), None)
    assert check_image(tmp_path / "nope.png", None)[1][0] == "missing"
    assert check_image(tmp_path / "text.png", None)[1][0] == "unreadable"
    assert check_image(good, (41, 30))[1][0] == "wrong_size"
    # The header of a truncated file reads fine; only decoding finds the damage.
    assert check_image(truncated, None, "header") == ((400, 300), None)
    assert check_image(truncated, None, "decode")[1][0] == "unreadable"


def test_draw_panel(tmp_path):
    image = _png(tmp_path / "a.png", (200, 100))
    boxes = np.array([[10, 10, 50, 50], [11, 10, 51, 52]], dtype=float)
    before = (boxes, ["a red square", "red square"])
    out = draw_panel(image, before, (boxes[:1], ["a red square"]), tmp_path / "p.png")
    scale = MIN_SIDE / 100
    with Image.open(out) as panel:
        assert panel.width == 2 * 200 * scale + 12 and panel.height > 100 * scale  # + legend
        # left: the kept box green, the dropped one red; right: only the kept one
        left = {c for _, c in panel.crop((0, 0, 200 * scale, 100 * scale)).getcolors(10**6)}
        right_box = (200 * scale + 12, 0, panel.width, 100 * scale)
        right = {c for _, c in panel.crop(right_box).getcolors(10**6)}
        assert {KEPT, DROPPED} <= left and KEPT in right and DROPPED not in right
    assert draw_panel(tmp_path / "missing.png", before, before, out) is None


@pytest.mark.parametrize(
    "before, kept, mask",
    [
        pytest.param(([[0, 0, 10, 10]], ["a"]), ([[0, 0, 10, 10]], ["a"]), [True], id="same"),
        pytest.param(([[0, 0, 10, 10]], ["a"]), ([[0, 0, 10, 10]], ["b"]), [False], id="phrase"),
        pytest.param(
            ([[0, 0, 10, 10], [1, 0, 11, 10]], ["a", "a"]),
            ([[0, 0, 10, 10]], ["a"]),
            [True, False],
            id="merged-duplicate",
        ),
        pytest.param(([[0, 0, 10, 10]], ["a"]), (np.zeros((0, 4)), []), [False], id="none-kept"),
    ],
)
def test_kept_mask(before, kept, mask):
    assert kept_mask(before, kept) == mask


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("images/0001.png", "images_0001.png"),  # case: a path
        ("line 3", "line_3"),  # case: spaces
        ("///", "item"),  # case: nothing left
    ],
)
def test_safe_name(key, expected):
    assert safe_name(key) == expected
