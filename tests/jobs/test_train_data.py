"""Training data: record formats, the seeded split, and the batch order (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmjobs.errors import DataError
from vlmjobs.recipes.train.data import (
    GROUP_WINDOW,
    Sample,
    epoch_batches,
    image_tokens,
    read_samples,
    split_off,
    to_sample,
)

BASE = Path("/data")
CHAT = {
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {
            "role": "user",
            "content": [{"type": "image", "image": "/abs/a.png"}, {"type": "text", "text": "Q"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
    ],
    "image_size": [10, 20],
}


@pytest.mark.parametrize(
    "record, expected",
    [
        (CHAT, Sample(Path("/abs/a.png"), "Q", "A", "be brief", (10, 20))),  # case: clean's chat
        (
            {"image": "x.jpg", "prefix": "Q", "suffix": "A"},
            Sample(BASE / "x.jpg", "Q", "A", "sys", None),
        ),  # case: seeds' prefix/suffix, relative image, default system
        (
            {"messages": [CHAT["messages"][1], {"role": "assistant", "content": "A"}]},
            Sample(Path("/abs/a.png"), "Q", "A", "sys", None),
        ),  # case: string content, no system turn
        ({"image": "x.jpg", "prefix": "Q"}, ValueError("expected 'messages'")),  # case: no suffix
        (
            {"messages": [CHAT["messages"][0], CHAT["messages"][2]]},
            ValueError("user and an assistant"),
        ),  # case: no user turn
        (
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            ValueError("no image"),
        ),  # case: text-only user turn
    ],
)
def test_to_sample(record: dict, expected: Sample | Exception) -> None:
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=str(expected)):
            to_sample(record, BASE, "sys")
    else:
        assert to_sample(record, BASE, "sys") == expected


def test_read_samples_names_file_and_record(tmp_path: Path) -> None:
    Image.new("RGB", (56, 28)).save(tmp_path / "ok.png")
    path = tmp_path / "d.jsonl"
    lines = [
        {"image": "ok.png", "prefix": "Q", "suffix": "A"},
        {"image": "missing.png", "prefix": "Q", "suffix": "A"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl: record 2: image .*missing\.png"):
        read_samples(path)
    path.write_text(json.dumps(lines[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not JSON"):
        read_samples(path)


def test_image_tokens_reads_header(tmp_path: Path) -> None:
    Image.new("RGB", (56 * 20, 28 * 20)).save(tmp_path / "i.png")
    sample = Sample(tmp_path / "i.png", "Q", "A")
    # 1120x560 fits under max: 40x20 patches of 28 px.
    assert image_tokens(sample, min_pixels=28 * 28, max_pixels=10**7) == 40 * 20
    # With (w, h) in the record the file is not even opened.
    assert image_tokens(Sample(Path("/nope"), "Q", "A", None, (56, 56)), 28 * 28, 10**7) == 4


@pytest.mark.parametrize(
    "n, fraction, n_val",
    [
        (10, 0.1, 1),  # case: ordinary
        (10, 0.0, 0),  # case: no validation wanted
        (3, 0.01, 1),  # case: at least one when asked
        (1, 0.5, 0),  # case: a single sample stays for training
    ],
)
def test_split_off(n: int, fraction: float, n_val: int) -> None:
    samples = [Sample(Path(f"{i}.png"), "Q", str(i)) for i in range(n)]
    train, val = split_off(samples, fraction, seed=3)
    assert len(val) == n_val and len(train) + len(val) == n
    assert set(train).isdisjoint(val)
    assert split_off(samples, fraction, seed=3) == (train, val)  # seeded: same split every run


@pytest.mark.parametrize(
    "n, mbs, group",
    [
        (10, 4, False),  # case: last batch partial
        (10, 4, True),  # case: grouped
        (200, 3, True),  # case: several grouping windows
        (1, 4, True),  # case: one sample
    ],
)
def test_epoch_batches_cover_every_sample_once(n: int, mbs: int, group: bool) -> None:
    lengths = [(i * 37) % 101 for i in range(n)]
    batches = epoch_batches(lengths, mbs, seed=0, epoch=0, group_by_length=group)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(1 <= len(b) <= mbs for b in batches)
    assert batches == epoch_batches(lengths, mbs, seed=0, epoch=0, group_by_length=group)


def test_epoch_batches_grouping_cuts_padding_and_puts_longest_first() -> None:
    lengths = [(i * 7919) % 1000 for i in range(400)]

    def padding(batches: list[list[int]]) -> int:
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    grouped = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    plain = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=False)
    assert padding(grouped) < padding(plain) / 5
    assert max(lengths[i] for i in grouped[0]) == max(lengths)
    # Windows keep the order random: the batches are not globally sorted by length.
    maxima = [max(lengths[i] for i in b) for b in grouped[1:]]
    assert maxima != sorted(maxima, reverse=True) and len(grouped) > GROUP_WINDOW


def test_epoch_batches_differ_by_epoch_and_seed() -> None:
    lengths = list(range(50))
    base = epoch_batches(lengths, 4, seed=0, epoch=0, group_by_length=True)
    assert base != epoch_batches(lengths, 4, seed=0, epoch=1, group_by_length=True)
    assert base != epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
