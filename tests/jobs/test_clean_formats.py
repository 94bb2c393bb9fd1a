"""Input readers of the clean job: each format, detection, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmjobs.errors import DataError
from vlmjobs.recipes.clean.formats import detect_format, open_source


def _image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path)
    return path


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _jsonl(path: Path, lines: list[object | str]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


VG_REGIONS = [
    {
        "id": 1,
        "regions": [
            {"region_id": 10, "x": 5, "y": 6, "width": 20, "height": 10, "phrase": "a red door"},
            {"region_id": 11, "x": "bad", "y": 6, "width": 20, "height": 10, "phrase": "x"},
            {"region_id": 12, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "  "},
        ],
    },
    {"id": 2, "regions": [{"x": 0, "y": 0, "width": 8, "height": 8, "phrase": "sky"}]},
    {"regions": []},
]


def test_vg_reads_xywh_sizes_and_both_image_folders(tmp_path):
    _write(tmp_path / "region_descriptions.json", VG_REGIONS)
    url = "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg"
    image_data = [{"image_id": 1, "width": 64, "height": 48}, {"image_id": 2, "url": url}]
    _write(tmp_path / "image_data.json", image_data)
    _image(tmp_path / "VG_100K" / "1.jpg")
    _image(tmp_path / "VG_100K_2" / "2.jpg")
    source = open_source(tmp_path)  # a directory: finds region_descriptions.json
    items = list(source.items)
    assert (source.format, source.task, source.total) == ("vg", "dense_caption", 3)
    assert items[0].boxes.tolist() == [[5, 6, 25, 16]]
    assert items[0].phrases == ["a red door"]
    assert items[0].malformed == 2  # a non-numeric x, a blank phrase
    assert items[0].size == (64, 48)
    assert items[0].image == (tmp_path / "VG_100K" / "1.jpg").resolve()
    assert items[1].image == (tmp_path / "VG_100K_2" / "2.jpg").resolve()
    assert items[1].size is None  # no width/height in image_data: read from the file later
    assert items[2].problem == "record 2: no id or regions list"


COCO = {
    "info": {},
    "images": [
        {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 8, "file_name": "b.jpg", "width": 32, "height": 32},
        {"id": 9},
    ],
    "annotations": [
        {"id": 1, "image_id": 7, "bbox": [1, 2, 10, 20], "category_id": 3, "iscrowd": 0},
        {"id": 2, "image_id": 7, "bbox": [5, 5, 5, 5], "category_id": 4, "iscrowd": 0},
        {"id": 3, "image_id": 7, "bbox": [0, 0, 30, 30], "category_id": 3, "iscrowd": 1},
        {"id": 4, "image_id": 8, "bbox": [0, 0, 4, 4], "category_id": 99, "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "dog"}, {"id": 4, "name": "cat"}],
}


def test_coco_instances_match_pycocotools(tmp_path):
    from pycocotools.coco import COCO as CocoApi

    path = _write(tmp_path / "instances.json", COCO)
    source = open_source(path, images_dir=tmp_path / "imgs")
    items = {it.key: it for it in source.items}
    assert (source.format, source.task, source.labels) == ("coco", "detect", ["cat", "dog"])
    api = CocoApi(str(path))
    anns = api.loadAnns(api.getAnnIds(imgIds=[7], iscrowd=False))
    expected = [
        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
        for a in anns
    ]
    assert items["7"].boxes.tolist() == expected
    assert items["7"].phrases == [api.loadCats(a["category_id"])[0]["name"] for a in anns]
    assert items["7"].image == (tmp_path / "imgs" / "a.jpg").resolve()
    assert items["8"].malformed == 1  # unknown category id
    assert items["#9"].problem == "image entry without id or file_name"


def test_coco_captions(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A dog runs."},
            {"id": 2, "image_id": 1, "caption": "a dog running"},
            {"id": 3, "image_id": 1, "caption": ""},
        ],
    }
    source = open_source(_write(tmp_path / "captions.json", data))
    (item,) = list(source.items)
    assert (source.task, source.content) == ("caption", "captions")
    assert item.phrases == ["A dog runs.", "a dog running"]
    assert item.boxes.shape == (0, 4)
    assert item.malformed == 1


def test_regions_jsonl_with_bad_lines(tmp_path):
    path = _jsonl(
        tmp_path / "regions.jsonl",
        [
            {
                "image": "images/1.png",
                "width": 64,
                "height": 48,
                "regions": [
                    {"bbox": [1, 2, 3, 4], "phrase": "a circle"},
                    {"bbox": [1, 2, 3], "phrase": "three numbers"},
                    {"bbox": "nope", "phrase": "a string"},
                    {"phrase": "no box"},
                ],
            },
            "{not json",
            {"regions": []},
            "",
            {"image": "/abs/2.png", "regions": []},
        ],
    )
    source = open_source(path)
    items = list(source.items)
    assert (source.format, source.total, len(items)) == ("regions", 4, 4)
    assert items[0].boxes.tolist() == [[1, 2, 3, 4]]
    assert items[0].malformed == 3
    assert items[0].image == (tmp_path / "images" / "1.png").resolve()
    assert items[1].problem.startswith("line 2: not JSON")
    assert items[2].problem == "line 3: not an object with an 'image' path"
    assert items[3].image == Path("/abs/2.png") and items[3].size is None


@pytest.mark.parametrize(
    ("first", "expected_task", "expected_target"),
    [
        (
            {"image": "a.png", "prefix": "Read it", "suffix": {"total": 3}},
            "extract_json",
            '{"total": 3}',
        ),  # case: object suffix
        (
            {"image": "a.png", "prefix": "Read it", "suffix": '{"total": 3}'},
            "extract_json",
            '{"total": 3}',
        ),  # case: JSON text suffix
        (
            {"image": "a.png", "prefix": "What?", "suffix": "a cat"},
            "custom",
            "a cat",
        ),  # case: plain text suffix
    ],
)
def test_prompt_jsonl(tmp_path, first, expected_task, expected_target):
    path = _jsonl(tmp_path / "data.jsonl", [first, {"image": "b.png", "suffix": ""}])
    source = open_source(path)
    items = list(source.items)
    assert (source.format, source.task) == ("jsonl", expected_task)
    assert items[0].target == expected_target
    assert items[0].prompt == first["prefix"]
    assert items[1].problem == "line 2: no suffix (the target text)"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("x.jsonl", '{"image": "a", "regions": []}\n', "regions"),  # case: regions.jsonl
        ("x.jsonl", '\n{"image": "a", "suffix": "b"}\n', "jsonl"),  # case: blank first line
        ("x.json", '[{"id": 1, "regions": []}]', "vg"),  # case: a list is VG
        ("x.json", '{"info": {}, "images": []}', "coco"),  # case: COCO dict
        ("x.jsonl", '{"image": "a", "label": "b"}\n', DataError),  # case: unknown keys
        ("x.jsonl", "[1, 2]\n", DataError),  # case: not an object
        ("x.jsonl", "", DataError),  # case: empty file
        ("x.json", '{"foo": 1}', DataError),  # case: neither VG nor COCO
    ],
)
def test_detect_format(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    if isinstance(expected, type):
        with pytest.raises(expected, match=str(path)):
            detect_format(path)
    else:
        assert detect_format(path) == expected


def test_directory_without_a_known_file_is_an_error(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(DataError, match="holds 2 .json/.jsonl files"):
        open_source(tmp_path)


def test_unreadable_json_is_a_data_error(tmp_path):
    path = tmp_path / "region_descriptions.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="not readable JSON"):
        open_source(path)


def test_boxes_are_float64_arrays(tmp_path):
    path = _jsonl(tmp_path / "r.jsonl", [{"image": "a.png", "regions": []}])
    (item,) = list(open_source(path).items)
    assert item.boxes.dtype == np.float64 and item.boxes.shape == (0, 4)
