"""Read boxes (and JSON) out of model text; write the canonical training target.

Pure functions, no exceptions on bad text (only on bad sizes):

- ``parse_regions(text, *, input_size, image_size, convention="absolute", clip=True)
  -> ParseResult(regions, status, dropped)``: boxes come back in ORIGINAL-image
  pixels (vision/frames.py converts).
- ``format_regions(boxes_in_input_frame, phrases) -> str``: Qwen2.5-VL's own
  grounding format, the training target; ``parse_regions`` reads it back exactly.
- ``parse_json(text) -> (obj | None, status)``: for extract_json answers.

Formats read: fenced (```json) or bare JSON lists of {"bbox_2d" | "box_2d" | "bbox"
| "point_2d": [...], "label": ...}; Python-style lists of (phrase, [x1, y1, x2, y2])
tuples, either quote; plain lines "x1,y1,x2,y2 label"; Qwen-VL / Qwen2-VL tokens
<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>.
A leading ``<think>...</think>`` block (Qwen3.5 and other thinking models) is skipped: its
reasoning may quote boxes that are not the answer.

Status: ok (read as written) | repaired (malformed, read entry by entry) |
truncated (cut off; every complete entry kept) | empty (no text, or an empty
list) | unparseable (text with nothing readable). ``dropped`` counts entries
without a box or label, with non-numeric or wrong-length coordinates, or with
zero area after clipping.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vlmjobs.vision import frames
from vlmjobs.vision.frames import Convention
from vlmjobs.vision.regions import Regions

Status = Literal["ok", "repaired", "truncated", "empty", "unparseable"]

BOX_KEYS = ("bbox_2d", "box_2d", "bbox", "box")
POINT_KEYS = ("point_2d", "point")
LABEL_KEYS = ("label", "phrase", "caption", "description", "text", "name", "category")
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)(```|\Z)", re.S)
_REF = re.compile(
    r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>|<\|box_start\|>(.*?)<\|box_end\|>", re.S
)
_NUM = r"(-?\d+(?:\.\d+)?)"
_LINE = re.compile(
    rf"^\s*[-*]?\s*\(?{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\)?\s*[:\-]?\s*(.*?)\s*$"
)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_THINK = re.compile(r"\s*<think>.*?(</think>|\Z)", re.S)


@dataclass
class ParseResult:
    """``regions`` in original pixels; ``status`` (see module doc); ``dropped`` entries skipped."""

    regions: Regions
    status: str
    dropped: int

    def to_json(self) -> dict[str, Any]:
        """``{"regions": [{"bbox", "phrase"}], "status", "dropped"}``: the CLI's output."""
        return {"regions": self.regions.to_json(), "status": self.status, "dropped": self.dropped}


# One entry as read from the text: (coordinates as written, phrase, is_point) or None.
Entry = tuple[list[float], str, bool]


def parse_regions(
    text: str,
    *,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    convention: Convention = "absolute",
    clip: bool = True,
) -> ParseResult:
    """Regions in ``text``, mapped to original pixels of an ``image_size`` (w, h) image.

    ``convention="absolute"``: coordinates are pixels of the ``input_size`` (w, h) frame
    the model saw (Qwen2.5-VL); ``"1000"``: 0-1000 of the image (Qwen-VL, Qwen2-VL).
    Corners are ordered, boxes clipped to the image unless ``clip=False``, zero-area
    boxes dropped (a ``point_2d`` becomes a zero-size box at the point and is kept).
    Raises ValueError only for non-positive sizes or an unknown convention.
    """
    for name, size in (("input_size", input_size), ("image_size", image_size)):
        if len(size) != 2 or size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"{name} {size!r} must be (width, height), both positive")
    if convention not in ("absolute", "1000"):
        raise ValueError(f"convention {convention!r} must be 'absolute' or '1000'")
    items, status, dropped = _read(text)
    entries = [_entry(item) for item in items]
    good = [e for e in entries if e is not None]
    dropped += len(entries) - len(good)
    if not good:
        return ParseResult(Regions.empty(), status, dropped)
    raw = np.array([e[0] for e in good], dtype=np.float64)
    if convention == "absolute":
        boxes = frames.from_input_frame(raw, input_size, image_size)
    else:
        boxes = frames.from_1000(raw, image_size)
    unclipped = frames.order_corners(boxes)
    boxes = frames.clip_boxes(unclipped, image_size) if clip else unclipped
    points = np.array([e[2] for e in good])
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = points | ((width > 0) & (height > 0))
    if clip:  # a point outside the image is as lost as a box outside it
        w, h = image_size
        x, y = unclipped[:, 0], unclipped[:, 1]
        keep &= ~points | ((x >= 0) & (x <= w) & (y >= 0) & (y <= h))
    regions = Regions(boxes, [e[1] for e in good])[keep]
    return ParseResult(regions, status, dropped + int((~keep).sum()))


