"""build_inputs: chat template, padding sides, assistant-only labels, batched == sequential."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmjobs.dev.build import special_ids
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.inputs import IGNORE, build_inputs
from vlmjobs.vision.model import load_model

MIN, MAX = 16 * 784, 96 * 784
IDS = special_ids()


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    spec = ModelSpec(path=str(tiny_checkpoint), dtype="fp32", min_pixels=MIN, max_pixels=MAX)
    return load_model(spec)


def _images() -> list[Image.Image]:
    return [
        Image.new("RGB", (200, 150), "red"),
        Image.new("L", (90, 300), 128),  # grey: converted to RGB
        Image.new("RGB", (333, 211), "blue"),
    ]


ANSWERS = [
    '```json\n[\n\t{"bbox_2d": [1, 2, 30, 40], "label": "a small red circle"}\n]\n```',
    "ok",
    "a large blue square, two tiny green stars",
]


@pytest.mark.parametrize(
    "system",
    [
        None,  # case: the template's default system prompt
        "You label shapes.",  # case: an explicit system prompt
    ],
)
def test_labels_cover_exactly_the_answer_and_im_end(tiny, system):
    _, processor = tiny
    prompts = ["Describe.", "Locate every object in the image.", "What?"]
    batch = build_inputs(processor, _images(), prompts, system=system, answers=ANSWERS)
    assert batch["attention_mask"][:, 0].all()  # right padded: every row starts with real tokens
    tok = processor.tokenizer
    for row, answer in enumerate(ANSWERS):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE].tolist()
        assert kept == tok.encode(answer, add_special_tokens=False) + [IDS["<|im_end|>"]]
        # the labelled tokens are one contiguous span that equals input_ids there
        where = (labels != IGNORE).nonzero().flatten()
        assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1))
        assert torch.equal(batch["input_ids"][row, where], labels[where])
    text = tok.decode(batch["input_ids"][0])
    assert (system or "You are a helpful assistant.") in text


def test_generation_batch_is_left_padded_with_the_assistant_turn_open(tiny):
    _, processor = tiny
    batch = build_inputs(processor, _images(), ["a", "a much longer prompt than a", "b"])
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all()  # left padded
    assert not batch["attention_mask"][:, 0].all()  # rows differ in length (images differ)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.endswith("a<|im_end|>\n<|im_start|>assistant\n")
    assert batch["image_grid_thw"].shape == (3, 3)


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, processor = tiny
    images, prompts = _images(), ["Describe.", "Locate every object in the image please.", "x"]
    kw = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        batched = model.generate(**build_inputs(processor, images, prompts), **kw)
        for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            single = model.generate(**build_inputs(processor, [image], [prompt]), **kw)
            assert batched.sequences[row, -8:].tolist() == single.sequences[0, -8:].tolist()
            for b_step, s_step in zip(batched.scores, single.scores, strict=True):
                torch.testing.assert_close(b_step[row], s_step[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "n_images,n_prompts,answers,message",
    [
        (2, 1, None, "2 images, 1 prompts"),  # case: fewer prompts than images
        (1, 1, ["a", "b"], "2 answers"),  # case: more answers than rows
        (0, 0, None, "at least one row"),  # case: empty batch
    ],
)
def test_mismatched_rows_are_refused(tiny, n_images, n_prompts, answers, message):
    _, processor = tiny
    images = [Image.new("RGB", (60, 60))] * n_images
    with pytest.raises(ValueError, match=message):
        build_inputs(processor, images, ["p"] * n_prompts, answers=answers)


def test_no_warning_per_batch_for_a_template_without_thinking(tiny) -> None:
    """enable_thinking goes only to templates that read it (Qwen3.5's): transformers warned
    once per processor call otherwise, ~12,000 lines in the demo's log."""
    import logging

    from transformers.utils import logging as hf_logging

    _, processor = tiny
    assert "enable_thinking" not in str(processor.chat_template)
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Catch()
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        build_inputs(processor, _images()[:1], ["Locate every shape."])
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert not [m for m in seen if "processor_kwargs" in m], seen
