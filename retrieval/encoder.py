"""Sentence embeddings from a BERT-family checkpoint: mean-pooled and L2-normalised.

Mean pooling is how the packaged MiniLM sentence encoder was trained, so inner products of these
vectors are cosine similarities that match its training objective.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class BaseModelError(ValueError):
    """The base model setting names no checkpoint this machine can load."""


def checked_base_model(name: str | Path) -> str:
    """`name` if it can name a Hugging Face checkpoint here: a directory with a config.json, or
    a hub id while downloads are allowed. Otherwise BaseModelError saying what to fix, instead
    of transformers' "Repo id must be in the form..." for a mistyped path."""
    name = str(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(
                f"Base model {name}: the directory has no config.json, so it is not a Hugging "
                "Face checkpoint. Set CHATBOT_BASE_MODEL (or --base-model) to one."
            )
        return str(path)
    hub_id = name.count("/") <= 1 and not name.startswith((".", "/", "~"))
    if not hub_id:
        raise BaseModelError(
            f"Base model {name}: no such directory. Set CHATBOT_BASE_MODEL (or --base-model) "
            "to a checkpoint directory."
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise BaseModelError(
            f"Base model {name}: not a directory here, and HF_HUB_OFFLINE forbids downloading "
            "it. Set CHATBOT_BASE_MODEL (or --base-model) to a checkpoint directory."
        )
    return name


def pick_device(device: str | None = None) -> str:
    """The device to run on: the one asked for, else CUDA when present, else the CPU."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sequence, ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def quantize_int8(model):
    """Dynamic int8 quantisation of every Linear layer: int8 weights, activations per batch.

    Per-channel weight scales: on BANKING77 validation, per-tensor scales cost the intent model
    0.7 points of accuracy and per-channel 0.3, for the same speed.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


def encoder_name(path: str | Path, *, int8: bool) -> str:
    """What an index records as its encoder: vectors from different encoders never mix."""
    return f"{path}#int8" if int8 else str(path)


class SentenceEncoder:
    """Turns texts into unit vectors whose inner product is their cosine similarity."""

    def __init__(self, model, tokenizer, *, name: str, max_length: int, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.device = device

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        max_length: int = 128,
        device: str | None = None,
        int8: bool = False,
    ) -> SentenceEncoder:
        """`int8` quantises the encoder on CPU (about twice as fast for one message)."""
        from transformers import AutoModel, AutoTokenizer

        path = checked_base_model(path)
        device = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).to(device).eval()
        int8 = int8 and device == "cpu"
        if int8:
            model = quantize_int8(model)
        logger.info("Loaded sentence encoder %s on %s (int8: %s)", path, device, int8)
        name = encoder_name(path, int8=int8)
        return cls(model, tokenizer, name=name, max_length=max_length, device=device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed texts as float32 rows of unit length, in the order given."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length keeps padding small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        use_amp = self.device.startswith("cuda")
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with (
                torch.inference_mode(),
                torch.autocast("cuda", dtype=torch.float16, enabled=use_amp),
            ):
                hidden = self.model(**batch).last_hidden_state
                vectors = torch.nn.functional.normalize(
                    mean_pool(hidden.float(), batch["attention_mask"]), dim=-1
                )
            out[chunk] = vectors.cpu().numpy()
        return out
