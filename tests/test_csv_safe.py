"""CSV export cells that a spreadsheet would run as formulas are neutralized (OWASP)."""

from __future__ import annotations

import csv
import io

import pytest

from vlmjobs.exports import csv_safe, write_csv


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a red car", "a red car"),  # case: ordinary phrase
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),  # case: formula
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),  # case: DDE via +
        ("-2+3", "'-2+3"),  # case: minus
        ("@SUM(A1)", "'@SUM(A1)"),  # case: at
        ("\t=1", "'\t=1"),  # case: tab first
        ("\r=1", "'\r=1"),  # case: carriage return first
        ("a=b", "a=b"),  # case: = inside is harmless
        (-3.5, -3.5),  # case: numbers stay numbers
        (None, None),  # case: empty cell
    ],
)
def test_csv_safe(value: object, expected: object) -> None:
    assert csv_safe(value) == expected


def test_write_csv_neutralizes_model_output_and_sources() -> None:
    out = {
        "key": "k1",
        "source": "=evil.png",
        "image_w": 10,
        "image_h": 10,
        "regions": [{"bbox": [-1.0, 0, 5, 5], "phrase": "=1+1", "score": None}],
    }
    buf = io.StringIO()
    assert write_csv([out], buf) == 1
    row = next(csv.DictReader(io.StringIO(buf.getvalue())))
    assert (row["source"], row["phrase"], row["x1"]) == ("'=evil.png", "'=1+1", "-1.0")