def format_regions(boxes_in_input_frame: np.ndarray, phrases: list[str]) -> str:
    """The training target: a ```json list of {"bbox_2d": [x1, y1, x2, y2], "label": phrase},
    integer pixels of the input frame (rounded half up), one region a line, tab-indented
    as Qwen2.5-VL writes it."""
    boxes = frames.as_boxes(boxes_in_input_frame)
    if len(boxes) != len(phrases):
        raise ValueError(f"{len(boxes)} boxes but {len(phrases)} phrases: need one each")
    if not len(boxes):
        return "```json\n[]\n```"
    ints = np.floor(boxes + 0.5).astype(np.int64).tolist()
    lines = [
        f'\t{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": {json.dumps(p, ensure_ascii=False)}}}'
        for (x1, y1, x2, y2), p in zip(ints, phrases, strict=True)
    ]
    return "```json\n[\n" + ",\n".join(lines) + "\n]\n```"


def parse_json(text: str) -> tuple[Any | None, Status]:
    """The first JSON value in ``text`` (fenced or bare) and a status.

    Python-literal quoting and trailing commas are repaired ("repaired"); a value
    cut off by max tokens is closed after its last complete element ("truncated").
    """
    stripped = text.strip()
    if not stripped:
        return None, "empty"
    payload, _ = _payload(stripped)
    start = _first_bracket(payload)
    if start is None:
        return None, "unparseable"
    body = payload[start:]
    try:
        return json.JSONDecoder().raw_decode(body)[0], "ok"
    except json.JSONDecodeError:
        pass
    _, end = _scan(body)
    if end is not None:
        obj = _loads_lenient(body[:end])
        return (obj, "repaired") if obj is not None else (None, "unparseable")
    obj = _close_truncated(body)
    return (obj, "truncated") if obj is not None else (None, "unparseable")


# --- reading the text -------------------------------------------------------------------


def _read(text: str) -> tuple[list[Any], Status, int]:
    """(raw items, status, entries already dropped) from any supported format."""
    thinking = _THINK.match(text)
    if thinking is not None and not thinking.group(1):
        return [], "truncated", 0  # cut off while still reasoning: no answer yet
    stripped = text[thinking.end() if thinking else 0 :].strip()
    if not stripped:
        return [], "empty", 0
    if "<|box_start|>" in stripped or "<|object_ref_start|>" in stripped:
        return _read_ref_tokens(stripped)
    payload, _ = _payload(stripped)
    start = _first_bracket(payload)
    if start is not None:
        items, status, dropped = _read_structure(payload[start:])
        if status == "ok" and not items and not dropped:
            return [], "empty", 0
        if status != "unparseable":
            return items, status, dropped
    items, dropped = _read_lines(stripped)
    if items or dropped:
        return items, "ok", dropped
    return [], "unparseable", 0


def _read_structure(body: str) -> tuple[list[Any], Status, int]:
    """Items of the JSON / Python list starting at ``body[0]``."""
    try:
        return _items_of(json.JSONDecoder().raw_decode(body)[0]), "ok", 0
    except json.JSONDecodeError:
        pass
    spans, end = _scan(body)
    if end is not None:
        obj = _loads_lenient(body[:end])
        if obj is not None:
            items = _items_of(obj)
            seed_style = bool(items) and all(isinstance(i, (list, tuple)) for i in items)
            return items, "ok" if seed_style else "repaired", 0
    items, dropped = [], 0
    for a, b in spans:
        obj = _loads_lenient(body[a:b])
        if obj is None:
            dropped += 1
        else:
            items.append(obj)
    if end is None:
        return items, "truncated", dropped
    return items, ("repaired" if items or dropped else "unparseable"), dropped


def _read_ref_tokens(text: str) -> tuple[list[Any], Status, int]:
    """Qwen-VL style: each <|box_start|>..<|box_end|> takes the phrase of the ref before it."""
    items: list[Any] = []
    phrase = ""
    for match in _REF.finditer(text):
        if match.group(1) is not None:
            phrase = match.group(1).strip()
            continue
        numbers = re.findall(r"-?\d+(?:\.\d+)?", match.group(2))
        items.append({"bbox_2d": numbers, "label": phrase})
    truncated = text.rfind("<|box_start|>") > text.rfind("<|box_end|>")
    return items, "truncated" if truncated else ("ok" if items else "unparseable"), 0


