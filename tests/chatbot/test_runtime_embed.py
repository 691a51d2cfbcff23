"""The base-encoder vectors the review pages group: remembered by text, so a page visited again
encodes only what is new."""

from __future__ import annotations

import numpy as np

from chatbot import runtime as runtime_module
from chatbot.runtime import Runtime
from training.train import default_base_model


def test_texts_are_encoded_once_and_the_oldest_are_forgotten_first(tmp_path, monkeypatch) -> None:
    # given: a runtime on the packaged encoder that remembers three texts, and a count of what
    # reaches the encoder
    monkeypatch.setattr(runtime_module, "EMBEDDINGS_KEPT", 3)
    runtime = Runtime(
        base_model=default_base_model(), data_dir=tmp_path, max_batch=1, max_wait_ms=1
    )
    encoder = runtime.encoder()
    encoded: list[str] = []
    encode = encoder.encode

    def counting(texts, **kwargs):
        encoded.extend(texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode", counting)
    texts = ["where is my card", "i lost my card", "where is my card", "close my account"]

    # when
    first = runtime.embed(texts)

    # then: the encoder's own vectors, in order, each text encoded once
    assert np.allclose(first, encode(texts), atol=1e-5)
    assert encoded == ["where is my card", "i lost my card", "close my account"]

    # when: one text seen, one new: the least recently asked for is forgotten
    encoded.clear()
    again = runtime.embed(["close my account", "how do i top up"])

    # then
    assert encoded == ["how do i top up"]
    assert np.array_equal(again[0], first[3])
    encoded.clear()
    runtime.embed(["i lost my card", "where is my card"])
    assert encoded == ["where is my card"]
    assert runtime.embed([]).shape == (0, encoder.dim)
