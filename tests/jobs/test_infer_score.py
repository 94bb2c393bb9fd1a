"""Region confidence: token -> character spans, JSON entry spans, geometric-mean scores."""

from __future__ import annotations

import math

import pytest

from vlmjobs.dev.build import make_tokenizer
from vlmjobs.recipes.infer.score import entry_spans, geometric_mean_prob, region_scores, token_ends
from vlmjobs.vision.generate import Generation

ANSWER = (
    '```json\n[\n\t{"bbox_2d": [10, 20, 30, 40], "label": "a red circle"},\n'
    '\t{"bbox_2d": [1, 2, 3, 4], "label": "a \\"blue\\" square é"}\n]\n```'
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),  # case: empty
        ('[{"label": "a"}]', [(1, 15, "a")]),  # case: one entry
        ('{"a": {"label": "x"}, "label": "y"}', [(0, 35, "y")]),  # case: nested is part of parent
        (
            '[{"label": "}{"}, {"label": "b"}]',
            [(1, 16, "}{"), (18, 32, "b")],
        ),  # case: braces in a string
        ('[{"label": "a"}, {"label": "b"', [(1, 15, "a")]),  # case: truncated last entry dropped
        ("[{'label': 'x', }]", [(1, 17, None)]),  # case: not JSON and no double-quoted label
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "q" ,}]', [(1, 42, "q")]),  # case: trailing comma
        ('{"phrase": "p"}', [(0, 15, "p")]),  # case: another label key
    ],
)
def test_entry_spans(text: str, expected: list) -> None:
    assert entry_spans(text) == expected


def test_token_ends_rebuild_the_text(tok) -> None:
    ids = tok.encode(ANSWER) + [tok.convert_tokens_to_ids("<|im_end|>")]
    ends = token_ends(tok, ids, ANSWER)
    assert ends is not None and len(ends) == len(ids)
    assert ends[-1] == ends[-2] == len(ANSWER)  # the special token is zero-width
    assert ends == sorted(ends)
    for i in range(1, len(ids) - 1):  # each token's piece is the text between its ends
        piece = tok.decode(ids[i : i + 1])
        if piece.isascii():
            assert ANSWER[ends[i - 1] : ends[i]] == piece
    assert token_ends(tok, ids, ANSWER + "x") is None  # pieces that do not rebuild the text


def test_region_scores_use_each_entrys_tokens(tok) -> None:
    ids = tok.encode(ANSWER)
    ends = token_ends(tok, ids, ANSWER)
    second = ANSWER.index('{"bbox_2d": [1, ')
    # Tokens of the second entry get log-prob -2, every other token -0.1.
    logprobs = [-2.0 if e > second and e <= len(ANSWER) - 6 else -0.1 for e in ends]
    gen = Generation(ids, ANSWER, logprobs, 50, True)
    first, two, missing = region_scores(gen, tok, ["a red circle", 'a "blue" square é', "nope"])
    assert first == pytest.approx(math.exp(-0.1))
    assert two < 0.2 and two > math.exp(-2.0) - 1e-9  # mostly -2 tokens, maybe one shared edge
    assert missing == pytest.approx(geometric_mean_prob(logprobs))


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ([], None),  # case: nothing generated
        ([0.0, 0.0], 1.0),  # case: certain
        ([math.log(0.5), math.log(0.125)], 0.25),  # case: geometric mean
        ([float("-inf"), math.log(0.5)], 0.5),  # case: -inf ignored
    ],
)
def test_geometric_mean_prob(logprobs: list[float], expected: float | None) -> None:
    got = geometric_mean_prob(logprobs)
    assert got == (None if expected is None else pytest.approx(expected))


def test_every_label_key_the_parser_reads_is_scored_by_its_own_entry() -> None:
    """A region the parser reads by "name" or "category" finds its entry's tokens too (it
    used to get the whole answer's mean: the scorer knew 4 label keys, the parser 7)."""
    from vlmjobs.recipes.infer.score import _label
    from vlmjobs.vision.parse import LABEL_KEYS

    for key in LABEL_KEYS:
        assert _label(f'{{"bbox_2d": [1, 2, 3, 4], "{key}": " red star "}}') == "red star"
        assert _label(f'{{"bbox_2d": [1, 2, 3, 4], "{key}": "red star",}}') == "red star"
