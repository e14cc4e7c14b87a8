"""Micro-batching: texts of concurrent requests wait in a bounded asyncio queue and are scored together."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from tasks.core.errors import TunegateError
from tasks.serving.scoring import ServedModel, TextScore

log = logging.getLogger(__name__)

# Weight of the newest batch in the running seconds-per-text estimate that Retry-After is computed from.
RATE_SMOOTHING = 0.3
MIN_RETRY_AFTER_S = 1.0  # Retry-After is whole seconds; 0 would invite an immediate retry storm


class QueueFull(TunegateError):
    """More texts are waiting than serve.max_queue_texts allows, or they would wait longer than
    serve.max_queue_wait_ms: refuse at once (429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherStopped(TunegateError):
    """score() was called on a batcher that is stopping or has not been started (503: the service is going down)."""


class BatchObserver(Protocol):
    """What the batcher reports (tasks.serving.metrics implements it)."""

    def on_batch(self, version: str, texts: int, seconds: float) -> None: ...
    def on_queue_depth(self, texts: int) -> None: ...


@dataclass(eq=False)  # identity equality: deque.remove must find this very request
class _Pending:
    """One request's texts in the queue: handed to the model in order, `taken` of them so far."""
    model: ServedModel
    texts: list[str]
    future: asyncio.Future
    enqueued: float  # loop time
    taken: int = 0
    scored: int = 0
    results: list[TextScore | None] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self.texts) - self.taken


@dataclass
class _Batch:
    """One model call: (request, first text, text count) slices of requests of one model."""
    model: ServedModel
    slices: list[tuple[_Pending, int, int]]

    @property
    def texts(self) -> list[str]:
        return [t for item, start, n in self.slices for t in item.texts[start:start + n]]


def retry_after(queued_texts: int, seconds_per_text: float | None) -> float:
    """Whole seconds until the queue has likely drained (at least MIN_RETRY_AFTER_S)."""
    if seconds_per_text is None:
        return MIN_RETRY_AFTER_S
    return max(MIN_RETRY_AFTER_S, float(math.ceil(queued_texts * seconds_per_text)))


