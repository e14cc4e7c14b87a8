"""Shadow evaluation by mirroring: a sampled share of the texts prod answered is also scored by a candidate
(serve.shadow), off the response path, and both answers go to the prediction log as one shadow record.

What keeps the shadow from costing prod anything:
- a text is offered only after prod's answer has been sent, and offering never waits: a full shadow queue
  (serve.shadow_queue_texts) drops the text and counts it;
- the shadow scores on its own thread with its own 1-thread onnxruntime session (no pool of its own to spin), one text
  per call, and only once prod's batcher has been idle (nothing queued, no batch in the model) for IDLE_SETTLE_S:
  under load it waits, its queue fills, and mirrored texts are dropped (counted), not prod's answers slowed;
- nothing the shadow does raises into the service: a shadow that fails to load or to score is logged once per kind of
  failure, counted in /metrics, and the service serves on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.runtime.prediction_log import SHADOW_KIND
from tasks.serving import scoring
from tasks.serving.predlog import PredictionLog, text_sha256
from tasks.serving.scoring import ServedModel, TextScore
from tasks.serving.source import ModelSource

log = logging.getLogger("tasks.serving")

# The shadow's onnxruntime threads. One: it runs beside prod's threads (which already take every core they were
# given), and a 1-thread session has no intra-op pool that could keep spinning after a run.
SHADOW_THREADS = 1
# How often a waiting shadow looks whether prod's batcher went idle (seconds): well under one prod batch.
IDLE_POLL_S = 0.002
# The shadow starts a text only when prod's batcher has had no work for this long (seconds). Under steady traffic the
# gaps between prod's batches are a few ms, and a shadow call (12 ms of the FP32 teacher for a sentence) started in
# one would share the cores with the next batch: waiting for a longer lull leaves the shadow the quiet spells only.
IDLE_SETTLE_S = 0.02
SAMPLE_DIGITS = 16  # hex digits of the text's SHA-256 read as its place in [0, 1): 64 bits
_STOP = object()


def sampled(sha256_hex: str, share: float) -> bool:
    """Whether a text is mirrored: its SHA-256 (the prediction log's text_sha256), read as a number in [0, 1), is
    below `share`. By hash rather than by a random draw: every worker and every restart mirrors the same texts
    without shared state, a test or a replay of the log knows which texts were mirrored, and a text repeated in
    traffic is mirrored every time or never (the sample is of distinct texts, weighted by how often they come)."""
    return int(sha256_hex[:SAMPLE_DIGITS], 16) < share * 16 ** SAMPLE_DIGITS


def answer(version: str, score: TextScore, labels: Sequence[str]) -> dict[str, Any]:
    """One model's answer to a text, as a shadow record holds it."""
    return {"version": version, "label": score.label, "confidence": float(max(score.probabilities)),
            "probabilities": {name: float(p) for name, p in zip(labels, score.probabilities)}}


def shadow_record(at: float, sha: str, chars: int, prod: dict[str, Any], shadow: dict[str, Any],
                  scored_at: float) -> dict[str, Any]:
    """The prediction log's shadow record: no top-level label or model_version, so nothing reading prod's fields
    could take it for prod traffic; `time` is prod's answer's, so it sorts beside prod's record of the same text."""
    return {"time": at, "kind": SHADOW_KIND, "text_sha256": sha, "chars": chars, "prod": prod, "shadow": shadow,
            "agree": prod["label"] == shadow["label"], "delay_s": round(scored_at - at, 4)}


class ShadowObserver(Protocol):
    """What the mirror reports (tasks.serving.metrics implements it)."""

    def on_shadow_mirrored(self, texts: int) -> None: ...
    def on_shadow_scored(self, agree: bool) -> None: ...
    def on_shadow_dropped(self, reason: str, texts: int) -> None: ...
    def on_shadow_failed(self, texts: int) -> None: ...
    def on_shadow_load_failed(self) -> None: ...
    def on_shadow_queue(self, texts: int) -> None: ...
    def on_shadow_version(self, version: str) -> None: ...


@dataclass(frozen=True)
class Mirrored:
    """A text prod answered, waiting for the shadow."""
    at: float  # when prod's answer was logged (UNIX seconds)
    text: str
    sha: str
    prod: dict[str, Any]  # answer(...) of prod


class Mirror:
    """The shadow of one worker: `offer` (event loop, after prod's answer) queues the sampled texts; a thread loads
    the shadow from `source`, follows it every reload_seconds (0: never), and scores the queue while prod is idle."""

    def __init__(self, source: Callable[[], ModelSource], *, share: float, queue_texts: int, name: str,
                 reload_seconds: float, prod_idle_s: Callable[[], float], predlog: PredictionLog,
                 observer: ShadowObserver):
        self._source_factory = source
        self._source: ModelSource | None = None
        self.share, self.name, self.reload_seconds = share, name, reload_seconds
        self._prod_idle_s, self._predlog, self._observer = prod_idle_s, predlog, observer
        self._queue: queue.Queue = queue.Queue(maxsize=queue_texts)
        self._model: ServedModel | None = None
        self._unavailable = False  # the last load failed: offers are dropped (counted) until a reload succeeds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: set[tuple[str, str]] = set()  # (what failed, exception type): each logged once
        self._next_follow = 0.0

    @property
    def version(self) -> str | None:
        model = self._model
        return model.info.version if model is not None else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tunegate-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop scoring (texts still queued are dropped, counted as `stopping`) and join the thread (blocking)."""
        self._stopping.set()
        self._put_stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("shadow still scoring after %.0f s at stop; left behind (daemon thread)", timeout_s)
        self._drop_queued("stopping")
        if self._model is not None and not (self._thread and self._thread.is_alive()):
            self._model.close()

    # --- event loop side ---------------------------------------------------------------------------------------

    def offer(self, version: str, texts: list[str], scores: list[TextScore], labels: Sequence[str]) -> None:
        """Queue the sampled texts of an answered request for the shadow. Never blocks, never raises: a full queue,
        a shadow that is not loaded or a stopping service drops them, counted."""
        try:
            chosen = [(text, sha, score) for text, score in zip(texts, scores)
                      if sampled(sha := text_sha256(text), self.share)]
            if not chosen:
                return
            self._observer.on_shadow_mirrored(len(chosen))
            if self._stopping.is_set() or self._unavailable:
                self._observer.on_shadow_dropped("stopping" if self._stopping.is_set() else "unavailable",
                                                 len(chosen))
                return
            at = time.time()
            for i, (text, sha, score) in enumerate(chosen):
                try:
                    self._queue.put_nowait(Mirrored(at, text, sha, answer(version, score, labels)))
                except queue.Full:
                    self._observer.on_shadow_dropped("queue_full", len(chosen) - i)
                    break
            self._observer.on_shadow_queue(self._queue.qsize())
        except Exception as exc:  # noqa: BLE001 - the mirror must never fail a request (see the module docstring)
            self._log_once("offer", exc)
            try:
                self._observer.on_shadow_failed(len(texts))
            except Exception:  # noqa: BLE001 - the failure is logged above; metrics failing too changes nothing
                pass

    # --- shadow thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        self._follow()
        while not self._stopping.is_set():
            item = self._next_item()
            if item is _STOP:
                break
            if self.reload_seconds > 0 and time.monotonic() >= self._next_follow:
                self._follow()
            if isinstance(item, Mirrored):
                try:
                    self._score(item)
                except Exception as exc:  # noqa: BLE001 - a failing observer (metrics) must not end the thread
                    self._log_once("record", exc)

    def _next_item(self) -> object:
        """The next mirrored text, or None when it is time to follow the source (reload_seconds) with none queued."""
        timeout = None if self.reload_seconds <= 0 else max(0.0, self._next_follow - time.monotonic())
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _follow(self) -> None:
        """Load the source's version when it is not the one loaded; a failure keeps the loaded one (or none)."""
        self._next_follow = time.monotonic() + self.reload_seconds
        try:
            if self._source is None:
                self._source = self._source_factory()
            resolved = self._source.resolve()
            if resolved.version == self.version:
                return
            # scoring.load_served looked up now, as the service's start does: one place to replace it (tests).
            new = scoring.load_served(resolved.folder, self.name, resolved.version, SHADOW_THREADS)
        except Exception as exc:  # noqa: BLE001 - resolving and loading fail in many ways; none may stop prod
            self._observer.on_shadow_load_failed()
            self._unavailable = self._model is None
            self._log_once("load", exc, "still scoring with " + self.version if self.version else
                           "mirrored texts are dropped (counted as unavailable) until it loads")
            return
        old, self._model, self._unavailable = self._model, new, False
        if old is not None:
            old.close()  # only this thread scores with it: nothing to drain
        self._observer.on_shadow_version(new.info.version)
        log.info("shadow %s loaded from %s: scoring %.3g of served texts while prod is idle", new.info.version,
                 self._source.description, self.share)

    def _wait_for_idle_prod(self) -> bool:
        """Block until prod's batcher has been idle for IDLE_SETTLE_S; False when the service stops meanwhile."""
        while self._prod_idle_s() < IDLE_SETTLE_S:
            if self._stopping.wait(IDLE_POLL_S):
                return False
        return not self._stopping.is_set()

    def _score(self, item: Mirrored) -> None:
        self._observer.on_shadow_queue(self._queue.qsize())
        model = self._model
        if model is None:
            self._observer.on_shadow_dropped("unavailable", 1)
            return
        if not self._wait_for_idle_prod():
            self._observer.on_shadow_dropped("stopping", 1)
            return
        try:
            # One text per call: the shortest time prod could find the shadow on a core, and the shadow's answer
            # does not depend on batch mates (as the gate judged one text per call).
            (score,) = model.score([item.text], 1)
            record = shadow_record(item.at, item.sha, len(item.text), item.prod,
                                   answer(model.info.version, score, model.info.labels), time.time())
        except Exception as exc:  # noqa: BLE001 - a failing shadow is counted, never felt by prod
            self._observer.on_shadow_failed(1)
            self._log_once("score", exc)
            return
        self._predlog.append_record(record)
        self._observer.on_shadow_scored(record["agree"])

    def _drop_queued(self, reason: str) -> None:
        dropped = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += isinstance(item, Mirrored)
        if dropped:
            self._observer.on_shadow_dropped(reason, dropped)
        self._observer.on_shadow_queue(0)

    def _put_stop(self) -> None:
        """Wake the thread: the stop marker, making room for it in a full queue (what it displaces is dropped)."""
        while True:
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                try:
                    if isinstance(self._queue.get_nowait(), Mirrored):
                        self._observer.on_shadow_dropped("stopping", 1)
                except queue.Empty:
                    pass

    def _log_once(self, what: str, exc: Exception, then: str = "counted in /metrics") -> None:
        """A warning the first time `what` fails with this kind of exception; later ones are only counted."""
        key = (what, type(exc).__name__)
        if key in self._logged:
            return
        self._logged.add(key)
        log.warning("shadow %s failed (%s: %s); prod is not affected, %s (later failures of this kind are only "
                    "counted)", what, type(exc).__name__, exc, then)
