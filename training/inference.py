"""Serving a trained intent classifier: `IntentClassifier.from_dir(path).predict(texts)`."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.encoder import quantize_int8

logger = logging.getLogger(__name__)

__all__ = ["Decision", "IntentClassifier", "Prediction", "quantize_int8"]

PRECISIONS = ("fp32", "bf16", "int8")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere torch
    emulates it, more slowly than fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_name() -> str:
    """The CPU's model name, as benchmarks report it (speeds differ from one CPU to another)."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_precisions(thresholds: dict, *, native_bf16: bool) -> tuple[str, ...]:
    """The precisions a version may be served in on this CPU: fp32, and bf16 (only where the CPU
    computes it natively) and int8, each only if training measured that it held validation
    accuracy. `fastest_precision` then times them."""
    held = [p for p in ("bf16", "int8") if thresholds.get(p) and (p != "bf16" or native_bf16)]
    return ("fp32", *held)


def fastest_precision(
    model, candidates: Sequence[str], *, rounds: int = 7
) -> tuple[str, dict[str, float]]:
    """The candidate precision in which `model` runs chat-sized batches fastest on this CPU, and
    the milliseconds each took (one message of 8 tokens plus a batch of 8 x 32, each the best
    of `rounds`).

    Measured, not assumed from the CPU's features: on a Sapphire Rapids (AMX) bf16 ran batches
    of 32 faster than int8; on an AMD EPYC with AVX512-BF16 but no AMX, int8 ran one message
    2.7x as fast as bf16, and three messages 2x as fast. The candidates take turns within each
    round, so that a process starting beside other busy ones (a worker embedding the answer
    index) slows them all alike.
    """
    import copy

    if len(candidates) == 1:
        return candidates[0], {}
    models = {p: with_precision(copy.deepcopy(model), p) for p in candidates}
    best = {(p, shape): float("inf") for p in candidates for shape in ((1, 8), (8, 32))}
    for (precision, shape), fastest in best.items():  # warm each one's kernels up, once
        best[precision, shape] = min(fastest, _pass_seconds(models[precision], *shape, repeats=1))
    for _ in range(rounds):
        for (precision, shape), fastest in best.items():
            seconds = _pass_seconds(models[precision], *shape, repeats=1, warm_up=False)
            best[precision, shape] = min(fastest, seconds)
    del models
    costs = {p: 1000 * (best[p, (1, 8)] + best[p, (8, 32)]) for p in candidates}
    return min(costs, key=costs.__getitem__), costs


