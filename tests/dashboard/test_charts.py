"""The dashboard's inline SVG charts: pure functions, checked by parsing the SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from vlmjobs.dashboard.charts import PAD_B, PAD_T, H, histogram, line_chart

NS = "{http://www.w3.org/2000/svg}"


def _svg(markup: str) -> ET.Element:
    with_ns = str(markup).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    return ET.fromstring(with_ns)


@pytest.mark.parametrize(
    "points, n_points",
    [
        pytest.param([(1, 3.0), (2, 2.0), (3, 1.0)], 3, id="falling-loss"),
        pytest.param([(5, 0.7)], 1, id="one-point-gets-a-dot"),
        pytest.param([(1, 2.0), (2, float("nan")), (3, 1.0)], 2, id="nan-left-out"),
        pytest.param([(1, 0.5), (2, 0.5)], 2, id="flat-line"),
    ],
)
def test_line_chart_draws_every_finite_point(points: list, n_points: int) -> None:
    svg = _svg(line_chart("loss", points))
    coords = svg.find(f"{NS}polyline").get("points").split()
    assert len(coords) == n_points
    ys = [float(c.split(",")[1]) for c in coords]
    assert all(PAD_T <= y <= H - PAD_B for y in ys)  # inside the plot area
    if points[0][1] > points[-1][1]:
        assert ys[0] < ys[-1]  # SVG y grows downwards: the high first value sits on top


def test_line_chart_escapes_names_and_handles_no_values() -> None:
    svg = _svg(line_chart("<val_f1>", []))
    assert svg.get("aria-label") == "<val_f1>" and svg.find(f"{NS}polyline") is None
    assert "no values" in ET.tostring(svg, encoding="unicode")


def test_histogram_bins_scores_over_zero_to_one() -> None:
    svg = _svg(histogram("scores", [0.0, 0.05, 0.5, 0.55, 0.99, 1.0, 1.2], bins=10))
    bars = svg.findall(f"{NS}rect")
    counts = [int(b.find(f"{NS}title").text.rsplit(": ", 1)[1]) for b in bars]
    assert counts == [2, 0, 0, 0, 0, 2, 0, 0, 0, 3]  # 1.0 and above land in the last bin
    heights = [float(b.get("height")) for b in bars]
    assert heights[9] > heights[0] > 0 == heights[1]
