"""FAISS indexes of intent examples and answer templates, saved with a JSON sidecar.

Both indexes are `IndexIDMap` over inner product, so a hit's id is the database primary key of
the example or template, and its score is a cosine similarity (the vectors are unit length).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """An indexed text: an intent example or an answer template."""

    id: int
    text: str
    intent: str
    suggestions: tuple[str, ...] = ()
    # Whether the text may be shown to any customer (as a quick reply); False for a customer's
    # own words, learnt from a review.
    public: bool = True


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    intent: str
    text: str
    suggestions: tuple[str, ...] = ()
    public: bool = True


# Below this many vectors an exact (flat) search is fast enough and never misses; above it,
# an HNSW graph answers in far less than a linear scan.
APPROXIMATE_ABOVE = 50_000


def _make_index(
    vectors: np.ndarray, ids: Sequence[int], dim: int, approximate_above: int = APPROXIMATE_ABOVE
):
    import faiss

    if len(ids) > approximate_above:
        graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efSearch = 128
        index = faiss.IndexIDMap(graph)
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if len(ids):
        index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, "int64")
        )
    return index


@dataclass
class _Table:
    """One FAISS index and the entries its ids point to."""

    entries: dict[int, Entry]
    vectors: np.ndarray
    faiss_index: object
    ids_by_intent: dict[str, np.ndarray] = field(default_factory=dict)
    # Each intent's rows of `vectors`, for searching within one intent by a plain product: an
    # intent has few entries, and a FAISS search with an id selector scans the whole index.
    rows_by_intent: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        entries: Sequence[Entry],
        vectors: np.ndarray,
        dim: int,
        approximate_above: int = APPROXIMATE_ABOVE,
        prebuilt: object | None = None,
    ) -> _Table:
        ids = [entry.id for entry in entries]
        by_intent: dict[str, list[int]] = {}
        rows_by_intent: dict[str, list[int]] = {}
        for row, entry in enumerate(entries):
            by_intent.setdefault(entry.intent, []).append(entry.id)
            rows_by_intent.setdefault(entry.intent, []).append(row)
        return cls(
            entries={entry.id: entry for entry in entries},
            vectors=vectors,
            faiss_index=(
                prebuilt
                if prebuilt is not None
                else _make_index(vectors, ids, dim, approximate_above)
            ),
            ids_by_intent={k: np.asarray(v, dtype="int64") for k, v in by_intent.items()},
            rows_by_intent={k: np.asarray(v, dtype="int64") for k, v in rows_by_intent.items()},
        )

    def search(self, queries: np.ndarray, k: int, intent: str | None = None) -> list[list[Hit]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if intent is not None:
            return self._search_intent(queries, k, intent)
        k = min(k, len(self.entries))
        if k == 0:
            return [[] for _ in range(len(queries))]
        scores, ids = self.faiss_index.search(queries, k)
        return [self._hits(row, row_ids) for row, row_ids in zip(scores, ids, strict=True)]

    def _search_intent(self, queries: np.ndarray, k: int, intent: str) -> list[list[Hit]]:
        """Exact search among one intent's entries."""
        ids = self.ids_by_intent.get(intent)
        if ids is None:
            return [[] for _ in range(len(queries))]
        scores = queries @ self.vectors[self.rows_by_intent[intent]].T
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [
            self._hits(np.take(row_scores, row_best), ids[row_best])
            for row_scores, row_best in zip(scores, best, strict=True)
        ]

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        hits = []
        for score, entry_id in zip(scores, ids, strict=True):
            if entry_id < 0:  # FAISS found fewer than k
                continue
            entry = self.entries[int(entry_id)]
            hits.append(
                Hit(
                    entry.id,
                    float(score),
                    entry.intent,
                    entry.text,
                    entry.suggestions,
                    entry.public,
                )
            )
        return hits


