"""make_model / model_config: offline checkpoints that load like real ones, deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from vlmjobs.dev import build


def test_same_seed_same_weights_other_seed_other_weights(tiny_checkpoint: Path, tmp_path: Path):
    again = build.make_model(tmp_path / "again", arch="tiny", seed=0)
    other = build.make_model(tmp_path / "other", arch="tiny", seed=1)
    a, b, c = (load_file(p / "model.safetensors") for p in (tiny_checkpoint, again, other))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    for name in ("tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (tiny_checkpoint / name).read_bytes() == (again / name).read_bytes()


def test_checkpoint_has_the_real_files(tiny_checkpoint: Path):
    pre = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    assert pre["min_pixels"] == build.DEFAULT_MIN_PIXELS
    assert pre["max_pixels"] == build.DEFAULT_MAX_PIXELS
    assert pre["patch_size"] == 14 and pre["merge_size"] == 2
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    ids = build.special_ids()
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    gen = json.loads((tiny_checkpoint / "generation_config.json").read_text())
    assert ids["<|im_end|>"] in gen["eos_token_id"]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_tokenizer_specials_template_and_compact_targets(tiny_checkpoint: Path):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for token, idx in build.special_ids().items():
        assert tok.convert_tokens_to_ids(token) == idx
        assert tok.encode(token, add_special_tokens=False) == [idx]  # one token, never split
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    target = '```json\n[\n\t{"bbox_2d": [12, 345, 67, 890], "label": "a small red circle"}\n]\n```'
    ids = tok.encode(target, add_special_tokens=False)
    assert tok.decode(ids) == target
    assert len(tok.encode(" a small red circle", add_special_tokens=False)) == 4
    assert len(ids) <= 42
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "arch,params,hidden,layers,vocab,tied",
    [
        ("3b", 3.75e9, 2048, 36, 151936, True),  # case: Qwen2.5-VL-3B
        ("7b", 8.29e9, 3584, 28, 152064, False),  # case: Qwen2.5-VL-7B
    ],
)
def test_real_configs_have_the_real_size(arch, params, hidden, layers, vocab, tied):
    config = build.model_config(arch)
    assert config.text_config.hidden_size == hidden
    assert config.text_config.num_hidden_layers == layers
    assert config.text_config.vocab_size == vocab
    assert config.tie_word_embeddings is tied
    assert config.vision_config.out_hidden_size == hidden
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.01, n


def test_unknown_arch_is_named():
    with pytest.raises(ValueError, match="'13b'.*tiny, 3b, 7b"):
        build.model_config("13b")


def test_make_model_names_every_arch_it_builds(tmp_path):
    with pytest.raises(ValueError, match="'13b'.*tiny, 3b, 7b, demo, tiny-qwen2vl"):
        build.make_model(tmp_path / "m", "13b")


def test_adding_a_task_does_not_change_the_tiny_tokenizer(monkeypatch) -> None:
    """The corpus names its tasks itself: a new task (and its prompt) must not reorder the
    BPE merges, which would change every fixture model and the demo model's weights."""
    from vlmjobs.dev.build import make_tokenizer
    from vlmjobs.vision import tasks

    before = make_tokenizer().get_vocab()
    monkeypatch.setattr(tasks, "TASKS", (*tasks.TASKS, "summarise"))
    monkeypatch.setitem(tasks.PARSERS, "summarise", "text")
    assert make_tokenizer().get_vocab() == before
