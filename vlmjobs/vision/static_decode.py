"""The fast greedy path of vision/generate.py: batched prefill, static KV cache, CUDA-graph decode.

Why it is faster than ``model.generate``: at batch 16 a decode step of the 3B reads ~7 GB
of weights (~2.5 ms on an H100) but launches ~1,000 small kernels from Python; eager, the
launches dominate. Here one decode step is a fixed-shape function of preallocated buffers
(token, rope position, cache slot, step counter), captured once in a CUDA graph and
replayed per token, with no host sync but one every ``check_every`` steps (all rows done?).

Layout of one batch in the cache (B rows, S slots per row, left padded like the prompt):

    slot  0 .. pad_i-1   padding of row i (masked)
          pad_i .. L-1   row i's prompt (L = the batch's padded prompt length)
          L .. L+T-1     generated tokens

Prefill runs transformers' own forward (vision tower, mrope positions, masks) on a few rows
at a time, so its activations stay small, and copies the keys/values into the cache. Decode
runs the language model's layers directly: for a generated (text) token all three mrope
components equal ``len_i + rope_delta_i + t``, so its rotary embedding is the plain 1D one.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch.nn import functional as F
from transformers import BatchFeature, DynamicCache

from vlmjobs.ranges import module_range, record_function
from vlmjobs.vision.vision_attention import batched_vision_attention

log = logging.getLogger(__name__)

SLOT_ROUND = 64  # cache length is rounded up to this: batches of similar length share a graph
# What a video row adds to a batch (vision/video_inputs.py).
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
MAX_GRAPHS = 4  # captured graphs kept (each holds its own activation pool)


class StaticDecoder:
    """Greedy decoding for one Qwen2.5-VL; keeps the KV cache and graphs between batches."""

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int,
        eos_ids: list[int],
        prefill_rows: int = 4,
        check_every: int = 32,
        cuda_graphs: bool | None = None,
        compile_kernels: bool | None = None,
    ):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        if not hasattr(base, "model") or not hasattr(base.model, "language_model"):
            raise TypeError(
                f"{type(base).__name__}: the static engine needs a Qwen2.5-VL; use 'hf'"
            )
        self.model, self.vl, self.lm = base, base.model, base.model.language_model
        # Qwen3-VL normalises each query/key head before RoPE; its interleaved MRoPE needs
        # nothing here (a generated token's three positions are equal: plain 1D RoPE), and
        # DeepStack adds to image positions only, which the prefill (transformers) handles.
        self.qk_norm = hasattr(self.lm.layers[0].self_attn, "q_norm")
        # Only Qwen2.5-VL's tower attends in windows that batched_vision_attention batches.
        self.windowed = base.config.model_type == "qwen2_5_vl"
        text = base.config.text_config
        self.heads, self.kv_heads = text.num_attention_heads, text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // self.heads
        self.max_batch, self.prefill_rows, self.check_every = max_batch, prefill_rows, check_every
        self.device = next(base.parameters()).device
        self.dtype = self.lm.embed_tokens.weight.dtype
        self.eos = torch.tensor(eos_ids, device=self.device)
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.keys: list[torch.Tensor] = []  # per layer (rows, kv_heads, S, head_dim)
        self.values: list[torch.Tensor] = []
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict]] = {}
        rotary = self.lm.rotary_emb
        self.inv_freq = rotary.inv_freq.float().to(self.device)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.eps = float(self.lm.norm.variance_epsilon)
        on_cuda = self.device.type == "cuda"
        compiling = on_cuda if compile_kernels is None else compile_kernels
        if compiling:
            persistent_compile_cache()
        self.fused = FUSED if not compiling else {
            name: torch.compile(fn, dynamic=False, fullgraph=True) for name, fn in FUSED.items()
        }  # fmt: skip
        self.timing: dict[str, float] = {}  # of the last batch: prefill_s, decode_s, steps

    @torch.inference_mode()
    def generate(
        self, batch: BatchFeature, max_new_tokens: int, min_new_tokens: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy ids (B, max_new_tokens) and their raw-logit log-probs (B, T), on the CPU.
        Rows that stop early go on after their EOS with whatever came next (the caller cuts)."""
        rows, length = batch["input_ids"].shape
        if rows > self.max_batch:
            raise ValueError(f"batch of {rows} rows > max_batch={self.max_batch}: slice it first")
        slots = -(-(length + max_new_tokens) // SLOT_ROUND) * SLOT_ROUND
        try:
            return self._generate(batch, rows, slots, max_new_tokens, min_new_tokens)
        except torch.OutOfMemoryError:
            # What this batch sized (cache rows, graphs and their pools) must not outlive it,
            # or the smaller retry finds the card as full as before.
            self.release()
            raise

    def _generate(
        self, batch: BatchFeature, rows: int, slots: int, max_new_tokens: int, min_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._ensure_cache(rows, slots)
        state = self._state(rows, slots)
        clock = Clock(self.device)
        with record_function("vlmjobs.generate.prefill"):
            logits = self._prefill(batch, state)
        ids = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=self.device)
        logprobs = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=self.device)
        state["min_new"].fill_(min_new_tokens)
        self._pick(logits, state)  # token 0 from the prefill's logits
        ids[:, 0], logprobs[:, 0] = state["token"], state["logprob"]
        clock.mark("prefill_s")
        step = (
            self._graph_step(rows, slots, state)
            if self.cuda_graphs and max_new_tokens > 1
            else None
        )
        clock.mark("capture_s")
        t = 0
        with record_function("vlmjobs.generate.decode"):
            for t in range(1, max_new_tokens):
                if step is not None:
                    step()
                else:
                    self._step(state)
                ids[:, t], logprobs[:, t] = state["token"], state["logprob"]
                if t % self.check_every == 0 and bool(state["done"].all()):
                    break
        clock.mark("decode_s")
        result = ids.cpu(), logprobs.cpu()
        self.timing = clock.read() | {"steps": t}
        return result

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(rows, slots) the KV cache holds now; (0, 0) before the first batch or after release."""
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    def _ensure_cache(self, rows: int, slots: int) -> None:
        """A cache of at least (rows, slots): sized by the batches seen, not by max_batch, so a
        small job or a retry after out-of-memory holds only what it uses."""
        have_rows, have_slots = self.cache_shape
        if have_rows >= rows and have_slots >= slots:
            return
        self.release()  # free the old cache before allocating the new one
        shape = (max(rows, have_rows), self.kv_heads, max(slots, have_slots), self.head_dim)
        for _ in self.lm.layers:
            # zeros, not empty: masked slots are multiplied by 0 in attention, and 0 * NaN = NaN
            self.keys.append(torch.zeros(shape, dtype=self.dtype, device=self.device))
            self.values.append(torch.zeros(shape, dtype=self.dtype, device=self.device))

    def release(self) -> None:
        """Drop the KV cache and the captured graphs (each holds its own memory pool); the
        next batch allocates what it needs. The caller empties the allocator's cache once
        the failed batch's frames are gone (after its ``except`` block)."""
        self.keys, self.values, self.graphs = [], [], {}

    def _state(self, rows: int, slots: int) -> dict[str, torch.Tensor]:
        """The decode step's inputs and outputs; a captured graph reads and writes these very
        tensors, so each (rows, slots) shape keeps one set and the values are copied in."""
        if (rows, slots) in self.graphs:
            return self.graphs[(rows, slots)][1]

        def z(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=self.device)

        return {
            "token": z(rows),  # last chosen token, fed to the next step
            "position": z(rows),  # its rope position: len_i + rope_delta_i + t
            "slot": z(1),  # its cache slot: L + t
            "step": z(1),  # t: index of the token the next step chooses
            "min_new": z(1),
            "pad": z(rows, 1),  # first prompt slot of each row
            "done": z(rows, dtype=torch.bool),
            "logprob": z(rows, dtype=torch.float32),
            "arange": torch.arange(slots, device=self.device)[None],
        }

    def _prefill(self, batch: BatchFeature, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the prompt through the model a few rows at a time; fill the cache and state.
        Returns the last prompt position's logits (B, V)."""
        from vlmjobs.vision.generate import slice_batch, with_token_types

        rows, length = batch["input_ids"].shape
        lengths = batch["attention_mask"].sum(1).to(self.device)
        last = []
        for start in range(0, rows, self.prefill_rows):
            stop = min(rows, start + self.prefill_rows)
            rows_cpu = slice_batch(batch, start, stop, self.model.config)
            part = {
                k: v.to(self.device)
                for k, v in with_token_types(rows_cpu, self.model.config).items()
            }
            width = part["input_ids"].shape[1]  # <= length: shared left padding was dropped
            types = part.get("mm_token_type_ids", torch.zeros_like(part["input_ids"]))
            # Video rows (vision/video_inputs.py) carry their grid and, for Qwen2.5-VL, the
            # seconds per temporal patch; families that do not take it ignore the keyword.
            videos = {k: part[k] for k in VIDEO_KEYS if k in part}
            positions, deltas = self.vl.get_rope_index(
                part["input_ids"],
                mm_token_type_ids=types,
                image_grid_thw=part.get("image_grid_thw"),
                attention_mask=part["attention_mask"],
                **{k: v for k, v in videos.items() if k != "pixel_values_videos"},
            )
            cache = DynamicCache(config=self.model.config.text_config)
            with (
                batched_vision_attention(self.vl.visual) if self.windowed else nullcontext(),
                module_range(self.vl.visual, "vlmjobs.generate.vision_tower"),
            ):
                hidden = self.vl(
                    input_ids=part["input_ids"],
                    attention_mask=part["attention_mask"],
                    pixel_values=part.get("pixel_values"),
                    image_grid_thw=part.get("image_grid_thw"),
                    pixel_values_videos=videos.get("pixel_values_videos"),
                    video_grid_thw=videos.get("video_grid_thw"),
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
            last.append(self.model.lm_head(hidden[:, -1]))
            for layer, (k, v) in enumerate(cache_tensors(cache)):
                self.keys[layer][start:stop, :, length - width : length] = k
                self.values[layer][start:stop, :, length - width : length] = v
            state["position"][start:stop] = lengths[start:stop] + deltas.view(-1).to(self.device)
        state["pad"].copy_((length - lengths)[:, None])
        state["slot"].fill_(length)
        state["step"].fill_(0)
        state["done"].zero_()
        return torch.cat(last)

    def _pick(self, logits: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Greedy choice from raw logits (B, V): EOS is barred before min_new tokens, as in
        transformers; the log-prob is of the raw logits. Advances the step counter."""
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        barred = torch.zeros_like(logits[0], dtype=torch.bool).index_fill_(0, self.eos, True)
        barred = barred & (state["step"] < state["min_new"])
        token = logits.masked_fill(barred, float("-inf")).argmax(-1)
        state["token"].copy_(token)
        state["logprob"].copy_(logprobs.gather(1, token[:, None])[:, 0])
        state["done"] |= torch.isin(token, self.eos)
        state["step"] += 1

    def _step(self, state: dict[str, torch.Tensor]) -> None:
        """Feed state['token'] at state['slot'], choose the next token. Fixed shapes, no sync."""
        rows, fused, layers = state["token"].shape[0], self.fused, self.lm.layers
        hidden = self.lm.embed_tokens(state["token"])[:, None]  # (B, 1, D)
        cos, sin = fused["rope_angles"](
            state["position"], self.inv_freq, self.rope_scale, self.dtype
        )
        arange = state["arange"]  # (1, S): the cache may be longer than this batch needs
        slots = arange.shape[1]
        visible = (arange >= state["pad"]) & (arange <= state["slot"])  # (B, S)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, float("-inf"))[:, None, None]  # once, for all layers
        x = fused["rms_norm"](hidden, layers[0].input_layernorm.weight, self.eps)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            q = attn.q_proj(x).view(rows, self.heads, 1, self.head_dim)
            k = attn.k_proj(x).view(rows, self.kv_heads, 1, self.head_dim)
            v = attn.v_proj(x).view(rows, self.kv_heads, 1, self.head_dim)
            if self.qk_norm:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = fused["rope"](q, k, cos, sin)
            keys, values = self.keys[i][:rows, :, :slots], self.values[i][:rows, :, :slots]
            keys.index_copy_(2, state["slot"], k)
            values.index_copy_(2, state["slot"], v)
            # The query heads sharing a kv head form its "query length": no repeat of K/V
            q = q.view(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=attn.scaling
            )
            out = attn.o_proj(out.reshape(rows, 1, self.heads * self.head_dim))
            hidden, x = fused["add_rms_norm"](
                hidden, out, layer.post_attention_layernorm.weight, self.eps
            )
            mlp = layer.mlp
            out = mlp.down_proj(fused["silu_mul"](mlp.gate_proj(x), mlp.up_proj(x)))
            following = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.lm.norm
            hidden, x = fused["add_rms_norm"](hidden, out, following.weight, self.eps)
        self._pick(self.model.lm_head(x[:, 0]), state)  # x: the final norm of the last layer
        state["position"] += 1
        state["slot"] += 1

    def _first_step(self, state: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
        """One step that compiles the fused kernels; where compiling cannot work (no triton,
        no C compiler) the same functions run eagerly: slower, same results."""
        try:
            self._step(state)
        except torch.cuda.OutOfMemoryError:
            raise  # the caller splits the batch
        except Exception as err:  # noqa: BLE001 - inductor raises many kinds; all mean "cannot"
            if self.fused is FUSED:
                raise
            log.warning(
                "torch.compile of the decode kernels failed (%s): running them eagerly", err
            )
            self.fused = FUSED
            for k, v in saved.items():
                state[k].copy_(v)
            self._step(state)

    def _graph_step(self, rows: int, slots: int, state: dict[str, torch.Tensor]) -> Any:
        """A replay function for the decode step of this shape, capturing it on first use."""
        key = (rows, slots)
        if key not in self.graphs:
            saved = {k: v.clone() for k, v in state.items()}
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up runs allocate outside the graph's pool
                self._first_step(state, saved)
                self._step(state)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(state)
            for k, v in saved.items():  # the warm-up advanced the state; capture ran nothing
                state[k].copy_(v)
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.pop(next(iter(self.graphs)))
            self.graphs[key] = (graph, state)
        return self.graphs[key][0].replay


def persistent_compile_cache() -> str:
    """Keep inductor's compiled kernels (FX graph, AOTAutograd and Triton caches) under
    VLMJOBS_HOME, on local disk, so a new worker process or a rebooted host reuses them:
    the first batch of a job spent ~6 s compiling cold against a warm cache. Unless the
    user set TORCHINDUCTOR_CACHE_DIR; inductor reads it when it first compiles."""
    from vlmjobs import settings

    default = str(settings.home() / "compile-cache")
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default)


class Clock:
    """Phase times of one batch from CUDA events (no host sync until read); wall clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = [("start", self._now())]

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, name: str) -> None:
        self.marks.append((name, self._now()))

    def read(self) -> dict[str, float]:
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            out[name] = round(a.elapsed_time(b) / 1e3 if self.cuda else b - a, 4)
        return out


# The decode step's elementwise work, as small pure functions: eager on CPU; on CUDA each is
# compiled once (same shapes for every layer) into one fused kernel, which cuts the ~45
# kernels a layer launches in transformers' code to ~15. The math is transformers' own.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm: in float32, back to x's dtype before the weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(
    hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add, then the next norm: (new hidden, its norm)."""
    hidden = hidden + delta
    return hidden, rms_norm(hidden, weight, eps)


def rope_angles(
    position: torch.Tensor, inv_freq: torch.Tensor, scale: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, 1, head_dim) of text positions (B,): all 3 mrope components equal."""
    freqs = position[:, None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None, None]
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (Qwen2's rotate-half form) of q, k: (B, heads, 1, head_dim)."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    return rotate(q), rotate(k)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


FUSED: dict[str, Any] = {
    "rms_norm": rms_norm,
    "add_rms_norm": add_rms_norm,
    "rope_angles": rope_angles,
    "rope": rope,
    "silu_mul": silu_mul,
}


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each (B, kv_heads, L, head_dim), across transformers 5.x caches."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))
