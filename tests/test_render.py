"""Overlays people can read: tag colours, label placement, boxes where the regions are."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmjobs.render import (
    DROPPED,
    KEPT,
    MIN_SIDE,
    colour_of,
    draw_panel,
    draw_regions,
    place_label,
    text_colour,
)

WHITE = (255, 255, 255)


@pytest.mark.parametrize(
    "fill, text",
    [
        pytest.param((255, 255, 0), (0, 0, 0), id="yellow-tag-black-text"),
        pytest.param((20, 20, 120), WHITE, id="dark-blue-tag-white-text"),
        pytest.param((40, 170, 80), (0, 0, 0), id="mid-green-tag-black-text"),
        pytest.param((215, 50, 50), WHITE, id="red-tag-white-text"),
        pytest.param((0, 0, 0), WHITE, id="black-tag-white-text"),
    ],
)
def test_text_contrasts_with_its_tag(fill: tuple, text: tuple) -> None:
    assert text_colour(fill) == text


@pytest.mark.parametrize(
    "box, taken, expected",
    [
        # case: room above the box, nothing else there -> above the top-left corner
        pytest.param((50, 50, 150, 150), [], (50, 30, 110, 50), id="above"),
        # case: box touches the top edge -> the tag goes inside the top, not cut off
        pytest.param((50, 0, 150, 100), [], (50, 0, 110, 20), id="top-edge-inside"),
        # case: a neighbour right above -> inside the box's top instead
        pytest.param((50, 50, 150, 150), [(40, 10, 160, 49)], (50, 50, 110, 70), id="avoid"),
        # case: box at the right edge -> the tag is shifted left to stay in the image
        pytest.param((180, 50, 200, 90), [], (140, 30, 200, 50), id="right-edge"),
    ],
)
def test_label_placement(box: tuple, taken: list, expected: tuple) -> None:
    assert place_label(box, (60, 20), (200, 200), taken) == expected


def test_overlay_draws_boxes_tags_and_a_legend() -> None:
    image = Image.new("RGB", (200, 100), WHITE)
    regions = [
        {"bbox": [10.0, 40.0, 110.0, 90.0], "phrase": "a red square", "score": 0.5},
        {"bbox": [130.0, 10.0, 190.0, 60.0], "phrase": "a blue bar", "score": 0.9},
    ]
    drawn = draw_regions(image, regions)
    scale = MIN_SIDE / 100  # the short side is enlarged to MIN_SIDE
    assert drawn.width == 200 * scale and drawn.height > 100 * scale  # legend below
    left_edge = (round(10 * scale) + 1, round(75 * scale))
    assert drawn.getpixel(left_edge) == colour_of("a red square")
    assert drawn.getpixel((round(60 * scale), round(80 * scale))) == WHITE  # inside untouched
    # The red square's tag sits above its top-left corner, in its colour.
    assert drawn.getpixel((round(12 * scale), round(40 * scale) - 4)) == colour_of("a red square")
    # The legend lists both regions: one swatch each in the strip under the image.
    strip = drawn.crop((0, round(100 * scale), 30, drawn.height))
    colours = {c for _, c in strip.getcolors(10_000)}
    assert {colour_of("a red square"), colour_of("a blue bar")} <= colours

    def first_row(colour: tuple) -> int:
        return min(y for y in range(strip.height) if strip.getpixel((15, y)) == colour)

    # Highest score first: the blue bar (0.9) is listed above the red square (0.5).
    assert first_row(colour_of("a blue bar")) < first_row(colour_of("a red square"))


def test_clean_panel_marks_dropped_regions_red() -> None:
    image = Image.new("RGB", (100, 100), WHITE)
    before = [
        {"bbox": [10, 10, 60, 60], "phrase": "a red circle", "score": None},
        {"bbox": [12, 11, 61, 60], "phrase": "red circle", "score": None},
    ]
    panel = draw_panel(image, before, [True, False], before[:1], "000001.png")
    scale = MIN_SIDE / 100
    half = round(100 * scale)
    assert panel.getpixel((round(35 * scale), round(60 * scale) - 1)) in (KEPT, DROPPED)
    right = panel.crop((half + 12, 0, panel.width, half))
    assert DROPPED not in {c for _, c in right.getcolors(100_000)}  # after: kept only
    left = panel.crop((0, 0, half, half))
    assert {KEPT, DROPPED} <= {c for _, c in left.getcolors(100_000)}
