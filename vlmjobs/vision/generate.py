"""Batched generation for every family: one Generator per loaded model, kept resident by the worker.

Two engines give the same greedy token ids on the same inputs:

- ``hf``: transformers' ``generate``. Works everywhere (CPU tests, any model, sampling).
- ``static``: the fast path (``vision/static_decode.py``): one batched prefill into a
  preallocated KV cache, then a decode loop over the language model alone, captured
  once in a CUDA graph and replayed per token. Greedy only; CUDA graphs only on CUDA
  (on CPU the same code runs eagerly, which is how its equality with ``hf`` is tested).

Sizing (BENCHMARKS.md, Infer): the 3B in bf16 with the static engine at ``max_batch=48``
did 11.2 images/s on one H100 at 10.4 GiB peak (1,090-token prompts, 256 new tokens);
the KV cache grows linearly with max_batch x (prompt + new tokens).

Log-probabilities are those of the model's RAW logits (before repetition penalty,
min-length masking, temperature or top-p): ``logprobs[i] = log_softmax(logits_i)[token_i]``.
They measure the model's own confidence in each token, whatever the decoding settings.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import BatchFeature

from vlmjobs.vision.family import FAMILIES

log = logging.getLogger(__name__)

Engine = Literal["auto", "hf", "static"]


@dataclass
class Generation:
    token_ids: list[
        int
    ]  # generated ids, prompt and padding excluded, up to and including EOS if produced
    text: str  # decoded with special tokens skipped
    logprobs: list[float]  # log-prob of each generated token under the model (raw logits)
    prompt_tokens: int  # non-pad prompt tokens incl. image tokens
    finished: bool  # True if EOS (<|im_end|> / eos) was produced before max_new_tokens


class Generator:
    """Reusable state across batches (static KV cache, CUDA graphs); one per loaded model."""

    def __init__(self, model: Any, processor: Any, *, max_batch: int = 16, engine: Engine = "auto"):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if engine not in ("auto", "hf", "static"):
            raise ValueError(f"engine={engine!r}: choose 'auto', 'hf' or 'static'")
        # A PeftModel's generate runs the inner model, where the LoRA layers are injected:
        # hooks and the static engine must see that inner model.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = base.eval()
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_batch = max_batch
        self.eos_ids = stop_token_ids(model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[-1])
        self.engine = resolve_engine(engine, model)
        # Why the static engine was not used though asked for (or chosen by auto): logged.
        self.engine_note = static_unsupported(base) if engine != "hf" else None
        device = next(base.parameters()).device.type
        slow = slow_kernels(base, device)
        if slow:
            self.engine_note = f"{self.engine_note}; {slow}" if self.engine_note else slow
        if self.engine_note:
            log.warning("engine %s: %s", engine, self.engine_note)
        self._static: Any = None  # StaticDecoder, built on first use (allocates the KV cache)

    @torch.inference_mode()
    def generate(
        self,
        batch: BatchFeature,
        *,
        max_new_tokens: int = 512,
        min_new_tokens: int = 0,
        repetition_penalty: float = 1.0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_oom: Callable[[str], None] | None = None,
    ) -> list[Generation]:
        """One Generation per row of ``batch`` (left padded: vision.inputs.build_inputs).

        Rows go through in slices of ``max_batch``. On GPU out-of-memory the slice is retried
        at half the size, down to one row (then the error is raised); ``on_oom`` hears of each
        halving, and the lower ``max_batch`` stays for later calls."""
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(
                f"min_new_tokens={min_new_tokens}, max_new_tokens={max_new_tokens}: "
                "need 0 <= min <= max"
            )
        if "attention_mask" in batch and bool((batch["attention_mask"][:, -1] == 0).any()):
            raise ValueError(
                "batch is right padded: build it left padded (vision.inputs.build_inputs does)"
            )
        settings = dict(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            repetition_penalty=repetition_penalty,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
        )
        if seed is not None:
            torch.manual_seed(seed)
        # Sampling and repetition penalty go through transformers; the fast path is greedy only.
        use_static = self.engine == "static" and not do_sample and repetition_penalty == 1.0
        results: list[Generation] = []
        n, start = batch["input_ids"].shape[0], 0
        while start < n:
            stop = min(n, start + self.max_batch)
            part = slice_batch(batch, start, stop, self.model.config)
            part = with_token_types(part, self.model.config)
            try:
                if use_static:
                    ids, logprobs = self._static_decoder().generate(
                        part, max_new_tokens, min_new_tokens
                    )
                else:
                    ids, logprobs = generate_hf(
                        self.model, part, self.eos_ids, self.pad_id, settings
                    )
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise  # nothing left to split: the model alone does not fit
            else:
                results += self._finish(part, ids, logprobs)
                start = stop
                continue
            # Here, past the except block, the failed batch's frames (and tensors) are gone.
            self._shrink(stop - start, on_oom)
        return results

    def _shrink(self, failed_rows: int, on_oom: Callable[[str], None] | None) -> None:
        """After out-of-memory at ``failed_rows``: halve max_batch for this and later batches
        (the card will not get bigger), free what the failed batch held, tell the caller."""
        self.max_batch = max(1, failed_rows // 2)
        if self._static is not None:
            self._static.release()
            self._static.max_batch = self.max_batch
        gc.collect()  # tensors in reference cycles (e.g. a traceback) hold GPU memory too
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # give the cached blocks back so the retry can use them
        if on_oom is not None:
            on_oom(
                f"GPU out of memory at batch {failed_rows}: KV cache and graphs freed, "
                f"continuing at batch {self.max_batch}"
            )

    def _static_decoder(self) -> Any:
        if self._static is None:
            from vlmjobs.vision.static_decode import StaticDecoder

            self._static = StaticDecoder(self.model, max_batch=self.max_batch, eos_ids=self.eos_ids)
        return self._static

    def _finish(
        self, batch: BatchFeature, ids: torch.Tensor, logprobs: torch.Tensor
    ) -> list[Generation]:
        """Cut each row after its first EOS; ids, logprobs: (B, T)."""
        mask = batch.get("attention_mask")
        prompt = (
            mask.sum(1).tolist() if mask is not None else [batch["input_ids"].shape[1]] * len(ids)
        )
        out = []
        for row, lp, n_prompt in zip(ids.tolist(), logprobs.tolist(), prompt, strict=True):
            row, lp, finished = cut_at_eos(row, lp, self.eos_ids)
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            out.append(Generation(row, text, lp, int(n_prompt), finished))
        return out


def cut_at_eos(
    ids: list[int], logprobs: list[float], eos_ids: list[int]
) -> tuple[list[int], list[float], bool]:
    """Tokens up to and including the first EOS (the rest is padding); finished: EOS seen."""
    end = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), None)
    return ids[:end], logprobs[:end], end is not None


def resolve_engine(engine: Engine, model: Any) -> Literal["hf", "static"]:
    """``auto``: the fast path on CUDA, transformers elsewhere (CPU is for tests).

    A model family the static engine cannot run gets transformers' generate whatever was
    asked (``static_unsupported`` says why): slower, never a crash.
    """
    if engine == "hf" or static_unsupported(model):
        return "hf"
    if engine != "auto":
        return engine
    return "static" if next(model.parameters()).device.type == "cuda" else "hf"


def static_unsupported(model: Any) -> str | None:
    """Why the static engine cannot run ``model``'s family, or None when it can."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    family = FAMILIES.get(model_type or "")
    if family is None:
        return f"model_type {model_type!r} is not a known Qwen-VL family; using generate"
    return None if family.static_engine else family.engine_note


