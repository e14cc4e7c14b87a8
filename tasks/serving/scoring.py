"""One loaded model version as the service scores with it, and the holder that swaps versions without a failed request."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import TunegateError
from tasks.core.io import file_sha256
from tasks.core.metrics import softmax
from tasks.runtime.files import RELEASE_FILE, SERVING_FILE
from tasks.runtime.long_text import tokens_read
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.runtime.settings import ServeSettings
from tasks.serving.source import version_of_sha256

log = logging.getLogger(__name__)

# How often swap() looks whether the old version is still held (seconds): short next to a model call.
DRAIN_POLL_S = 0.01
WARM_UP_TEXT = "warm-up"


class ServedFolderError(TunegateError):
    """A folder that cannot be served: no serving.json, or a model file it names that is missing."""


class ModelClosed(TunegateError):
    """A version was asked to score after the holder closed it (it was held past the drain timeout)."""


@dataclass(frozen=True)
class ModelInfo:
    """What /v2/models/{name} reports about a loaded version."""
    name: str  # serve.model_name
    version: str  # the registry version (v0.2.0), else "sha256:" + the model file's first 12 hex digits
    labels: list[str]
    max_length: int  # tokens the model reads per text (serving.json)
    long_text: dict[str, Any]  # serving.json's rule for texts longer than max_length (tasks.runtime.long_text)
    model_sha256: str  # of the model file (serving.json model_file)
    precision: str | None  # release.json's precision (e.g. dynamic_per_tensor) when the folder has one
    folder: str


@dataclass(frozen=True)
class TextScore:
    """One text's answer, plus what the prediction log records about it."""
    label: str
    probabilities: list[float]  # in ModelInfo.labels order; sums to 1
    tokens: int  # tokens of the whole text (special tokens included), untruncated
    read_tokens: int  # distinct tokens the model read, special tokens included (== tokens when none was skipped)
    unknown_tokens: int  # tokens that are the tokenizer's unknown token


@dataclass(frozen=True)
class ReadText:
    """One text as the model will read it, worked out before it is queued: its content token ids (untruncated, no
    special tokens) and what reading it costs."""
    content: list[int]
    cost: int  # tokens of the windows the long_text rule reads, special tokens included (model work, not padding)


# What one extra model call costs, in padded tokens of work (onnxruntime CPU, the default MiniLM, 1-2 threads:
# ~0.4 ms per call against ~0.06-0.08 ms per token). Splitting a batch pays when it saves more padding than this.
CALL_OVERHEAD_TOKENS = 8


def length_groups(widths: list[int], max_batch_size: int, windows: list[int] | None = None) -> list[list[int]]:
    """Text indices sorted by width (a text's longest window, in tokens), cut into groups of at most max_batch_size
    texts that minimise padded tokens plus CALL_OVERHEAD_TOKENS per group: a group runs as one call holding all
    its texts' windows (`windows[i]` of text i; 1 each when None), padded only to its own widest."""
    counts = windows or [1] * len(widths)
    order = sorted(range(len(widths)), key=widths.__getitem__)
    # before[j]: windows of the shortest j texts, so a group i..j holds before[j] - before[i] windows.
    before = np.concatenate([[0], np.cumsum([counts[i] for i in order])]).tolist()
    # best[j]: least cost of the shortest j texts; cut[j]: where the last group of that cost starts.
    best, cut = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        width = widths[order[j - 1]]
        best[j], cut[j] = min((best[i] + CALL_OVERHEAD_TOKENS + (before[j] - before[i]) * width, i)
                              for i in range(max(0, j - max_batch_size), j))
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


class ServedModel:
    """An OnnxClassifier (tasks.runtime.onnx_model) with its ModelInfo; `score` is called from one worker thread."""

    info: ModelInfo

    def __init__(self, classifier: OnnxClassifier, info: ModelInfo):
        self._classifier: OnnxClassifier | None = classifier
        self.info = info
        self._unk_id = classifier.unknown_token_id()

    def score(self, texts: list[str], max_batch_size: int) -> list[TextScore]:
        """Score texts in input order, read by the folder's long_text rule (as `tunegate predict` reads them):
        tokenised once, grouped by window width, each group of at most max_batch_size texts one model call
        holding all their windows, padded to the group's widest."""
        return self.score_read(self.read(texts), max_batch_size)

    def read(self, texts: list[str]) -> list[ReadText]:
        """Tokenise texts and count the tokens of the windows the long_text rule will read of each (what the
        service queues; ~1 s of CPU for 64 texts of 20,000 characters, so the service calls it off its event loop)."""
        classifier = self._live()
        contents = classifier.content_ids(texts)
        costs = classifier.read_ids(contents).window_tokens() if texts else []
        return [ReadText(content, cost) for content, cost in zip(contents, costs)]

    def score_read(self, items: list[ReadText], max_batch_size: int) -> list[TextScore]:
        """`score` of texts already read (by `read` of this version)."""
        classifier = self._live()  # a run in progress keeps its session even if close() comes meanwhile
        if not items:
            return []
        contents = [item.content for item in items]
        reading = classifier.read_ids(contents)
        groups = length_groups(reading.widths(), max_batch_size, reading.window_counts())
        probs = softmax(classifier.reading_logits(reading, groups))
        rule, wrapper, unk = classifier.long_text, classifier.wrapper, self._unk_id
        labels = self.info.labels
        return [TextScore(label=labels[int(row.argmax())], probabilities=[float(p) for p in row],
                          tokens=len(content) + wrapper.specials,
                          read_tokens=tokens_read(len(content), rule, self.info.max_length, wrapper) + wrapper.specials,
                          unknown_tokens=0 if unk is None else content.count(unk))
                for content, row in zip(contents, probs)]

    def _live(self) -> OnnxClassifier:
        classifier = self._classifier
        if classifier is None:
            raise ModelClosed(f"model version {self.info.version} was closed (held past the swap's drain timeout)")
        return classifier

    def close(self) -> None:
        """Release the onnxruntime session (after the holder has drained it)."""
        self._classifier = None  # the session's memory goes with the last reference


