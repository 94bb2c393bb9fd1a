"""Manifest: write/read round trip, atomic write, clear errors."""

from __future__ import annotations

import json

import pytest

from vlmjobs.errors import DataError
from vlmjobs.vision.manifest import FILENAME, Manifest


def _manifest(**kw) -> Manifest:
    base = dict(
        base_model="/models/qwen2.5-vl-3b",
        min_pixels=256 * 784,
        max_pixels=1280 * 784,
        task="dense_caption",
        prompt="Locate every object.",
        system="You are a helpful assistant.",
        source="/data/shapes/regions.jsonl",
        extra={"n_train": 400},
    )
    return Manifest(**{**base, **kw})


def test_write_read_round_trip(tmp_path):
    m = _manifest()
    path = m.write(tmp_path / "out")
    assert path == tmp_path / "out" / FILENAME
    assert [p.name for p in (tmp_path / "out").iterdir()] == [FILENAME]  # no temp file left
    assert Manifest.read(tmp_path / "out") == m
    assert Manifest.read(path) == m
    assert json.loads(path.read_text())["version"] == 1
    assert m.input_size((517, 383)) == (532, 392)  # below min_pixels: scaled up


def test_unknown_keys_go_to_extra(tmp_path):
    path = _manifest().write(tmp_path)
    data = json.loads(path.read_text())
    data["added_later"] = 7
    path.write_text(json.dumps(data))
    assert Manifest.read(tmp_path).extra == {"n_train": 400, "added_later": 7}


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "no manifest.json"),  # case: missing
        ("{not json", "not valid JSON"),  # case: broken JSON
        ("[1, 2]", "JSON object"),  # case: a list, not an object
        ('{"min_pixels": 1, "max_pixels": 2}', "missing"),  # case: required keys missing
        (json.dumps({**_manifest().to_dict(), "task": "segment"}), "task 'segment'"),
        # case: unknown task
        (json.dumps({**_manifest().to_dict(), "min_pixels": 10**7}), "min_pixels 10000000"),
        # case: min above max
        (json.dumps({**_manifest().to_dict(), "convention": "xyxy"}), "convention 'xyxy'"),
        # case: unknown coordinate convention
    ],
)
def test_read_errors_name_the_problem(tmp_path, content, message):
    if content is not None:
        (tmp_path / FILENAME).write_text(content)
    with pytest.raises(DataError, match=message):
        Manifest.read(tmp_path)
