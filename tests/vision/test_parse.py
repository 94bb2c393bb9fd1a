"""parse_regions / parse_json / format_regions: one row per case of what models really write."""

from __future__ import annotations

import numpy as np
import pytest

from vlmjobs.vision import frames
from vlmjobs.vision.parse import format_regions, parse_json, parse_regions

SAME = dict(input_size=(1000, 1000), image_size=(1000, 1000))  # identity frame: boxes as written

# Qwen2.5-VL's grounding answer as in its cookbook (tab-indented, fenced).
QWEN25 = """```json
[
\t{"bbox_2d": [135, 114, 716, 672], "label": "cake"},
\t{"bbox_2d": [34, 12, 101, 98], "label": "candle"}
]
```"""
SEED = "[('a man', [12, 30, 200, 400]), ('a red umbrella', [150, 10, 380, 120])]"


@pytest.mark.parametrize(
    "text,boxes,phrases,status,dropped",
    [
        (QWEN25, [[135, 114, 716, 672], [34, 12, 101, 98]], ["cake", "candle"], "ok", 0),
        # case: Qwen2.5-VL fenced JSON, as in its cookbook
        ('[{"bbox_2d": [1, 2, 30, 40], "label": "a dog"}]', [[1, 2, 30, 40]], ["a dog"], "ok", 0),
        # case: bare JSON list
        ('Here you go: [{"bbox_2d": [1, 2, 30, 40], "label": "a dog"}] Done.', [[1, 2, 30, 40]],
         ["a dog"], "ok", 0),
        # case: prose around a bare list
        ('{"bbox_2d": [1, 2, 30, 40], "label": "a dog"}', [[1, 2, 30, 40]], ["a dog"], "ok", 0),
        # case: one object instead of a list
        ('[{"box_2d": [1, 2, 30, 40], "label": "x"}, {"bbox": [5, 5, 9, 9], "phrase": "y"}]',
         [[1, 2, 30, 40], [5, 5, 9, 9]], ["x", "y"], "ok", 0),
        # case: box_2d and bbox keys, phrase as label key
        ('[{"point_2d": [50, 60], "label": "nose"}]', [[50, 60, 50, 60]], ["nose"], "ok", 0),
        # case: a point becomes a zero-size box at the point
        (SEED, [[12, 30, 200, 400], [150, 10, 380, 120]], ["a man", "a red umbrella"], "ok", 0),
        # case: the seed's Python list of tuples, single quotes
        ('[("a man\'s hat", [12, 30, 200, 400])]', [[12, 30, 200, 400]], ["a man's hat"], "ok", 0),
        # case: the seed's tuples, double quotes (apostrophe inside)
        ("```python\n" + SEED + "\n```", [[12, 30, 200, 400], [150, 10, 380, 120]],
         ["a man", "a red umbrella"], "ok", 0),
        # case: the seed's tuples inside a python fence
        ("12,30,200,400 a man\n150, 10, 380, 120 a red umbrella",
         [[12, 30, 200, 400], [150, 10, 380, 120]], ["a man", "a red umbrella"], "ok", 0),
        # case: plain lines
        ("Objects:\n12,30,200,400 a man\n1,2,x,4 junk", [[12, 30, 200, 400]], ["a man"], "ok", 1),
        # case: plain lines with a non-numeric line dropped and prose ignored
        (QWEN25[:-20], [[135, 114, 716, 672]], ["cake"], "truncated", 0),
        # case: fenced JSON cut off inside the second entry
        (SEED[:-12], [[12, 30, 200, 400]], ["a man"], "truncated", 0),
        # case: the seed's tuples cut off
        ('```json\n[\n\t{"bbox_2d": [1, 2, 30, 40], "label": "a"},\n\t{"bbox_2d": [5, 6, 7',
         [[1, 2, 30, 40]], ["a"], "truncated", 0),
        # case: generation stopped at max tokens mid-box
        ("[{'bbox_2d': [1, 2, 30, 40], 'label': 'a'}]", [[1, 2, 30, 40]], ["a"], "repaired", 0),
        # case: Python-quoted dicts
        ('[{"bbox_2d": [1, 2, 30, 40], "label": "a"},]', [[1, 2, 30, 40]], ["a"], "repaired", 0),
        # case: trailing comma
        ('[{"bbox_2d": [1, 2, 30, 40], "label": "a"}, {"bbox_2d": [1, 2, "x", 4], "label": "b"},'
         ' {"bbox_2d": [1, 2, 3, 4]}, {"label": "c"}, {"bbox_2d": [1, 2, 3], "label": "d"}]',
         [[1, 2, 30, 40]], ["a"], "ok", 4),
        # case: non-numeric, missing label, missing box, 3 coordinates: dropped and counted
        ('[{"bbox_2d": ["1", "2", "30", "40"], "label": "a"}]', [[1, 2, 30, 40]], ["a"], "ok", 0),
        # case: numbers written as strings
        ('[{"bbox_2d": [[1, 2], [30, 40]], "label": "a"}]', [[1, 2, 30, 40]], ["a"], "ok", 0),
        # case: corners as two points
        ('[{"bbox_2d": [30, 40, 1, 2], "label": "a"}]', [[1, 2, 30, 40]], ["a"], "ok", 0),
        # case: corners swapped
        ('[{"bbox_2d": [10, 10, 10, 50], "label": "a"}]', [], [], "ok", 1),
        # case: zero-width box dropped
        ('[{"bbox_2d": [-5, 900, 50, 1200], "label": "a"}]', [[0, 900, 50, 1000]], ["a"], "ok", 0),
        # case: clipped to the image
        ('[{"bbox_2d": [1100, 10, 1200, 50], "label": "a"}]', [], [], "ok", 1),
        # case: entirely outside the image: zero area after clipping
        ('[{"bbox_2d": [1, 2, 30, 40], "label": "a", "label_zh": "甲"}, {"bbox_2d": [5, 5, 9, 9],'
         ' "label": "狗"}]', [[1, 2, 30, 40], [5, 5, 9, 9]], ["a", "狗"], "ok", 0),
        # case: extra keys and non-ASCII labels
        ("<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>",
         [[100, 200, 300, 400]], ["a dog"], "ok", 0),
        # case: Qwen-VL reference tokens (identity frame here)
        ("```json\n[]\n```", [], [], "empty", 0),
        # case: an empty list
        ("   ", [], [], "empty", 0),
        # case: blank text
        ("I cannot see any objects in this image.", [], [], "unparseable", 0),
        # case: prose without regions
        ("[unclear]", [], [], "unparseable", 0),
        # case: brackets but nothing readable
        ("```json\n[\n\t{\"bbox_2d\": [1, 2", [], [], "truncated", 0),
        # case: cut off before the first entry completes
    ],
)  # fmt: skip
def test_parse_regions_table(text, boxes, phrases, status, dropped):
    got = parse_regions(text, **SAME)
    np.testing.assert_allclose(got.regions.boxes, np.asarray(boxes, float).reshape(-1, 4))
    assert got.regions.phrases == phrases
    assert (got.status, got.dropped) == (status, dropped)


