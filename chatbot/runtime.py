"""The models and indexes one server process answers with: loaded once, swapped when published.

Models load lazily on the batcher's worker thread, so `migrate`, the admin and beat never import
torch. Each batch checks the live pointers of the intent model and the answer index first: a
newly promoted version takes effect at the next batch, and a batch in flight finishes on the
versions it started with.

With an intent model live, a message takes one forward pass: the model's pooled embedding both
classifies it and finds its closest examples and templates, in a copy of the answer index
embedded by that model (kept per model and index version; an edited index re-embeds only its
changed texts). The base sentence encoder, a second BERT, then never runs in the chat; it
answers alone while no model is live.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

from chatbot.batching import Batched, MicroBatcher
from retrieval.index import APPROXIMATE_ABOVE, Hit, KnowledgeIndex
from retrieval.store import VersionStore
from training.policy import ANSWER_ALL, Policy

if TYPE_CHECKING:
    from training.inference import IntentClassifier, Prediction

logger = logging.getLogger(__name__)

EXAMPLE_NEIGHBOURS = 10
MODEL_SPACE_KEPT = 2  # model-space copies of the index kept: the live model's and an incoming one
EMBEDDINGS_KEPT = 20_000  # base-encoder vectors of review texts remembered (about 1.5 KB each)
EMBED_AHEAD_CHUNK = 4  # texts encoded ahead per turn on the batch thread (about 10 ms on a CPU)


@dataclass(frozen=True)
class Analysis:
    """What the models make of one message, before the agent decides what to say."""

    vector: np.ndarray
    example_hits: list[Hit]
    index: KnowledgeIndex | None
    prediction: Prediction | None = None
    model_version: str = ""
    policy: Policy = ANSWER_ALL
    # Milliseconds of each stage of the batch this message was in.
    stages: dict[str, float] = field(default_factory=dict)


class Runtime:
    def __init__(
        self,
        *,
        base_model: str,
        data_dir: Path,
        max_batch: int,
        max_wait_ms: float,
        encoder_int8: bool = False,
    ) -> None:
        self.base_model = base_model
        self.encoder_int8 = encoder_int8
        self.indexes = VersionStore(Path(data_dir) / "indexes")
        self.models = VersionStore(Path(data_dir) / "models")
        self._encoder = None
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> vector, LRU
        self._embeddings_lock = threading.Lock()
        # One encoding of review texts at a time: a page and the ahead-of-time pass share a
        # tokenizer, and two passes side by side would only split the same cores.
        self._encode_lock = threading.Lock()
        self._index: KnowledgeIndex | None = None
        self._classifier: IntentClassifier | None = None
        self._classifier_version: str | None = None
        self._loading: str | None = None  # a version loading in the background
        self._unloadable: str | None = None  # a version that failed to load
        # The answer index embedded in the live model's space: (index, model) versions -> index.
        # The index embedded by a model, by (index version, model version): the live model's,
        # and the incoming one's while a swap embeds it (batches go on with the live one).
        self._model_space: dict[tuple[str, str], KnowledgeIndex] = {}
        self._watching = False
        self._background: list[threading.Thread] = []  # what close() waits for
        self._background_lock = threading.Lock()
        self.watcher: threading.Thread | None = None  # started by `watch`
        self._closed = threading.Event()
        self._warmed = False
        self._warm_up_pass: Future | None = None  # the first forward pass, queued by warm_up
        self._watch_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one model loads at a time
        self._lock = threading.Lock()
        self.batcher: MicroBatcher[str, Analysis] = MicroBatcher(
            self.analyse_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, name="agent"
        )

    @property
    def encoder_name(self) -> str:
        """The name the encoder's vectors are recorded under (int8 or not, as loaded here)."""
        return self.encoder().name

    def encoder(self):
        with self._lock:
            if self._encoder is None:
                from retrieval.encoder import SentenceEncoder

                configure_torch()
                with self._load_lock:
                    self._encoder = SentenceEncoder.from_pretrained(
                        self.base_model, int8=self.encoder_int8
                    )
            return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The base encoder's vectors of `texts`, remembered by text (the last EMBEDDINGS_KEPT):
        the review pages group the same customer messages at every visit, and encoding a few
        thousand of them anew takes tens of seconds on a CPU."""
        if not texts:
            return np.zeros((0, self.encoder().dim), dtype=np.float32)
        known = self._remembered(texts)
        if len(known) < len(set(texts)):
            with self._encode_lock:
                known |= self._encoded(texts, self._remembered(texts))
        return np.stack([known[t] for t in texts])

    def _remembered(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self._embeddings_lock:
            known = {t: self._embeddings[t] for t in texts if t in self._embeddings}
            for text in known:
                self._embeddings.move_to_end(text)
        return known

    def _encoded(self, texts: Sequence[str], known: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`known` and the vectors of the other texts, encoded now and remembered (under the
        encode lock)."""
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if not missing:
            return known
        fresh = dict(zip(missing, self.encoder().encode(missing), strict=True))
        with self._embeddings_lock:
            self._embeddings.update(fresh)
            while len(self._embeddings) > EMBEDDINGS_KEPT:
                self._embeddings.popitem(last=False)
        return known | fresh

    def _embed_ahead_chunk(self, texts: Sequence[str]) -> bool:
        """Encode and remember `texts` on the batch thread, unless a page is encoding now
        (False): the batch thread must never wait for a page."""
        if not self._encode_lock.acquire(blocking=False):
            return False
        try:
            self._encoded(texts, self._remembered(texts))
        finally:
            self._encode_lock.release()
        return True

    def embed_ahead(
        self, texts: Callable[[], Sequence[str]], *, chunk: int = EMBED_AHEAD_CHUNK
    ) -> threading.Thread:
        """Remember the base encoder's vectors of `texts()` before a page asks for them.

        After a restart, the first visit to "Candidate new intents" would otherwise encode a few
        thousand messages while the admin waits (10 s to 30 s on a CPU). This runs once the
        models are loaded, `chunk` texts at a time on the batch thread, each chunk queued behind
        the batches already waiting: a customer's message waits for one chunk at most. While a
        page encodes (it takes what is left), the pass waits off the batch thread.
        """

        def run() -> None:
            if (warm_up_pass := self._warm_up_pass) is not None:
                futures_wait([warm_up_pass])
            started = time.perf_counter()
            try:
                wanted = list(dict.fromkeys(texts()))
                if wanted:
                    self.encoder()  # loaded here, not on the batch thread
                for start in range(0, len(wanted), chunk):
                    some = wanted[start : start + chunk]
                    while not self.batcher.run_on_worker(self._embed_ahead_chunk, some).result():
                        if self._closed.wait(0.2):
                            return
                    if self._closed.is_set():
                        return
            except Exception as error:
                # "shutdown": the process is exiting and its batch thread takes no more work.
                if not (isinstance(error, RuntimeError) and "shutdown" in str(error)):
                    logger.exception("Encoding the review texts ahead failed")
                return
            if wanted:
                logger.info(
                    "Encoded %d review texts ahead in %.1f s",
                    len(wanted),
                    time.perf_counter() - started,
                )

        return self._in_background(run, "embed-ahead")

    def _in_background(
        self, target: Callable[..., None], name: str, *args: object
    ) -> threading.Thread:
        """Start a thread that `close` waits for: one stopped by the interpreter's exit in the
        middle of a forward pass aborts the process ("terminate called without an active
        exception")."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._background_lock:  # started from the batch thread and from others
            self._background = [t for t in self._background if t.is_alive()] + [thread]
        thread.start()
        return thread

    def index(self) -> KnowledgeIndex | None:
        """The live answer index, reloaded when a new version has been published."""
        with self._lock:
            # Read under the lock: a thread that read an older pointer must not reinstall it.
            live = self.indexes.live()
            if live is None:
                self._index = None
            elif self._index is None or self._index.version != live:
                self._index = KnowledgeIndex.load(self.indexes.path(live))
                logger.info("Serving answer index %s", live)
            return self._index

    def classifier(self) -> tuple[IntentClassifier | None, str]:
        """The live intent model and its version name.

        A newly promoted version loads in the background while the current one keeps
        answering, then takes over at the next batch: no message waits for a model to load.
        Only the first model (or after the live pointer is cleared) loads in line.
        """
        with self._lock:
            live = self.models.live()  # under the lock, as in index()
            # (live may be None: then no version is loading, and the model must go.)
            if live == self._classifier_version or (
                live is not None and live in (self._loading, self._unloadable)
            ):
                return self._classifier, self._classifier_version or ""
            if live is None or self._classifier is None:
                self._classifier = self._load_classifier(live) if live else None
                self._classifier_version = live
                if live and self._classifier is None:
                    self._unloadable = live
            elif not self._closed.is_set():  # a closed runtime loads nothing new
                self._loading = live
                self._in_background(self._swap_classifier, "model-swap", live)
            return self._classifier, self._classifier_version or ""

    def _swap_classifier(self, version: str) -> None:
        classifier = self._load_classifier(version)
        index = self.index()
        if classifier is not None and index is not None and not self._closed.is_set():
            # Embedded here, in the background, so that no batch waits for it.
            self.model_space_index(index, classifier, version)
        with self._lock:
            if self._loading == version:  # not a later promotion's load, still running
                self._loading = None
            if classifier is None:
                self._unloadable = version  # keep serving the model we have
            elif self.models.live() == version:
                self._classifier, self._classifier_version = classifier, version
            # else: no longer live (rolled back, or another promoted meanwhile): dropped.

    def watch(self, every_s: float) -> None:
        """Check the live pointers every `every_s` seconds, so an idle process swaps too."""
        # Not self._lock: a model loading under it must never stall the event loop here.
        with self._watch_lock:
            if self._watching:
                return
            self._watching = True

        def loop() -> None:
            while not self._closed.wait(every_s):
                try:
                    self.index()
                    self.classifier()
                except Exception:
                    logger.exception("Checking the live model and index failed")

        self.watcher = threading.Thread(target=loop, name="live-watch", daemon=True)
        self.watcher.start()

    def close(self, timeout_s: float = 60) -> None:
        """Stop watching the live pointers: a runtime that is no longer served (a test replaced
        it, the process exits) must not go on loading every new model in the background. Waits
        up to `timeout_s` for a model load or a pass ahead that is under way."""
        self._closed.set()
        deadline = time.monotonic() + timeout_s
        with self._background_lock:
            background = list(self._background)
        for thread in background:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _load_classifier(self, version: str) -> IntentClassifier | None:
        """Load a model version; one that cannot load leaves the agent on nearest examples."""
        from training.inference import IntentClassifier

        configure_torch()
        try:
            with self._load_lock:  # transformers' lazy imports are not safe from two threads
                classifier = IntentClassifier.from_dir(self.models.path(version))
        except Exception:
            logger.exception(
                "Cannot load intent model %s; answering from nearest examples", version
            )
            return None
        logger.info("Serving intent model %s", version)
        trim_free_memory()  # loading and tracing leave large freed blocks behind
        return classifier

    def model_space_index(
        self, index: KnowledgeIndex, classifier: IntentClassifier, model_version: str
    ) -> KnowledgeIndex:
        """`index` with its texts embedded by `classifier` (same entries, ids and version)."""
        key = (index.version, model_version)
        with self._lock:
            cached = self._model_space.get(key)
            # An earlier index embedded by the same model: only changed texts are embedded again.
            same_model = [
                built for (_, m), built in self._model_space.items() if m == model_version
            ]
        if cached is not None:
            return cached
        built = KnowledgeIndex.build(
            examples=list(index.examples.entries.values()),
            templates=list(index.templates.entries.values()),
            encode=classifier.embed,
            encoder_name=f"intent-model:{model_version}",
            dim=classifier.dim,
            reuse=same_model[-1] if same_model else None,
            extra_info={"version": index.version, "base_encoder": index.info.get("encoder")},
            approximate_above=int(index.info.get("approximate_above", APPROXIMATE_ABOVE)),
        )
        with self._lock:
            self._model_space.pop(key, None)
            self._model_space[key] = built
            while len(self._model_space) > MODEL_SPACE_KEPT:
                del self._model_space[next(iter(self._model_space))]  # the oldest
        if not same_model:
            # A new model embedded the whole index (an edit re-embeds a few texts): that leaves
            # large freed blocks behind. Not after every edit: this runs on the batch thread.
            trim_free_memory()
        return built

    def analyse_batch(self, texts: Sequence[str]) -> list[Analysis]:
        """Classify and embed a batch of messages in one forward pass, and search examples."""
        texts = list(texts)
        started = time.perf_counter()
        index = self.index()
        classifier, model_version = self.classifier()
        if classifier is not None and index is not None:
            index = self.model_space_index(index, classifier, model_version)
        loaded = time.perf_counter()
        stages: dict[str, float] = {}
        if classifier is not None:
            predictions, vectors = classifier.analyse(texts)
            stages["classify_ms"] = round((time.perf_counter() - loaded) * 1000, 2)
        else:
            predictions = [None] * len(texts)
            vectors = self.encoder().encode(texts)
            stages["embed_ms"] = round((time.perf_counter() - loaded) * 1000, 2)
        encoded = time.perf_counter()
        hits = (
            index.search_examples(vectors, EXAMPLE_NEIGHBOURS)
            if index is not None
            else [[] for _ in texts]
        )
        stages["search_ms"] = round((time.perf_counter() - encoded) * 1000, 2)
        policy = classifier.policy if classifier else ANSWER_ALL
        if loaded - started > 0.01:
            stages["load_ms"] = round((loaded - started) * 1000, 2)
        return [
            Analysis(vector, hit, index, prediction, model_version, policy, stages)
            for vector, hit, prediction in zip(vectors, hits, predictions, strict=True)
        ]

    async def analyse(self, text: str) -> Batched[Analysis]:
        return await self.batcher.submit(text)

    def warm_up(self) -> None:
        """Load the models in the background, ahead of the first message, and keep watching.

        Only the first call does anything: every new connection calls it, and a warm-up pass
        each would queue a hundred forward passes ahead of the first messages when a hundred
        customers arrive together.

        torch and transformers are imported here, in the caller's thread, first: their first
        import is not safe from two threads at once (transformers' lazy module can end up
        half-initialised, and every later `from transformers import AutoModel` fails).
        """
        with self._watch_lock:
            if self._warmed:
                return
            self._warmed = True
        import torch  # noqa: F401
        from transformers import AutoModel, AutoTokenizer  # noqa: F401

        self._warm_up_pass = self.batcher.run_on_worker(self.analyse_batch, ["hello"])
        self.watch(settings.CHATBOT_LIVE_CHECK_SECONDS)

    @property
    def ready(self) -> bool:
        """Whether the warm-up pass has run: the live model and index are loaded, the index is
        embedded in the model's space, and a customer's message waits for none of it."""
        return self.readiness()[0] == "ready"

    def readiness(self) -> tuple[str, str]:
        """("ready" | "warming_up" | "failed" | "model_unloadable", why): what `/readyz` says.

        A warm-up pass that failed (no index yet, a base model that cannot load) is queued
        again at the next ask, so a process recovers once what it lacked is there. A live
        model version this process cannot load leaves it answering from nearest examples:
        serving, but not ready, so that the operator's health checks see it.
        """
        warm_up_pass = self._warm_up_pass
        if warm_up_pass is None or not warm_up_pass.done():
            return "warming_up", ""
        if (error := warm_up_pass.exception()) is not None:
            self._warm_up_pass = self.batcher.run_on_worker(self.analyse_batch, ["hello"])
            return "failed", f"{type(error).__name__}: {error}"
        live = self.models.live()
        with self._lock:
            unloadable = live is not None and live == self._unloadable
        if unloadable:
            return "model_unloadable", f"The live model {live} cannot load; see the log."
        return "ready", ""

    def serving(self) -> dict[str, str]:
        """The intent model version this process answers with and the precision it chose for
        it on this CPU (empty while none is loaded): what `/readyz` reports."""
        with self._lock:
            classifier, version = self._classifier, self._classifier_version
        if classifier is None or not version:
            return {}
        return {"model_version": version, "precision": classifier.precision}


@cache
def configure_torch() -> None:
    """Intra-op threads for this process's forward passes (CHATBOT_TORCH_THREADS; by default
    every core, right for one process per machine; several processes should share them)."""
    import torch

    torch.set_num_threads(settings.CHATBOT_TORCH_THREADS)
    logger.info("torch uses %d threads", torch.get_num_threads())
    return_large_blocks_to_the_os()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _glibc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_free_memory() -> None:
    """Free what loading a model left behind, now: the weights it replaced (the fp32 tensors
    a bf16 model was made from, and the file mapped under them, go with the next cyclic garbage
    collection, whenever that comes) and the heap's free pages (glibc only)."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def return_large_blocks_to_the_os(threshold: int = 2 * 1024 * 1024) -> None:
    """Give blocks above `threshold` (a batch's activations) back to the OS when freed.

    glibc raises its mmap threshold to the size of each large block freed, after which such
    blocks come from the heap and stay resident: a serving process grew by about 35 MB that
    way. A fixed threshold stops the growth. Not lower than 2 MB: at 256 KB every int8
    activation buffer of an 8 x 32 batch was mapped and faulted in afresh on each pass (49 ms
    against 27 ms at 2 MB on a Zen 4), so int8 timed no faster than bf16 and was not served.
    No-op where the C library is not glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


@cache
def get_runtime() -> Runtime:
    runtime = Runtime(
        base_model=settings.CHATBOT_BASE_MODEL,
        data_dir=settings.CHATBOT_DATA_DIR,
        max_batch=settings.CHATBOT_BATCH_MAX_SIZE,
        max_wait_ms=settings.CHATBOT_BATCH_WAIT_MS,
        encoder_int8=settings.CHATBOT_ENCODER_INT8,
    )
    atexit.register(runtime.close)  # a server stopping while it swaps models exits cleanly
    return runtime