class MicroBatcher:
    """Collects texts for up to max_wait_ms (or until max_batch_size texts of one version are waiting) and
    scores them in one worker thread, one batch at a time. Texts of a request are scored by the model the
    request was admitted with; a batch never mixes versions."""

    def __init__(self, *, max_batch_size: int, max_wait_ms: float, max_queue_texts: int,
                 max_queue_wait_ms: float | None = None, observer: BatchObserver | None = None):
        """max_queue_wait_ms: refuse a request whose texts would likely wait longer than this behind the queue
        (estimated from recent model time per text); None = bound by max_queue_texts alone."""
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self.max_queue_wait_s = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000
        self.observer = observer
        self._pending: collections.deque[_Pending] = collections.deque()
        self._queued = 0  # texts in _pending not yet handed to the model
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._seconds_per_text: float | None = None  # wall time per text while busy (see _consume)
        self._in_model = 0  # texts of the batch being scored
        self._last_done: float | None = None  # perf_counter when the last batch was answered, if the queue was
                                              # not empty then (the batcher stayed busy)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("MicroBatcher.start() called twice")
        self._stopping = False
        # One thread: batches run one after another; onnxruntime's intra-op threads do the parallel work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunegate-score")
        self._task = asyncio.create_task(self._consume(), name="tunegate-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    @property
    def queued_texts(self) -> int:
        return self._queued

    async def score(self, model: ServedModel, texts: list[str]) -> list[TextScore]:
        """Scores in input order. QueueFull at once when the queue cannot take len(texts) more. Cancelling the
        awaiting task (client disconnected, request timeout) drops its texts not yet handed to the model."""
        if self._task is None or self._stopping:
            raise BatcherStopped("the scoring queue is not running (the service is starting or shutting down)")
        if not texts:
            return []
        if (refused := self.refusal(len(texts))) is not None:
            raise refused
        loop = asyncio.get_running_loop()
        item = _Pending(model, list(texts), loop.create_future(), loop.time(), results=[None] * len(texts))
        self._pending.append(item)
        self._queued += len(texts)
        self._report_depth()
        self._wake.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._drop(item)
            raise

    def expected_wait_s(self, texts: int) -> float:
        """Seconds until `texts` more would be scored behind the queue and the batch in the model, from recent
        time per text (0 before the first batch)."""
        ahead = self._queued + self._in_model + texts
        return 0.0 if self._seconds_per_text is None else ahead * self._seconds_per_text

    def refusal(self, texts: int) -> QueueFull | None:
        """Why a request of `texts` texts would be refused now (count or expected wait over its bound), or None.
        The service also asks before reading a request's body: shedding load early costs the least."""
        if self._queued + texts > self.max_queue_texts:
            return QueueFull(f"{self._queued} texts are waiting to be scored and this request brings {texts} more: "
                             f"over serve.max_queue_texts ({self.max_queue_texts}); retry later",
                             retry_after(self._queued + texts, self._seconds_per_text))
        expected_wait = self.expected_wait_s(texts)
        if self.max_queue_wait_s is not None and expected_wait > self.max_queue_wait_s:
            # Under overload a bounded count alone lets every served request wait the whole queue out: refusing
            # what would wait too long keeps served requests fast and tells clients to back off.
            return QueueFull(f"{self._queued + self._in_model} texts are ahead in the queue: {texts} more would "
                             f"wait about {expected_wait * 1000:.0f} ms, over serve.max_queue_wait_ms "
                             f"({self.max_queue_wait_s * 1000:g}); retry later",
                             retry_after(self._queued + texts, self._seconds_per_text))
        return None

    def _report_depth(self) -> None:
        self._observe("on_queue_depth", self._queued)

    def _observe(self, event: str, *args: object) -> None:
        """Tell the observer; a failing observer (metrics) is logged, never lets requests hang or fail."""
        if self.observer is None:
            return
        try:
            getattr(self.observer, event)(*args)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("batch observer's %s failed", event)

    def _drop(self, item: _Pending) -> None:
        """Take a request's texts not yet handed to the model out of the queue."""
        try:
            self._pending.remove(item)
        except ValueError:
            return  # all its texts were taken already
        self._queued -= item.waiting
        item.taken = len(item.texts)
        self._report_depth()

    def _prune(self) -> None:
        """Drop requests whose awaiting task is gone (cancelled) or already failed, so no model time goes to them."""
        for item in [i for i in self._pending if i.future.done()]:
            self._drop(item)

    def _waiting_for(self, model: ServedModel) -> int:
        return sum(i.waiting for i in self._pending if i.model is model)

    async def _gather(self) -> _Batch | None:
        """Wait for a first request, then up to max_wait_ms after its arrival for more of its model; None once
        stopping with nothing queued."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            self._prune()
            if self._pending:
                head = self._pending[0]
                if (self._stopping or self._waiting_for(head.model) >= self.max_batch_size
                        or loop.time() >= head.enqueued + self.max_wait_s):
                    return self._take(head.model)
                timeout = head.enqueued + self.max_wait_s - loop.time()
            elif self._stopping:
                return None
            else:
                timeout = None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass  # the head's wait is over: loop round and take what is there

    def _take(self, model: ServedModel) -> _Batch:
        """Up to max_batch_size texts of `model`, oldest request first. A request is split over batches only
        when it has more texts than max_batch_size; one that does not fit whole waits for the next batch."""
        room = self.max_batch_size
        slices: list[tuple[_Pending, int, int]] = []
        for item in list(self._pending):
            if room == 0:
                break
            if item.model is not model:
                continue  # another version's request waits for a batch of its own
            if item.waiting > room and len(item.texts) <= self.max_batch_size:
                break  # do not split a request that fits in a batch; keep first-come order for the rest
            n = min(item.waiting, room)
            slices.append((item, item.taken, n))
            item.taken += n
            room -= n
            self._queued -= n
            if item.waiting == 0:
                self._pending.remove(item)
        self._report_depth()
        return _Batch(model, slices)

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self._gather()) is not None:
            texts = batch.texts
            started = time.perf_counter()
            self._in_model = len(texts)
            try:
                scores = await loop.run_in_executor(self._executor, batch.model.score, texts, self.max_batch_size)
                if len(scores) != len(texts):
                    raise RuntimeError(f"model returned {len(scores)} scores for {len(texts)} texts")
            except Exception as exc:  # noqa: BLE001 - any model failure fails this batch's requests, not the service
                log.warning("model call on %d texts failed: %s: %s", len(texts), type(exc).__name__, exc)
                self._fail(batch, exc)
                continue
            finally:
                self._in_model = 0
            done = time.perf_counter()
            seconds = done - started
            # While busy, the time from one answer to the next is what a queued text really waits per text ahead
            # of it: the model call plus the event loop's work on the same cores (parsing, answering, refusing).
            busy_cycle = done - self._last_done if self._last_done is not None else seconds
            self._learn_rate(max(seconds, busy_cycle) / len(texts))
            self._last_done = done if self._pending else None
            self._observe("on_batch", batch.model.info.version, len(texts), seconds)
            self._resolve(batch, scores)

    def _learn_rate(self, seconds_per_text: float) -> None:
        old = self._seconds_per_text
        self._seconds_per_text = seconds_per_text if old is None else (
            RATE_SMOOTHING * seconds_per_text + (1 - RATE_SMOOTHING) * old)

    def _resolve(self, batch: _Batch, scores: list[TextScore]) -> None:
        at = 0
        for item, start, n in batch.slices:
            item.results[start:start + n] = scores[at:at + n]
            at += n
            item.scored += n
            if item.scored == len(item.texts) and not item.future.done():
                item.future.set_result(item.results)

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        for item, _, _ in batch.slices:
            if not item.future.done():
                item.future.set_exception(exc)
            self._drop(item)  # the rest of a split request is not worth a model call
