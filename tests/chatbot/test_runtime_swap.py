"""Which model a serving process answers with while promotions and rollbacks follow each other
faster than a model loads. The loads are stand-ins held at a gate, so that each interleaving
happens every time; everything else is the runtime's own."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from chatbot.runtime import Runtime
from retrieval.index import Entry, KnowledgeIndex


class Loaded:
    def __init__(self, version: str) -> None:
        self.version = version


@pytest.fixture
def runtime(tmp_path):
    runtime = Runtime(base_model="unused", data_dir=tmp_path, max_batch=1, max_wait_ms=1)
    for version in ("v1", "v2", "v3"):
        runtime.models.path(version).mkdir(parents=True)
    runtime.index = lambda: None  # no answer index: a swap only loads the model
    gates = {v: threading.Event() for v in ("v1", "v2", "v3")}
    gates["v1"].set()
    loads: Counter = Counter()

    def load(version: str) -> Loaded:
        loads[version] += 1
        assert gates[version].wait(10)
        return Loaded(version)

    runtime._load_classifier = load
    runtime.gates, runtime.loads = gates, loads
    runtime.models.set_live("v1")
    assert runtime.classifier()[1] == "v1"  # the first model loads in line
    return runtime


def _swaps_finish() -> None:
    for thread in threading.enumerate():
        if thread.name == "model-swap":
            thread.join(10)


def test_a_rollback_while_the_new_version_loads_keeps_the_live_one(runtime) -> None:
    # given: v2 promoted, loading in the background while v1 answers
    runtime.models.set_live("v2")
    assert runtime.classifier()[1] == "v1"

    # when: rolled back to v1 before v2 has loaded
    runtime.models.set_live("v1")
    assert runtime.classifier()[1] == "v1"
    runtime.gates["v2"].set()
    _swaps_finish()

    # then: v2's late load is dropped, and v1 is not loaded again
    assert runtime.classifier()[1] == "v1"
    assert runtime.loads == {"v1": 1, "v2": 1}


def _swap_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "model-swap"}


def test_two_promotions_in_a_row_load_each_version_once(runtime) -> None:
    # given: v2 promoted and loading, then v3 promoted while v2 still loads
    runtime.models.set_live("v2")
    runtime.classifier()
    loading_v2 = _swap_threads()
    runtime.models.set_live("v3")
    runtime.classifier()

    # when: v2 finishes first, and batches keep asking which model to use
    runtime.gates["v2"].set()
    for thread in loading_v2:
        thread.join(10)
    served = [runtime.classifier()[1] for _ in range(3)]
    runtime.gates["v3"].set()
    _swaps_finish()

    # then: v2, no longer live, never answered; v3 loaded once
    assert served == ["v1", "v1", "v1"]
    assert runtime.classifier()[1] == "v3"
    assert runtime.loads == {"v1": 1, "v2": 1, "v3": 1}


class Embedding(Loaded):
    """A loaded model that embeds texts, and records on which thread it did."""

    dim = 4

    def __init__(self, version: str, embedded: Counter) -> None:
        super().__init__(version)
        self.embedded = embedded

    def embed(self, texts):
        self.embedded[self.version, threading.current_thread().name] += len(texts)
        return np.tile(np.array([[1, 0, 0, 0]], np.float32), (len(texts), 1))


def test_a_swap_embeds_the_index_for_the_new_model_in_the_background_only(
    tmp_path, monkeypatch
) -> None:
    # given: v1 live, its copy of a 50-example index embedded
    import chatbot.runtime as runtime_module

    index = KnowledgeIndex.build(
        examples=[Entry(i + 1, f"example {i}", "i") for i in range(50)],
        templates=[Entry(100, "template", "i")],
        encode=lambda batch: np.ones((len(batch), 4), np.float32) / 2,
        encoder_name="base",
        dim=4,
        extra_info={"version": "idx1"},
    )
    runtime = Runtime(base_model="unused", data_dir=tmp_path, max_batch=1, max_wait_ms=1)
    for version in ("v1", "v2"):
        runtime.models.path(version).mkdir(parents=True)
    runtime.index = lambda: index
    embedded: Counter = Counter()
    runtime._load_classifier = lambda version: Embedding(version, embedded)
    # Freeing memory after the new copy is embedded takes a while: hold the swap there.
    in_trim, release = threading.Event(), threading.Event()

    def trim() -> None:
        if threading.current_thread().name == "model-swap":
            in_trim.set()
            assert release.wait(10)

    monkeypatch.setattr(runtime_module, "trim_free_memory", trim)

    def batch() -> None:  # what analyse_batch does first, on the batch thread
        classifier, version = runtime.classifier()
        runtime.model_space_index(runtime.index(), classifier, version)

    runtime.models.set_live("v1")
    batch()
    embedded.clear()

    # when: v2 is promoted, and messages keep coming while the swap embeds and frees memory
    runtime.models.set_live("v2")
    batch()
    assert in_trim.wait(10)
    batch()
    release.set()
    _swaps_finish()
    batch()  # the first message on v2

    # then: the batches embedded nothing; the swap thread embedded the index once
    assert runtime.classifier()[1] == "v2"
    assert embedded == {("v2", "model-swap"): 51}


def test_a_closed_runtime_stops_watching_for_new_models(runtime) -> None:
    # given: a runtime that looks for a new live model every 10 ms
    runtime.watch(0.01)
    runtime.gates["v2"].set()

    # when: it is closed, and a model is promoted after
    runtime.close()
    runtime.watcher.join(timeout=5)
    runtime.models.set_live("v2")

    # then: its watcher has ended, and loaded nothing more
    assert not runtime.watcher.is_alive()
    assert runtime.loads["v2"] == 0


def test_closing_waits_for_a_model_load_under_way(runtime) -> None:
    # given: v2 promoted, loading in the background (held at its gate)
    runtime.models.set_live("v2")
    assert runtime.classifier()[1] == "v1"
    [swap] = [t for t in threading.enumerate() if t.name == "model-swap"]

    # when: the runtime is closed while it loads (the process exits)
    closing = threading.Thread(target=runtime.close)
    closing.start()
    closing.join(0.2)

    # then: closing waits for the load, which the exit would otherwise cut off in a forward
    # pass (the process aborts); the load then ends, and a later swap loads nothing
    assert closing.is_alive() and swap.is_alive()
    runtime.gates["v2"].set()
    closing.join(10)
    assert not closing.is_alive() and not swap.is_alive()
    runtime.models.set_live("v3")
    runtime.gates["v3"].set()
    assert runtime.classifier()[1] == "v2"
    _swaps_finish()
    assert runtime.loads["v3"] == 0