def with_precision(model, precision: str):
    """The intent model with its encoder in `precision`; pooling and the head stay fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int8":
        return quantize_int8(model)
    if precision == "bf16":
        model.encoder.to(torch.bfloat16)
    return model


@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float  # calibrated probability of `intent`
    top_k: tuple[tuple[str, float], ...]  # best first, including `intent`
    # Mean cosine similarity of the 5 nearest training examples, in the model's space.
    similarity: float | None = None
    # Cosine similarity to the nearest reviewed out-of-scope message (None: the model has none).
    oos_similarity: float | None = None


@dataclass(frozen=True)
class Decision:
    prediction: Prediction
    decision: str  # answer | clarify | out_of_scope

    @property
    def similarity(self) -> float:
        return self.prediction.similarity


class IntentClassifier:
    def __init__(
        self, model, tokenizer, meta: dict, thresholds: dict, *, device: str, precision: str
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.labels: list[str] = meta["labels"]
        self.max_length = int(meta.get("max_length", 64))
        self.meta = meta
        self.thresholds = thresholds
        self.temperature = float(thresholds.get("temperature", 1.0))
        self.device = device
        self.precision = precision  # of the encoder's weights: fp32, bf16 or int8
        # What the precisions it could be served in took when it loaded (see fastest_precision).
        self.precision_ms: dict[str, float] = {}
        self.path: Path | None = None
        self.traced: TracedForward | None = None  # the forward pass as a TorchScript graph
        # What one forward pass costs beyond its tokens, in tokens (measured on CPU; None: one
        # pass per batch, whatever the lengths).
        self.call_tokens: float | None = None
        self._neighbours = None  # FAISS index of the training examples, loaded when first needed
        self._out_of_scope: np.ndarray | None = None  # reviewed out-of-scope messages, likewise

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        precision: str | None = None,
        trace: bool = True,
    ) -> IntentClassifier:
        """Load a model version; on CPU, `precision=None` picks the fastest of those that
        training found to hold its accuracy, timed here (`cpu_precisions`, `fastest_precision`),
        and `trace` runs the forward pass as a TorchScript graph when it gives the same outputs.
        On CUDA it runs under autocast."""
        import torch
        from transformers import AutoTokenizer

        from training.model import load_model

        path = Path(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, meta = load_model(path, device=device)
        thresholds = json.loads((path / "thresholds.json").read_text())
        precision_ms: dict[str, float] = {}
        if device != "cpu":
            precision = "fp32"  # the weights; the forward pass runs under autocast
        elif precision is None:
            candidates = cpu_precisions(thresholds, native_bf16=cpu_has_native_bf16())
            precision, precision_ms = fastest_precision(model, candidates)
        model = with_precision(model, precision)
        tokenizer = AutoTokenizer.from_pretrained(path)
        logger.info(
            "Loaded intent model %s on %s (%s; ms for 1 x 8 + 8 x 32 tokens in each: %s)",
            path,
            device,
            precision,
            {name: round(ms, 2) for name, ms in precision_ms.items()},
        )
        classifier = cls(model, tokenizer, meta, thresholds, device=device, precision=precision)
        classifier.path = path
        classifier.precision_ms = precision_ms
        if device == "cpu":
            if trace:
                classifier.traced = traced_forward(model, tokenizer)
            classifier.call_tokens = call_overhead_tokens(classifier.traced or model)
            logger.info("A forward pass costs %.0f tokens beyond its own", classifier.call_tokens)
        return classifier

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    def logits(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        return self._run(texts, batch_size=batch_size)[0]

    def _run(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled embeddings, one forward pass."""
        from training.train import Batcher, run_model

        if not texts:
            hidden = self.model.head.in_features
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, hidden), np.float32)
        batcher = Batcher(self.tokenizer, texts, max_length=self.max_length)
        model = self.traced or self.model
        return run_model(
            model,
            batcher,
            self.device,
            batch_size=batch_size,
            both=True,
            call_tokens=self.call_tokens,
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, one row per text, columns in `self.labels` order."""
        from training.train import softmax

        return softmax(self.logits(texts) / self.temperature)

    def predict(self, texts: Sequence[str], *, k: int = 3) -> list[Prediction]:
        """Top-k intents with calibrated probabilities, and each text's similarity to the
        training examples (what the out-of-scope check reads), from one forward pass."""
        return self.analyse(texts, k=k)[0]

    def analyse(self, texts: Sequence[str], *, k: int = 3) -> tuple[list[Prediction], np.ndarray]:
        """`predict`, plus each text's unit-length embedding in the model's space (what the
        chat retrieves answer templates with), from the same forward pass."""
        from training.train import softmax, unit_rows

        logits, embeddings = self._run(texts)
        probs = softmax(logits / self.temperature)
        vectors = unit_rows(embeddings)
        similarity = self._similarity(vectors)
        oos = self._oos_similarity(vectors)
        k = min(k, len(self.labels))
        predictions = []
        for i, row in enumerate(probs):
            best = np.argsort(-row)[:k]
            top = tuple((self.labels[j], float(row[j])) for j in best)
            sim = None if similarity is None else float(similarity[i])
            near_oos = None if oos is None else float(oos[i])
            predictions.append(Prediction(top[0][0], top[0][1], top, sim, near_oos))
        return predictions, vectors

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings in the model's space, one row per text."""
        from training.train import unit_rows

        return unit_rows(self._run(texts)[1])

    @property
    def dim(self) -> int:
        return int(self.model.head.in_features)

    def _similarity(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Mean cosine similarity of unit-length embeddings to their 5 nearest training
        examples; None for a version saved before models kept their examples' embeddings
        (its policy has no out-of-scope threshold to read it with)."""
        import faiss

        from training.train import NEIGHBOURS_FILE, NEIGHBOURS_K

        if self._neighbours is None:
            path = None if self.path is None else self.path / NEIGHBOURS_FILE
            if path is None or not path.exists():
                return None
            neighbours = np.load(path).astype(np.float32)
            faiss.normalize_L2(neighbours)
            index = faiss.IndexFlatIP(neighbours.shape[1])
            index.add(neighbours)
            self._neighbours = index
        if not len(embeddings):
            return np.zeros(0, np.float32)
        scores, _ = self._neighbours.search(
            np.ascontiguousarray(embeddings, dtype=np.float32),
            min(NEIGHBOURS_K, self._neighbours.ntotal),
        )
        return scores.mean(axis=1)

    def _oos_similarity(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Cosine similarity to the nearest reviewed out-of-scope message the model was trained
        with; None when it had none."""
        from training.train import OUT_OF_SCOPE_FILE, nearest_out_of_scope, unit_rows

        if self._out_of_scope is None:
            path = None if self.path is None else self.path / OUT_OF_SCOPE_FILE
            rows = unit_rows(np.load(path)) if path and path.exists() else None
            self._out_of_scope = np.zeros((0, 0), np.float32) if rows is None else rows
        if not self._out_of_scope.size:
            return None
        return nearest_out_of_scope(embeddings, self._out_of_scope)

    def nearest_similarity(self, texts: Sequence[str]) -> np.ndarray:
        """Mean cosine similarity of each text to its 5 nearest training examples."""
        return np.array([p.similarity for p in self.predict(texts, k=1)], dtype=np.float32)

    @cached_property
    def policy(self):
        """The version's decision policy, parsed once (every batch reads it)."""
        from training.policy import ANSWER_ALL, Policy

        if "policy" not in self.thresholds:
            return ANSWER_ALL
        return Policy.from_dict(self.thresholds["policy"])

    def decide(self, texts: Sequence[str]) -> list[Decision]:
        """Predictions with the policy's decision, as the chat would take it."""
        policy = self.policy
        return [
            Decision(p, policy.decide(p.confidence, p.similarity, p.oos_similarity))
            for p in self.predict(texts)
        ]


class TracedForward:
    """The intent model's forward pass as a TorchScript graph, sharing the model's weights.

    The graph runs its operators in C++ without taking Python's GIL between them: the same
    pass is about a third faster alone, and beside a busy Python thread (a server's event loop
    and database threads) it ran 1.7x as many passes as eager PyTorch.
    """

    def __init__(self, graph) -> None:
        self.graph = graph

    def eval(self) -> TracedForward:
        return self

    def forward_with_embedding(self, input_ids, attention_mask, token_type_ids):
        return self.graph(input_ids, attention_mask, token_type_ids)


def call_overhead_tokens(model, *, repeats: int = 3, most: float = 512.0) -> float:
    """What one forward pass costs beyond the tokens it computes, counted in tokens.

    Timed on two shapes of batch (1 x 8 and 8 x 32 tokens, the best of `repeats` each) and fitted
    as a fixed cost plus a cost per token. Where a pass costs little beyond its tokens, as on a
    CPU without matrix units, splitting a batch by length saves the padding's work; where the
    fixed cost is large, it does not pay. In fp32 and bf16 timing noise can only make the split
    less than best; in int8, whose activations are scaled per pass, it can move a result a
    little (see `chatbot.learning.model_scores`, which therefore does not split). Capped at
    `most`.
    """
    small_tokens, large_tokens = 8, 8 * 32
    small = _pass_seconds(model, 1, 8, repeats=repeats)
    large = _pass_seconds(model, 8, 32, repeats=repeats)
    per_token = (large - small) / (large_tokens - small_tokens)
    if per_token <= 0:
        return most
    return min(max(small / per_token - small_tokens, 0.0), most)


def _pass_seconds(
    model, rows: int, length: int, *, repeats: int = 3, warm_up: bool = True
) -> float:
    """The fastest of `repeats` forward passes of a `rows` x `length` batch, after one to warm
    the kernels up (unless they are warm already)."""
    import time

    import torch

    shape = (rows, length)
    inputs = (torch.full(shape, 1000), torch.ones(shape, dtype=torch.long))
    inputs += (torch.zeros(shape, dtype=torch.long),)
    times = []
    with torch.inference_mode():
        if warm_up:
            model.forward_with_embedding(*inputs)
        for _ in range(repeats):
            started = time.perf_counter()
            model.forward_with_embedding(*inputs)
            times.append(time.perf_counter() - started)
    return min(times)


TRACE_PROBES = (
    ["hi"],
    ["a short one", "a longer message, so that this batch has padding in it", "a third"],
)


def traced_forward(model, tokenizer) -> TracedForward | None:
    """Trace `model.forward_with_embedding`, or None where the graph is not the same function.

    Traced on a padded batch, so that the attention mask is part of the graph, then checked
    against the eager model on batches of other shapes before it is used.
    """
    import torch

    if "token_type_ids" not in tokenizer.model_input_names:
        return None  # traced with the three inputs BERT takes

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model.forward_with_embedding(input_ids, attention_mask, token_type_ids)

    def inputs(texts: list[str]) -> tuple:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]

    from training.model import transformers_errors_only

    eager = Forward().eval()
    try:
        # (transformers logs notes on the config values the tracer reads)
        with torch.inference_mode(), warnings.catch_warnings(), transformers_errors_only():
            warnings.simplefilter("ignore")  # the tracer's notes on the Python values it fixed
            graph = torch.jit.trace(eager, inputs(TRACE_PROBES[1]), check_trace=False)
            for probe in TRACE_PROBES:
                expected, got = eager(*inputs(probe)), graph(*inputs(probe))
                if not all(
                    torch.allclose(a.float(), b.float(), atol=1e-4)
                    for a, b in zip(expected, got, strict=True)
                ):
                    logger.warning("The traced model differs from the eager one; not traced")
                    return None
    except Exception:
        logger.warning("The model could not be traced; it runs eagerly", exc_info=True)
        return None
    return TracedForward(graph)
