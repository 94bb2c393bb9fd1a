"""Task prompts and parsers."""

from __future__ import annotations

import pytest

from vlmjobs.vision.tasks import TASKS, parser_for, prompt_for


@pytest.mark.parametrize(
    "task,kwargs,contains,parser",
    [
        ("dense_caption", {}, "bbox_2d", "regions"),  # case: default dense captioning prompt
        ("detect", {"labels": ["cat", "dog", "bird"]}, "cat, dog or bird", "regions"),
        # case: labels joined
        ("detect", {"labels": ["cat"]}, "every cat", "regions"),  # case: one label
        ("ground", {"phrase": "the red car"}, "the red car", "regions"),  # case: phrase
        ("extract_json", {}, "JSON", "json"),  # case: extraction
        ("caption", {}, "Describe", "text"),  # case: caption
        ("custom", {"prompt": "Count the cats."}, "Count the cats.", "text"),  # case: custom
        ("caption", {"prompt": "Say hi."}, "Say hi.", "text"),  # case: explicit prompt wins
    ],
)
def test_prompt_and_parser(task, kwargs, contains, parser):
    assert contains in prompt_for(task, **kwargs)
    assert parser_for(task) == parser


@pytest.mark.parametrize(
    "task,kwargs,message",
    [
        ("detect", {}, "needs labels"),  # case: detect without labels
        ("ground", {}, "needs phrase"),  # case: ground without phrase
        ("custom", {}, "needs prompt"),  # case: custom without prompt
        ("segment", {}, "'segment' is not one of"),  # case: unknown task
    ],
)
def test_missing_inputs_are_named(task, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prompt_for(task, **kwargs)


def test_every_task_has_a_parser():
    assert {parser_for(t) for t in TASKS} == {"regions", "json", "text"}