def slow_kernels(model: Any, device: str) -> str | None:
    """What to install when a linear-attention family (Qwen3.5) would run its gated delta-net
    layers on transformers' PyTorch reference kernels on a GPU (correct, much slower); None
    when the fast packages import, on a CPU, or for the other families."""
    from importlib.util import find_spec

    family = FAMILIES.get(getattr(model.config, "model_type", None) or "")
    if family is None or not family.linear_attention or device != "cuda":
        return None
    missing = [pip for pip, mod in _FAST_KERNELS.items() if find_spec(mod) is None]
    if not missing:
        return None
    return (
        f"{family.title}'s delta-net layers run on transformers' PyTorch reference kernels: "
        f"pip install {' '.join(missing)} on this GPU host for the fast ones"
    )


# pip package -> module transformers imports for the gated delta-net's fast kernels.
_FAST_KERNELS = {"flash-linear-attention": "fla", "causal-conv1d": "causal_conv1d"}


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """<|im_end|> ends a chat turn; the model's and tokenizer's eos end a document. Sorted."""
    ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    ids = {int(i) for i in ids if i is not None and i != tokenizer.unk_token_id}
    if not ids:
        raise ValueError(
            "the tokenizer has no <|im_end|> and no eos token: load Qwen2.5-VL's tokenizer"
        )
    return sorted(ids)


def with_token_types(batch: BatchFeature, config: Any) -> BatchFeature:
    """transformers >= 5 computes 3D (mrope) positions only when ``mm_token_type_ids`` is given:
    without it an image-only processor's batch would silently get 1D positions."""
    if "mm_token_type_ids" in batch or (
        "image_grid_thw" not in batch and "video_grid_thw" not in batch
    ):
        return batch
    ids = batch["input_ids"]
    types = (ids == config.image_token_id).int() + 2 * (ids == config.video_token_id).int()
    return BatchFeature({**batch, "mm_token_type_ids": types})


