"""The generation engine on a tiny random Qwen2.5-VL, CPU: batching, slicing, log-probs, engines."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BatchFeature,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from vlmjobs.vision.generate import Generator, cut_at_eos, images_of_rows, slice_batch
from vlmjobs.vision.vision_attention import batched_vision_attention

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
]
PAD, EOS, V_START, V_END, IMAGE = 0, 2, 3, 4, 5  # ids of SPECIAL in a freshly trained tokenizer


@pytest.fixture(scope="module")
def tiny() -> tuple[Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast]:
    """A 2-layer Qwen2.5-VL with random weights and a 300-token BPE, built in memory (0.1 s)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["a red circle at the top left", "a blue square"] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL] == list(range(len(SPECIAL)))
    ids = dict(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=PAD)
    text = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, **ids,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
    )  # fmt: skip
    vision = dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
        patch_size=14, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1],
        temporal_patch_size=2,
    )  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=6,
        vision_start_token_id=V_START, vision_end_token_id=V_END, tie_word_embeddings=True, **ids,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer


def make_batch(rows: list[tuple[int, tuple[int, int] | None]], seed: int = 0) -> BatchFeature:
    """Left-padded batch like build_inputs makes.

    rows: per row (text tokens, image grid (h, w) in 14 px patches, or None for text only)."""
    g = torch.Generator().manual_seed(seed)
    seqs, grids, pixels = [], [], []
    for n_text, grid in rows:
        text = torch.randint(7, 256, (n_text,), generator=g)  # inside any trained vocab
        if grid is None:
            seqs.append(text)
            continue
        h, w = grid
        image = torch.tensor([V_START] + [IMAGE] * (h * w // 4) + [V_END])
        seqs.append(torch.cat([text[: n_text // 2], image, text[n_text // 2 :]]))
        grids.append([1, h, w])
        pixels.append(torch.randn(h * w, 3 * 2 * 14 * 14, generator=g))
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), PAD)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, length - len(s) :] = s
        mask[i, length - len(s) :] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if grids:
        batch |= {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids)}
    return BatchFeature(batch)


ROWS = [(12, (4, 6)), (5, (8, 4)), (20, (4, 4)), (9, (6, 8))]


@pytest.mark.parametrize(
    "ids, eos, expected",
    [
        ([7, 8, 2, 0, 0], [2], ([7, 8, 2], True)),  # case: EOS kept, trailing pad dropped
        ([7, 8, 9], [2], ([7, 8, 9], False)),  # case: ran out of tokens
        ([2, 7], [0, 2], ([2], True)),  # case: EOS first
        ([7, 0, 2], [0, 2], ([7, 0], True)),  # case: the first of several stop ids wins
        ([], [2], ([], False)),  # case: nothing generated
    ],
)
def test_cut_at_eos(ids: list[int], eos: list[int], expected: tuple[list[int], bool]) -> None:
    lp = [-float(i) for i in range(len(ids))]
    kept, kept_lp, finished = cut_at_eos(ids, lp, eos)
    assert (kept, finished) == expected
    assert kept_lp == lp[: len(kept)]


@pytest.mark.parametrize(
    "per_image, per_row, start, stop, expected",
    [
        ([6, 8, 4], [6, 8, 4], 1, 3, (1, 3)),  # case: one image per row
        ([6, 8, 4], [14, 0, 4], 1, 2, (2, 2)),  # case: a text-only row has no image
        ([6, 8, 4], [14, 0, 4], 0, 1, (0, 2)),  # case: two images in one row
        ([6, 8], [6, 9], 0, 2, ValueError),  # case: counts that do not add up
    ],
)
def test_images_of_rows(per_image, per_row, start, stop, expected) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError, match="do not match"):
            images_of_rows(per_image, per_row, start, stop)
    else:
        assert images_of_rows(per_image, per_row, start, stop) == expected


def test_slice_batch_keeps_images_and_drops_shared_padding(tiny) -> None:
    model, _ = tiny
    batch = make_batch(ROWS)
    part = slice_batch(batch, 2, 4, model.config)
    alone = make_batch(ROWS)  # the same rows, cut by hand
    assert part["input_ids"].shape == (2, int(alone["attention_mask"][2:].sum(1).max()))
    assert torch.equal(part["image_grid_thw"], alone["image_grid_thw"][2:])
    assert torch.equal(part["pixel_values"], alone["pixel_values"][24 + 32 :])
    assert bool(part["attention_mask"][:, 0].any())


def teacher_forced_logprobs(
    model, batch: BatchFeature, row: int, new_ids: list[int]
) -> torch.Tensor:
    """Log-probs of ``new_ids`` after row ``row``'s prompt, by one forward over prompt + answer."""
    one = slice_batch(batch, row, row + 1, model.config)
    ids = torch.cat([one["input_ids"], torch.tensor([new_ids])], dim=1)
    types = (ids == IMAGE).int()
    with torch.no_grad():
        logits = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=one["pixel_values"],
            image_grid_thw=one["image_grid_thw"], mm_token_type_ids=types,
        ).logits[0, -len(new_ids) - 1 : -1]  # fmt: skip
    return torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(new_ids)[:, None])[:, 0]