def cores() -> int:
    """CPUs this process may run on (the affinity mask a container or taskset gives, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_plan(settings: ServeSettings, available: int) -> tuple[int, str | None]:
    """onnxruntime threads per worker, and a warning when workers x threads oversubscribe the cores."""
    threads = settings.threads or max(1, available // settings.workers)
    total = threads * settings.workers
    if total > available:
        return threads, (f"{settings.workers} workers x {threads} threads = {total} onnxruntime threads on "
                         f"{available} cores: they will slow each other down (lower serve.threads or "
                         "serve.workers, or leave serve.threads null)")
    return threads, None


def release_precision(folder: Path) -> str | None:
    """release.json's precision when the folder is a gate's release, else None."""
    path = folder / RELEASE_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("precision") if path.is_file() else None


def load_served(folder: Path, name: str, version: str | None, threads: int) -> ServedModel:
    """Load a served folder on `threads` onnxruntime intra-op threads and warm it with one call; `version` None
    means the folder's own (sha256:...)."""
    folder = Path(folder)
    if not (folder / SERVING_FILE).is_file():
        raise ServedFolderError(f"{folder} is not a served model folder (no {SERVING_FILE}): serve "
                                "artifacts/quantize/onnx, a gate release, or registry:prod")
    serving = json.loads((folder / SERVING_FILE).read_text(encoding="utf-8"))
    model_path = folder / serving["model_file"]
    if not model_path.is_file():
        raise ServedFolderError(f"{folder / SERVING_FILE} names model file {serving['model_file']!r}, "
                                f"which is not in {folder}")
    classifier = OnnxClassifier(folder, threads=threads)
    sha = file_sha256(model_path)
    info = ModelInfo(name=name, version=version or version_of_sha256(sha), labels=list(classifier.labels),
                     max_length=int(classifier.serving["max_length"]), long_text=classifier.long_text,
                     model_sha256=sha, precision=release_precision(folder), folder=str(folder))
    served = ServedModel(classifier, info)
    served.score([WARM_UP_TEXT], 1)  # the first run allocates onnxruntime's buffers: not on a user's request
    return served


class ModelHolder:
    """The version new requests are admitted to. A request holds its version from admission to answer, so
    every text of it is scored by one version; swap() puts a warmed new version in place atomically and
    closes the old one once nothing holds it."""

    def __init__(self, first: ServedModel):
        # A threading lock, not an asyncio one: acquire() may be entered from the event loop or a worker thread.
        self._lock = threading.Lock()
        self._current = first
        self._held: dict[int, int] = {}  # id(model) -> requests holding it now
        self._swapping = asyncio.Lock()  # one swap at a time, in call order

    @property
    def current(self) -> ServedModel:
        return self._current

    def in_flight(self, model: ServedModel) -> int:
        """Requests holding `model` now."""
        with self._lock:
            return self._held.get(id(model), 0)

    @contextmanager
    def acquire(self) -> Iterator[ServedModel]:
        """The current version, held (counted in flight) until the block ends."""
        with self._lock:
            model = self._current
            self._held[id(model)] = self._held.get(id(model), 0) + 1
        try:
            yield model
        finally:
            with self._lock:
                left = self._held[id(model)] - 1
                if left:
                    self._held[id(model)] = left
                else:
                    del self._held[id(model)]

    async def swap(self, new: ServedModel, drain_timeout_s: float) -> ServedModel:
        """Admit new requests to `new` from now on; wait until the old version is no longer held (at most
        drain_timeout_s), close it and return it."""
        async with self._swapping:
            with self._lock:
                if new is self._current:
                    raise ValueError("swap() was given the version already being served")
                old, self._current = self._current, new
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain_timeout_s
            while self.in_flight(old) and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
            still = self.in_flight(old)
            if still:
                log.warning("model version %s still held by %d request(s) after %.1f s; closing it anyway "
                            "(they fail with ModelClosed if not yet scored)", old.info.version, still, drain_timeout_s)
            old.close()
            return old