def test_absolute_boxes_map_from_the_input_frame_to_original_pixels():
    text = '[{"bbox_2d": [28, 56, 280, 560], "label": "a"}]'
    got = parse_regions(text, input_size=(560, 840), image_size=(1000, 1500))
    np.testing.assert_allclose(got.regions.boxes, [[50, 100, 500, 1000]])


def test_1000_convention_maps_relative_to_the_image():
    text = "<|object_ref_start|>a<|object_ref_end|><|box_start|>(100,200),(500,1000)<|box_end|>"
    got = parse_regions(text, input_size=(560, 840), image_size=(640, 480), convention="1000")
    np.testing.assert_allclose(got.regions.boxes, [[64, 96, 320, 480]])


def test_no_clip_keeps_boxes_outside_the_image():
    text = '[{"bbox_2d": [-5, 900, 50, 1200], "label": "a"}]'
    got = parse_regions(text, **SAME, clip=False)
    np.testing.assert_allclose(got.regions.boxes, [[-5, 900, 50, 1200]])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(input_size=(0, 10), image_size=(10, 10)), "input_size"),  # case: zero width
        (dict(input_size=(10, 10), image_size=(10, -1)), "image_size"),  # case: negative height
        (dict(**SAME, convention="0-1"), "convention"),  # case: unknown convention
    ],
)
def test_bad_sizes_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_regions("[]", **kwargs)


@pytest.mark.parametrize("seed", range(5))
def test_format_then_parse_round_trips_exactly(seed):
    rng = np.random.default_rng(seed)
    image = (int(rng.integers(200, 2000)), int(rng.integers(200, 2000)))
    inp = frames.input_size(image, 256 * 784, 1280 * 784)
    xy = rng.uniform(0, 0.5, size=(8, 2)) * image
    boxes = np.concatenate([xy, xy + rng.uniform(0.01, 0.5, size=(8, 2)) * image], axis=1)
    phrases = [f'a "quoted" {i}\tthing, {{ok}}' for i in range(8)]
    target_boxes = np.floor(frames.to_input_frame(boxes, image, inp) + 0.5)
    text = format_regions(frames.to_input_frame(boxes, image, inp), phrases)
    got = parse_regions(text, input_size=inp, image_size=image, clip=False)
    assert (got.status, got.dropped, got.regions.phrases) == ("ok", 0, phrases)
    np.testing.assert_array_equal(
        got.regions.boxes, frames.from_input_frame(target_boxes, inp, image)
    )


def test_format_regions_is_qwens_layout():
    text = format_regions(np.array([[1.4, 2.5, 30.6, 40.0]]), ["a small red circle"])
    assert (
        text == '```json\n[\n\t{"bbox_2d": [1, 3, 31, 40], "label": "a small red circle"}\n]\n```'
    )
    assert format_regions(np.zeros((0, 4)), []) == "```json\n[]\n```"


@pytest.mark.parametrize(
    "text,obj,status",
    [
        ('```json\n{"name": "ACME", "total": 12.5}\n```', {"name": "ACME", "total": 12.5}, "ok"),
        # case: fenced object
        ('The answer: {"a": [1, 2]} thanks', {"a": [1, 2]}, "ok"),
        # case: bare object in prose
        ("{'a': 1, 'b': (2, 3)}", {"a": 1, "b": (2, 3)}, "repaired"),
        # case: Python quoting
        ('{"a": 1, "b": 2,}', {"a": 1, "b": 2}, "repaired"),
        # case: trailing comma
        ('{"name": "ACME", "items": [{"sku": 1}, {"sku": 2}, {"sk', {"name": "ACME",
         "items": [{"sku": 1}, {"sku": 2}]}, "truncated"),
        # case: cut off in a key: the incomplete element goes
        ('{"name": "ACME", "total": "12', {"name": "ACME"}, "truncated"),
        # case: cut off inside a string value: never half a value
        ('{"a": "x \\" y", "b": [1', {"a": 'x " y'}, "truncated"),
        # case: escaped quote before the cut; a trailing number may be cut short: dropped
        ("", None, "empty"),
        # case: blank
        ("no json here", None, "unparseable"),
        # case: prose
    ],
)  # fmt: skip
def test_parse_json_table(text, obj, status):
    assert parse_json(text) == (obj, status)
