"""Confidence of each parsed region, from the generated tokens' log-probabilities.

A region's score is the geometric mean of the probabilities of the tokens that
overlap its JSON entry ``{"bbox_2d": [...], "label": "..."}`` in the answer:
``exp(mean(logprob))`` over those tokens, in (0, 1]. Token -> character spans
come from the byte-level BPE pieces (Qwen's tokenizer); entries are located by a
brace scanner and matched to the parser's regions in order by label. A region
whose entry cannot be located gets the whole answer's geometric mean.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

from vlmjobs.vision.generate import Generation
from vlmjobs.vision.parse import LABEL_KEYS

# The parser's label keys (a region the parser reads by "name" is scored by its own tokens).
_LABEL_RE = re.compile(r'"(?:' + "|".join(LABEL_KEYS) + r')"\s*:\s*"((?:[^"\\]|\\.)*)"')


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table, inverted (byte-level BPE pieces -> bytes)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_ends(tokenizer: Any, ids: list[int], text: str) -> list[int] | None:
    """End offset in ``text`` of each token (special tokens are zero-width), or None when the
    pieces do not rebuild ``text`` (not a byte-level BPE)."""
    special = set(tokenizer.all_special_ids)
    decoder = _byte_decoder()
    buf, ends = bytearray(), []
    for tid, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids), strict=True):
        if tid not in special and piece is not None:
            if any(c not in decoder for c in piece):
                return None
            buf += bytes(decoder[c] for c in piece)
        # A character split across tokens counts for the token that completes it.
        ends.append(len(buf.decode("utf-8", errors="ignore")))
    return ends if buf.decode("utf-8", errors="replace") == text else None


def entry_spans(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, label) of each complete ``{...}`` object at the top level of ``text``'s
    JSON (objects inside objects are part of their parent)."""
    spans, depth, start, in_str, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1, _label(text[start : i + 1])))
    return spans


def _label(entry: str) -> str | None:
    try:
        obj = json.loads(entry)
    except ValueError:
        found = _LABEL_RE.search(entry)
        return found.group(1).strip() if found else None
    if isinstance(obj, dict):
        for key in LABEL_KEYS:
            if isinstance(obj.get(key), str):
                return obj[key].strip()
    return None


def geometric_mean_prob(logprobs: list[float]) -> float | None:
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    return math.exp(sum(finite) / len(finite)) if finite else None


def region_scores(gen: Generation, tokenizer: Any, phrases: list[str]) -> list[float | None]:
    """One score per parsed region (``phrases`` in the parser's order)."""
    whole = geometric_mean_prob(gen.logprobs)
    ends = token_ends(tokenizer, gen.token_ids, gen.text)
    if ends is None:
        return [whole] * len(phrases)
    entries, cursor, scores = entry_spans(gen.text), 0, []
    for phrase in phrases:
        k = next((k for k in range(cursor, len(entries)) if entries[k][2] == phrase.strip()), None)
        if k is None:
            scores.append(whole)
            continue
        cursor = k + 1
        lo, hi = entries[k][0], entries[k][1]
        starts = [0, *ends[:-1]]
        inside = [
            lp
            for s, e, lp in zip(starts, ends, gen.logprobs, strict=True)
            if e > s and s < hi and e > lo
        ]
        scores.append(geometric_mean_prob(inside) if inside else whole)
    return scores