class KnowledgeIndex:
    """Answers 'which known example is this message closest to, and which template fits it'."""

    def __init__(
        self,
        *,
        examples: Sequence[Entry],
        example_vectors: np.ndarray,
        templates: Sequence[Entry],
        template_vectors: np.ndarray,
        info: dict,
        prebuilt: tuple[object, object] = (None, None),
    ) -> None:
        self.dim = int(info["dim"])
        self.info = info
        limit = int(info.get("approximate_above", APPROXIMATE_ABOVE))
        self.examples = _Table.create(examples, example_vectors, self.dim, limit, prebuilt[0])
        self.templates = _Table.create(templates, template_vectors, self.dim, limit, prebuilt[1])
        self.encode: Callable[[Sequence[str]], np.ndarray] | None = None

    @property
    def version(self) -> str:
        return str(self.info.get("version", ""))

    @property
    def intents(self) -> list[str]:
        return sorted(self.templates.ids_by_intent)

    @classmethod
    def build(
        cls,
        *,
        examples: Sequence[Entry],
        templates: Sequence[Entry],
        encode: Callable[[Sequence[str]], np.ndarray],
        encoder_name: str,
        dim: int,
        reuse: KnowledgeIndex | None = None,
        extra_info: dict | None = None,
        approximate_above: int = APPROXIMATE_ABOVE,
    ) -> KnowledgeIndex:
        """Embed every entry; texts already embedded by `reuse` with the same encoder are kept."""
        known: dict[str, np.ndarray] = {}
        if reuse is not None and reuse.info.get("encoder") == encoder_name:
            known = reuse.vectors_by_text()
        texts = sorted({e.text for e in [*examples, *templates]} - known.keys())
        if texts:
            known.update(zip(texts, encode(texts), strict=True))

        def stack(entries: Sequence[Entry]) -> np.ndarray:
            if not entries:
                return np.zeros((0, dim), dtype=np.float32)
            return np.stack([known[e.text] for e in entries]).astype(np.float32)

        info = {
            "format": FORMAT_VERSION,
            "encoder": encoder_name,
            "dim": dim,
            "built_at": time.time(),
            "examples": len(examples),
            "templates": len(templates),
            "newly_encoded": len(texts),
            "approximate_above": approximate_above,
            **(extra_info or {}),
        }
        return cls(
            examples=examples,
            example_vectors=stack(examples),
            templates=templates,
            template_vectors=stack(templates),
            info=info,
        )

    def holds(
        self, *, examples: Sequence[Entry], templates: Sequence[Entry], encoder_name: str
    ) -> bool:
        """Whether this index was built from exactly these entries with this encoder."""
        return (
            self.info.get("encoder") == encoder_name
            and list(self.examples.entries.values()) == list(examples)
            and list(self.templates.entries.values()) == list(templates)
        )

    def vectors_by_text(self) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}
        for table in (self.examples, self.templates):
            for row, entry in enumerate(table.entries.values()):
                vectors[entry.text] = table.vectors[row]
        return vectors

    def search(self, text: str, k: int = 5, intent: str | None = None) -> list[Hit]:
        """Nearest intent examples to `text`, optionally only those of one intent."""
        if self.encode is None:
            raise RuntimeError("Attach an encoder (index.encode = encoder.encode) to search text.")
        return self.search_examples(self.encode([text]), k, intent=intent)[0]

    def search_examples(
        self, vectors: np.ndarray, k: int, *, intent: str | None = None
    ) -> list[list[Hit]]:
        return self.examples.search(vectors, k, intent)

    def search_templates(
        self, vectors: np.ndarray, k: int, *, intent: str | None = None
    ) -> list[list[Hit]]:
        return self.templates.search(vectors, k, intent)

    def save(self, directory: str | Path) -> None:
        import faiss

        directory = Path(directory)
        faiss.write_index(self.examples.faiss_index, str(directory / "examples.faiss"))
        faiss.write_index(self.templates.faiss_index, str(directory / "templates.faiss"))
        sidecar = {
            "info": {**self.info, "version": directory.name},
            "examples": [asdict(e) for e in self.examples.entries.values()],
            "templates": [asdict(e) for e in self.templates.entries.values()],
        }
        (directory / "index.json").write_text(
            json.dumps(sidecar, ensure_ascii=False), encoding="utf-8"
        )

    @classmethod
    def load(cls, directory: str | Path) -> KnowledgeIndex:
        import faiss

        directory = Path(directory)
        sidecar = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        info = {**sidecar["info"], "version": directory.name}

        def read(name: str, rows: list[dict]):
            entries = [Entry(**{**row, "suggestions": tuple(row["suggestions"])}) for row in rows]
            stored = faiss.read_index(str(directory / name))
            vectors = stored.index.reconstruct_n(0, stored.ntotal) if stored.ntotal else None
            if vectors is None:
                vectors = np.zeros((0, int(info["dim"])), dtype=np.float32)
            return entries, vectors, stored

        examples, example_vectors, example_index = read("examples.faiss", sidecar["examples"])
        templates, template_vectors, template_index = read("templates.faiss", sidecar["templates"])
        return cls(
            examples=examples,
            example_vectors=example_vectors,
            templates=templates,
            template_vectors=template_vectors,
            info=info,
            prebuilt=(example_index, template_index),
        )