def test_hf_batched_equals_one_at_a_time_and_logprobs_are_the_models(tiny) -> None:
    model, tokenizer = tiny
    batch = make_batch(ROWS)
    gen = Generator(model, tokenizer, engine="hf", max_batch=4)
    together = gen.generate(batch, max_new_tokens=12)
    singles = Generator(model, tokenizer, engine="hf", max_batch=1).generate(
        batch, max_new_tokens=12
    )
    for row, (g, s) in enumerate(zip(together, singles, strict=True)):
        assert g.token_ids == s.token_ids
        torch.testing.assert_close(g.logprobs, s.logprobs, atol=1e-4, rtol=1e-4)
        assert g.prompt_tokens == int(batch["attention_mask"][row].sum())
        assert len(g.token_ids) == len(g.logprobs) == 12 or g.finished
        expected = teacher_forced_logprobs(model, batch, row, g.token_ids)
        torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=1e-4, rtol=1e-4)
        assert g.text == tokenizer.decode(g.token_ids, skip_special_tokens=True)
    # the rows differ, so a mix-up of rows would show
    assert len({tuple(g.token_ids) for g in together}) > 1


def test_min_new_tokens_forces_the_length(tiny) -> None:
    model, tokenizer = tiny
    out = Generator(model, tokenizer, engine="hf").generate(
        make_batch(ROWS[:2]), max_new_tokens=5, min_new_tokens=5
    )
    assert [len(g.token_ids) for g in out] == [5, 5]
    assert all(lp <= 0 for g in out for lp in g.logprobs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=4, min_new_tokens=5), "need 0 <= min <= max"),  # case: min above max
        (dict(max_new_tokens=-1), "need 0 <= min <= max"),  # case: negative length
    ],
)
def test_bad_settings_are_refused(tiny, kwargs: dict, message: str) -> None:
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=message):
        Generator(model, tokenizer, engine="hf").generate(make_batch(ROWS[:1]), **kwargs)


def test_right_padding_is_refused(tiny) -> None:
    model, tokenizer = tiny
    batch = make_batch(ROWS[:2])
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="right padded"):
        Generator(model, tokenizer, engine="hf").generate(batch, max_new_tokens=2)