def slice_batch(batch: BatchFeature, start: int, stop: int, config: Any) -> BatchFeature:
    """Rows start:stop of a left-padded batch, with their images' patches, and the pad
    columns that every kept row has dropped."""
    n, length = batch["input_ids"].shape
    if start == 0 and stop == n:
        return batch
    if "video_grid_thw" in batch:
        raise ValueError("a batch with a video is not cut into rows: send one video row per call")
    # Per-token tensors (input_ids, attention_mask, mm_token_type_ids) are (B, L); the image
    # tensors are per image / per patch and are cut by the rows' image counts instead.
    rows = {
        k: v[start:stop]
        for k, v in batch.items()
        if torch.is_tensor(v) and v.shape[:2] == (n, length)
    }
    if "image_grid_thw" in batch:
        grid = batch["image_grid_thw"]
        per_image = (grid.prod(-1) // config.vision_config.spatial_merge_size**2).tolist()
        per_row = (batch["input_ids"] == config.image_token_id).sum(1).tolist()
        first, last = images_of_rows(per_image, per_row, start, stop)
        patches = grid.prod(-1).tolist()
        lo, hi = sum(patches[:first]), sum(patches[:last])
        images = {"image_grid_thw": grid[first:last], "pixel_values": batch["pixel_values"][lo:hi]}
    else:
        images = {}
    if "attention_mask" in rows and rows["attention_mask"].any():
        keep = int(rows["attention_mask"].sum(0).nonzero().min())
        rows = {k: v[:, keep:] for k, v in rows.items()}
    return BatchFeature({**rows, **images})
    return BatchFeature(rows)


def images_of_rows(
    per_image: list[int], per_row: list[int], start: int, stop: int
) -> tuple[int, int]:
    """Index range [first, last) of the images that belong to rows start:stop, given each
    image's token count and each row's image-token count (images appear in row order)."""
    bounds, acc, i = [0], 0, 0
    for tokens in per_row:
        while acc < tokens and i < len(per_image):
            acc += per_image[i]
            i += 1
        if acc != tokens:
            raise ValueError(
                f"image tokens per row {per_row} do not match image_grid_thw: rebuild the batch"
            )
        bounds.append(i)
        acc = 0
    return bounds[start], bounds[stop]


class LogprobRecorder:
    """Records log_softmax(raw logits)[chosen token] per step of ``model.generate`` without
    keeping (B, vocab) logits for every step (that would be GBs at batch 16 x 512 tokens).

    Each forward call's ``input_ids`` (B, 1) are the tokens chosen from the previous call's
    logits, so a hook pairs them up; the last token is paired in ``finish``."""

    def __init__(self, model: Any):
        self.model = model
        self.previous: torch.Tensor | None = None  # (B, V) float32 log-probs of the last call
        self.steps: list[torch.Tensor] = []

    def __enter__(self) -> LogprobRecorder:
        self.handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, module: Any, args: Any, kwargs: dict, output: Any) -> None:
        ids = kwargs.get("input_ids")
        if self.previous is not None and ids is not None:
            self.steps.append(self.previous.gather(1, ids[:, -1:]))
        self.previous = torch.log_softmax(output.logits[:, -1].float(), dim=-1)

    def finish(self, new_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the generated ids (B, T)."""
        if self.previous is not None and new_ids.shape[1] > len(self.steps):
            self.steps.append(self.previous.gather(1, new_ids[:, -1:]))
        if len(self.steps) != new_ids.shape[1]:
            raise RuntimeError(
                f"log-probs of {len(self.steps)} steps for {new_ids.shape[1]} tokens: the hooked "
                "model's forward was bypassed (a wrapper?) or the prefill was chunked"
            )
        return torch.cat(self.steps, dim=1) if self.steps else new_ids.float()


def generate_hf(
    model: Any, batch: BatchFeature, eos_ids: list[int], pad_id: int, settings: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' generate; returns (new ids (B, T), their log-probs (B, T)) on the CPU."""
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if not settings["do_sample"]:
        settings = {
            **settings,
            "temperature": None,
            "top_p": None,
        }  # silence 'unused flag' warnings
    with LogprobRecorder(model) as recorder:
        out = model.generate(
            **inputs,
            **settings,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            top_k=None,
            return_dict_in_generate=True,
        )
    new = out.sequences[:, inputs["input_ids"].shape[1] :]
    return new.cpu(), recorder.finish(new).cpu()
