"""The intent model: a BERT-family encoder, pooling, and a linear head over the intents.

Not `BertForSequenceClassification`: that head reads the [CLS] pooler, which the packaged
sentence encoder never trained. Mean pooling over L2-normalised embeddings is the space the
encoder was trained for, so a linear probe there starts at the frozen-embedding baseline and
fine-tuning only has to improve on it (LP-FT). `pooling="cls"` is kept for checkpoints whose
[CLS] is meaningful.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from retrieval.encoder import mean_pool

MODEL_FILE = "model.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
FORMAT_VERSION = 1


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    return hidden[:, 0] if how == "cls" else mean_pool(hidden, attention_mask)


class IntentModel(nn.Module):
    def __init__(
        self, encoder: nn.Module, num_labels: int, *, pooling: str, normalize: bool, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        pooled = pool(hidden.float(), attention_mask, self.pooling)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.head(self.dropout(self.embed(input_ids, attention_mask, token_type_ids)))

    def forward_with_embedding(
        self, input_ids, attention_mask, token_type_ids=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled embedding they came from, in one pass."""
        pooled = self.embed(input_ids, attention_mask, token_type_ids)
        return self.head(self.dropout(pooled)), pooled


def load_encoder(base_model: str, *, dropout: float | None = None) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(base_model)
    if dropout is not None:
        config.hidden_dropout_prob = dropout
        config.attention_probs_dropout_prob = dropout
    # The [CLS] pooler is not used, so its weights load as "unexpected": say nothing about it.
    with transformers_errors_only():
        return AutoModel.from_pretrained(base_model, config=config, add_pooling_layer=False)


@contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Silence transformers' own logger below errors for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def save_model(model: IntentModel, tokenizer, directory: Path, *, meta: dict) -> None:
    """Write weights (safetensors), tokenizer and model.json into `directory`."""
    from safetensors.torch import save_file

    encoder = model.encoder
    if meta["kind"] == "lora":
        encoder.save_pretrained(directory / ENCODER_DIR)  # adapters only: a few MB
    else:
        encoder.save_pretrained(directory / ENCODER_DIR, safe_serialization=True)
    head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, directory / HEAD_FILE)
    tokenizer.save_pretrained(directory)
    (directory / MODEL_FILE).write_text(
        json.dumps({"format": FORMAT_VERSION, **meta}, indent=2, ensure_ascii=False)
    )


def load_model(directory: Path, *, device: str) -> tuple[IntentModel, dict]:
    """Rebuild a saved IntentModel (LoRA adapters merged into the base for fast inference)."""
    from safetensors.torch import load_file

    meta = json.loads((directory / MODEL_FILE).read_text())
    if meta["kind"] == "lora":
        from peft import PeftModel

        base = load_encoder(meta["base_model"])
        encoder = PeftModel.from_pretrained(base, directory / ENCODER_DIR).merge_and_unload()
    else:
        encoder = load_encoder(str(directory / ENCODER_DIR))
    model = IntentModel(
        encoder,
        len(meta["labels"]),
        pooling=meta["pooling"],
        normalize=meta["normalize"],
        dropout=0.0,
    )
    model.head.load_state_dict(load_file(directory / HEAD_FILE))
    return model.to(device).eval(), meta