@pytest.mark.parametrize(
    "rows, max_batch, new, min_new",
    [
        (ROWS, 4, 12, 0),  # case: one batch, stops at EOS or 12
        (ROWS, 3, 10, 10),  # case: sliced 3 + 1, EOS barred: forced length
        ([(7, None), (15, None)], 2, 8, 0),  # case: text only, no image
    ],
)
def test_static_engine_equals_hf_greedy(tiny, rows, max_batch: int, new: int, min_new: int) -> None:
    model, tokenizer = tiny
    batch = make_batch(rows, seed=3)
    kwargs = dict(max_new_tokens=new, min_new_tokens=min_new)
    hf = Generator(model, tokenizer, engine="hf", max_batch=max_batch).generate(batch, **kwargs)
    static = Generator(model, tokenizer, engine="static", max_batch=max_batch)
    for _ in range(2):  # the second batch reuses the cache, which holds the first one's keys
        out = static.generate(batch, **kwargs)
        assert [g.token_ids for g in out] == [g.token_ids for g in hf]
        assert [g.finished for g in out] == [g.finished for g in hf]
        assert [g.prompt_tokens for g in out] == [g.prompt_tokens for g in hf]
        for a, b in zip(out, hf, strict=True):
            torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "grids",
    [
        [(16, 20)],  # case: one image, several windows, partial ones at the edges
        [(4, 6), (16, 8), (10, 14)],  # case: images of different sizes
        [(8, 8), (8, 8)],  # case: equal windows and images: the unmasked SDPA call
    ],
)
def test_batched_vision_attention_equals_transformers(tiny, grids: list[tuple[int, int]]) -> None:
    model, _ = tiny
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(sum(h * w for h, w in grids), 3 * 2 * 14 * 14, generator=g)
    thw = torch.tensor([[1, h, w] for h, w in grids])
    with torch.no_grad():
        expected = model.model.visual(pixels, grid_thw=thw).pooler_output
        with batched_vision_attention(model.model.visual):
            got = model.model.visual(pixels, grid_thw=thw).pooler_output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(model.model.visual.blocks[0].attn)  # restored


def test_engines_agree_on_build_inputs_batches(tiny_checkpoint) -> None:
    """The real pipeline: a saved tiny checkpoint, its processor, images of different sizes."""
    from PIL import Image

    from vlmjobs.specs.common import ModelSpec
    from vlmjobs.vision.inputs import build_inputs
    from vlmjobs.vision.model import load_model

    model, processor = load_model(ModelSpec(path=str(tiny_checkpoint), dtype="fp32"))
    sizes = [(200, 150), (90, 300), (400, 120)]
    images = [Image.new("RGB", size, (60 * i, 120, 200)) for i, size in enumerate(sizes)]
    batch = build_inputs(processor, images, ["Describe the image.", "Find the circle.", "Caption"])
    hf = Generator(model, processor, engine="hf").generate(batch, max_new_tokens=8)
    static = Generator(model, processor, engine="static").generate(batch, max_new_tokens=8)
    single = Generator(model, processor, engine="hf", max_batch=1).generate(batch, max_new_tokens=8)
    assert (
        [g.token_ids for g in static] == [g.token_ids for g in hf] == [g.token_ids for g in single]
    )
    assert [g.prompt_tokens for g in hf] == batch["attention_mask"].sum(1).tolist()


def test_lora_adapter_is_used_by_both_engines(tiny) -> None:
    """A PeftModel (what load_model returns with an adapter): its LoRA changes the output."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    batch = make_batch(ROWS[:2], seed=5)
    base = Generator(model, tokenizer, engine="hf").generate(batch, max_new_tokens=10)
    torch.manual_seed(2)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)  # fmt: skip
    peft = get_peft_model(copy.deepcopy(model), config).eval()
    hf = Generator(peft, tokenizer, engine="hf").generate(batch, max_new_tokens=10)
    static = Generator(peft, tokenizer, engine="static").generate(batch, max_new_tokens=10)
    assert [g.token_ids for g in hf] == [g.token_ids for g in static]
    assert [g.token_ids for g in hf] != [g.token_ids for g in base]


def test_sampling_and_penalty_go_through_transformers_and_seed_repeats(tiny) -> None:
    model, tokenizer = tiny
    batch = make_batch(ROWS[:2], seed=4)
    static = Generator(model, tokenizer, engine="static")
    hf = Generator(model, tokenizer, engine="hf")
    penalized = dict(max_new_tokens=10, repetition_penalty=1.5)
    assert [g.token_ids for g in static.generate(batch, **penalized)] == [
        g.token_ids for g in hf.generate(batch, **penalized)
    ]
    sampled = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.9)
    first = [g.token_ids for g in static.generate(batch, **sampled, seed=7)]
    assert first == [g.token_ids for g in static.generate(batch, **sampled, seed=7)]
    greedy = [g.token_ids for g in hf.generate(batch, max_new_tokens=10)]
    others = [[g.token_ids for g in hf.generate(batch, **sampled, seed=s)] for s in (1, 2, 3)]
    assert any(o != greedy for o in others)  # it did sample
