"""The base-encoder vectors the review pages group: remembered by text, so a page visited again
encodes only what is new."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
from django.conf import settings

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


def test_texts_are_encoded_ahead_a_chunk_at_a_time_between_the_batches(tmp_path) -> None:
    # given: a runtime on the packaged encoder, whose first chunk ahead holds the batch thread
    # until a customer's batch has been queued behind it
    runtime = Runtime(
        base_model=default_base_model(), data_dir=tmp_path, max_batch=1, max_wait_ms=1
    )
    encoder = runtime.encoder()
    encode = encoder.encode
    ran: list[tuple[str, list[str]]] = []
    first_chunk_running, chat_queued = threading.Event(), threading.Event()

    def recording(texts, **kwargs):
        ran.append((threading.current_thread().name, list(texts)))
        if len(ran) == 1:
            first_chunk_running.set()
            assert chat_queued.wait(30)
        return encode(texts, **kwargs)

    encoder.encode = recording
    texts = ["where is my card", "i lost my card", "close my account", "top up failed", "hi"]

    # when: the texts are encoded ahead, two at a time, and a batch arrives meanwhile
    ahead = runtime.embed_ahead(lambda: [*texts, "hi"], chunk=2)
    assert first_chunk_running.wait(30)
    chat = runtime.batcher.run_on_worker(lambda: ran.append(("chat", [])))
    chat_queued.set()
    chat.result(timeout=30)
    ahead.join(timeout=60)

    # then: each chunk ran on the batch thread, the batch right after the first chunk, not
    # after all of them; each text was encoded once
    assert not ahead.is_alive()
    assert [chunk for _, chunk in ran] == [texts[0:2], [], texts[2:4], texts[4:5]]
    names = [name for name, _ in ran]
    assert names[1] == "chat"
    assert all(name.startswith("agent-batch") for name in names[:1] + names[2:])

    # when: a page asks for them, and one more
    ran.clear()
    vectors = runtime.embed(["top up failed", "where is my card", "my pin is blocked"])

    # then: only the new one is encoded, and the vectors are the encoder's own
    assert [chunk for _, chunk in ran] == [["my pin is blocked"]]
    expected = encode(["top up failed", "where is my card", "my pin is blocked"])
    assert np.allclose(vectors, expected, atol=1e-5)


def test_a_page_encoding_never_holds_the_batch_thread(tmp_path) -> None:
    # given: an admin's page encoding the texts (held inside the encoder) as the pass ahead starts
    runtime = Runtime(
        base_model=default_base_model(), data_dir=tmp_path, max_batch=1, max_wait_ms=1
    )
    encoder = runtime.encoder()
    encode = encoder.encode
    encoded: list[list[str]] = []
    page_encoding, page_may_finish = threading.Event(), threading.Event()

    def recording(texts, **kwargs):
        encoded.append(list(texts))
        if threading.current_thread().name == "page":
            page_encoding.set()
            assert page_may_finish.wait(30)
        return encode(texts, **kwargs)

    encoder.encode = recording
    texts = ["where is my card", "i lost my card", "close my account", "top up failed"]
    page = threading.Thread(target=runtime.embed, args=(texts,), name="page")
    page.start()
    assert page_encoding.wait(30)

    # when: the pass ahead starts, and a customer's batch arrives
    ahead = runtime.embed_ahead(lambda: texts, chunk=2)
    chat = runtime.batcher.run_on_worker(lambda: "answered")

    # then: the batch runs while the page still encodes; the pass waits for the page, off the
    # batch thread, and finds everything encoded
    assert chat.result(timeout=10) == "answered"
    assert ahead.is_alive()
    page_may_finish.set()
    page.join(timeout=30)
    ahead.join(timeout=30)
    assert not ahead.is_alive()
    assert encoded == [texts]


def test_nothing_to_encode_ahead_loads_no_encoder(tmp_path) -> None:
    # given: a serving process's runtime whose model answers the chat (the base encoder unused)
    runtime = Runtime(
        base_model=default_base_model(), data_dir=tmp_path, max_batch=1, max_wait_ms=1
    )

    # when: there is nothing to encode ahead
    runtime.embed_ahead(list).join(timeout=30)

    # then: the base encoder (90 MB) was never loaded
    assert runtime._encoder is None


def test_a_process_that_exits_while_encoding_ahead_exits_cleanly(tmp_path) -> None:
    # given: a process encoding 3,000 texts ahead, one at a time, on the packaged encoder
    script = """
import time
from chatbot.runtime import get_runtime
get_runtime().embed_ahead(lambda: [f"message number {i}" for i in range(3000)], chunk=1)
time.sleep(3)
print("exiting", flush=True)
"""
    env = {**os.environ, "CHATBOT_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "import django; django.setup()\n" + script]

    # when: it exits long before the pass is done
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR
    )

    # then: nothing is reported as failed, and the exit is clean
    assert "exiting" in done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "failed" not in done.stderr, done.stderr[-2000:]