def _read_lines(text: str) -> tuple[list[Any], int]:
    """Lines "x1,y1,x2,y2 label"; other lines starting with a digit count as dropped."""
    items, dropped = [], 0
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            items.append({"bbox_2d": list(match.groups()[:4]), "label": match.group(5)})
        elif re.match(r"^\s*\d", line):
            dropped += 1
    return items, dropped


def _payload(text: str) -> tuple[str, bool]:
    """The inside of the first ``` fence (and whether it was left open), else the text."""
    match = _FENCE.search(text)
    if match is None:
        return text, False
    return match.group(1), match.group(2) == ""


def _first_bracket(text: str) -> int | None:
    positions = [i for i in (text.find("["), text.find("{")) if i >= 0]
    return min(positions) if positions else None


def _scan(body: str) -> tuple[list[tuple[int, int]], int | None]:
    """Spans of the complete bracketed elements directly inside ``body``'s first value, and
    the end of that value (None when it never closes: truncated). Quotes of both kinds."""
    spans: list[tuple[int, int]] = []
    depth, quote, escaped, item_start = 0, "", False, 0
    for i, ch in enumerate(body):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote, escaped = ch, False
        elif ch in "[{(":
            depth += 1
            if depth == 2:
                item_start = i
        elif ch in "]})":
            depth -= 1
            if depth == 1:
                spans.append((item_start, i + 1))
            elif depth == 0:
                return spans, i + 1
    return spans, None


def _loads_lenient(text: str) -> Any | None:
    """JSON, else a Python literal (single quotes, tuples), else JSON without trailing commas."""
    for attempt in (
        json.loads,
        ast.literal_eval,
        lambda s: json.loads(_TRAILING_COMMA.sub(r"\1", s)),
    ):
        try:
            return attempt(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _close_truncated(body: str) -> Any | None:
    """Cut ``body`` back to its last complete element and close what is open."""
    cuts: list[tuple[int, str]] = []  # (cut position, closers needed there)
    stack: list[str] = []
    quote, escaped = "", False
    closer = {"[": "]", "{": "}", "(": ")"}
    for i, ch in enumerate(body):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote, escaped = ch, False
        elif ch in closer:  # cut before an opener: an empty container would be a guess
            cuts.append((i, "".join(reversed(stack))))
            stack.append(closer[ch])
        elif ch in "]})" and stack:
            stack.pop()
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    for pos, closers in reversed(cuts[-200:]):
        obj = _loads_lenient(body[:pos] + closers)
        if obj is not None:
            return obj
    return None


# --- one entry ----------------------------------------------------------------------------


def _items_of(obj: Any) -> list[Any]:
    """The entries of a parsed value: a list, one region dict, or the first list in a dict."""
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        if any(k in obj for k in BOX_KEYS + POINT_KEYS):
            return [obj]
        for value in obj.values():
            if isinstance(value, list):
                return value
    return []


def _entry(item: Any) -> Entry | None:
    """(coordinates, phrase, is_point) of one item, or None when it must be dropped."""
    coords: Any = None
    phrase: Any = None
    point = False
    if isinstance(item, dict):
        phrase = next((item[k] for k in LABEL_KEYS if k in item), None)
        coords = next((item[k] for k in BOX_KEYS if k in item), None)
        if coords is None:
            coords = next((item[k] for k in POINT_KEYS if k in item), None)
            point = coords is not None
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        first, second = item
        phrase, coords = (first, second) if isinstance(first, str) else (second, first)
    if not isinstance(phrase, str) or not phrase.strip():
        return None
    numbers = _numbers(coords)
    if numbers is None or len(numbers) != (2 if point else 4):
        return None
    if point:
        numbers = numbers * 2
    return numbers, phrase.strip(), point


def _numbers(coords: Any) -> list[float] | None:
    """Flat finite floats of [x1, y1, x2, y2] or [[x1, y1], [x2, y2]]; None if not numeric."""
    if not isinstance(coords, (list, tuple)):
        return None
    flat: list[Any] = []
    for c in coords:
        flat.extend(c if isinstance(c, (list, tuple)) else [c])
    out = []
    for c in flat:
        if isinstance(c, bool) or not isinstance(c, (int, float, str)):
            return None
        try:
            value = float(c)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        out.append(value)
    return out
