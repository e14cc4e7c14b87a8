"""Micro-batching: texts of concurrent requests wait in a bounded asyncio queue and are scored together.

Admission counts model work, not texts: a request's texts are read (tokenised, cut into the windows the long_text
rule reads) before they are queued, and each costs the tokens of its windows (a sentence ~20, a 20,000-character
review up to 64 windows x max_length). A request waits for the work AHEAD of it (the queued texts and what is left of
the batch in the model, priced at learned times per model call and per token: tasks.serving.batch_cost); its own
work is not waiting, so a request with nothing ahead of it is always admitted (within serve.max_texts and
serve.max_text_chars)."""

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
from tasks.serving.batch_cost import BatchCost, Rates
from tasks.serving.scoring import ReadText, ServedModel, TextScore

log = logging.getLogger(__name__)

MIN_RETRY_AFTER_S = 1.0  # Retry-After is whole seconds; 0 would invite an immediate retry storm
# Requests of at most this many characters are read on the event loop (~0.1 ms of tokenising, less than a hop to a
# thread); longer ones in a worker thread (64 texts of 20,000 characters take ~1 s), so the loop keeps answering.
INLINE_READ_CHARS = 2_000


class QueueFull(TunegateError):
    """More texts would be waiting than serve.max_queue_texts allows, or the model work ahead of the request would
    take longer than serve.max_queue_wait_ms: refuse at once (429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherStopped(TunegateError):
    """score() was called on a batcher that is stopping or has not been started (503: the service is going down)."""


class BatchObserver(Protocol):
    """What the batcher reports (tasks.serving.metrics implements it)."""

    def on_batch(self, version: str, texts: int, seconds: float) -> None: ...
    def on_queue_depth(self, texts: int, tokens: int) -> None: ...


@dataclass(eq=False)  # identity equality: deque.remove must find this very request
class _Pending:
    """One request's texts in the queue, already read: handed to the model in order, `taken` of them so far."""
    model: ServedModel
    items: list[ReadText]
    future: asyncio.Future
    enqueued: float  # loop time
    taken: int = 0
    scored: int = 0
    results: list[TextScore | None] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self.items) - self.taken

    def cost(self, start: int, n: int) -> int:
        """Model tokens of texts start .. start + n - 1."""
        return sum(item.cost for item in self.items[start:start + n])


@dataclass
class _Batch:
    """One model call: (request, first text, text count) slices of requests of one model."""
    model: ServedModel
    slices: list[tuple[_Pending, int, int]]

    @property
    def items(self) -> list[ReadText]:
        return [t for item, start, n in self.slices for t in item.items[start:start + n]]


def retry_after(wait_s: float) -> float:
    """Whole seconds until the work ahead has likely been done (at least MIN_RETRY_AFTER_S)."""
    return max(MIN_RETRY_AFTER_S, float(math.ceil(wait_s)))


class MicroBatcher:
    """Collects texts for up to max_wait_ms (or until max_batch_size texts of one version are waiting) and
    scores them in one worker thread, one batch at a time. Texts of a request are scored by the model the
    request was admitted with; a batch never mixes versions."""

    def __init__(self, *, max_batch_size: int, max_wait_ms: float, max_queue_texts: int,
                 max_queue_wait_ms: float | None = None, observer: BatchObserver | None = None):
        """max_queue_wait_ms: refuse a request when the model work ahead of it (queued texts and the rest of the
        batch in the model, priced at the learned rates) would take longer; None = max_queue_texts alone."""
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self.max_queue_wait_s = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000
        self.observer = observer
        self._pending: collections.deque[_Pending] = collections.deque()
        self._queued = 0  # texts in _pending not yet handed to the model
        self._queued_tokens = 0  # their cost: tokens of the windows the model will read
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._cost = BatchCost()  # wall time per model call and per token while busy (see _consume)
        self._in_model = 0  # texts of the batch being scored
        self._in_model_tokens = 0  # and their cost
        self._in_model_since = 0.0  # perf_counter when that batch went to the model
        self._last_work = time.monotonic()  # when texts last joined the queue or a batch last finished (idle_s)
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

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def idle_s(self) -> float:
        """Seconds since the batcher last had work (texts queued or in the model); 0 while it has. Read from other
        threads (the shadow scores only after prod has been idle a while): plain reads, at worst a moment stale."""
        if self._queued > 0 or self._in_model > 0:
            return 0.0
        return time.monotonic() - self._last_work

    @property
    def rates(self) -> Rates | None:
        """The learned model time per call and per token (None before the first batch)."""
        return self._cost.rates

    async def score(self, model: ServedModel, texts: list[str]) -> list[TextScore]:
        """Scores in input order. QueueFull at once when the queue cannot take len(texts) more or the work ahead is
        over its bound (asked before the texts are read, so a refusal costs no tokenising, and again once they are
        read, when they join the queue). Cancelling the awaiting task (client disconnected, request timeout) drops
        its texts not yet handed to the model."""
        self._check_running()
        if not texts:
            return []
        if (refused := self.refusal(len(texts))) is not None:
            raise refused
        items = await self._read(model, texts)
        self._check_running()
        if (refused := self.refusal(len(texts))) is not None:  # the queue may have grown while they were read
            raise refused
        loop = asyncio.get_running_loop()
        item = _Pending(model, items, loop.create_future(), loop.time(), results=[None] * len(texts))
        self._pending.append(item)
        self._last_work = time.monotonic()
        self._queued += len(items)
        self._queued_tokens += item.cost(0, len(items))
        self._report_depth()
        self._wake.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._drop(item)
            raise

    def _check_running(self) -> None:
        if self._task is None or self._stopping:
            raise BatcherStopped("the scoring queue is not running (the service is starting or shutting down)")

    async def _read(self, model: ServedModel, texts: list[str]) -> list[ReadText]:
        """The texts read by `model` (token ids and cost): short requests here, long ones in a worker thread."""
        if sum(len(t) for t in texts) <= INLINE_READ_CHARS:
            return model.read(texts)
        return await asyncio.to_thread(model.read, texts)

    def wait_ahead_s(self) -> float:
        """Seconds of model work ahead of a request arriving now: the queued texts (in calls of up to
        max_batch_size texts) plus what is left of the batch in the model, at the learned rates. 0 when nothing is
        ahead, whatever the estimate (an idle service admits every request), and 0 before the first batch."""
        rates = self._cost.rates
        if rates is None:
            return 0.0
        in_model_left = 0.0
        if self._in_model_tokens:
            elapsed = time.perf_counter() - self._in_model_since
            in_model_left = max(0.0, rates.seconds(1, self._in_model_tokens) - elapsed)
        calls = math.ceil(self._queued / self.max_batch_size)
        return rates.seconds(calls, self._queued_tokens) + in_model_left

    def refusal(self, texts: int) -> QueueFull | None:
        """Why a request of `texts` texts would be refused now, or None: the texts held would exceed
        max_queue_texts (with an empty queue never: serve.max_texts <= serve.max_queue_texts), or the work ahead
        of it would take longer than max_queue_wait_ms (its own work is not waiting). The service also asks
        before reading a request's body: shedding load early costs the least."""
        if self._queued + texts > self.max_queue_texts:
            return QueueFull(f"{self._queued} texts are waiting to be scored and this request brings {texts} more: "
                             f"over serve.max_queue_texts ({self.max_queue_texts}); retry later",
                             retry_after(self.wait_ahead_s()))
        wait = self.wait_ahead_s()
        if self.max_queue_wait_s is not None and wait > self.max_queue_wait_s:
            # Under overload a bounded count alone lets every served request wait the whole queue out: refusing
            # what would wait too long keeps served requests fast and tells clients to back off.
            return QueueFull(f"{self._queued} texts ({self._queued_tokens} model tokens) are queued and "
                             f"{self._in_model} are in the model ahead of this request: about {wait * 1000:.0f} ms "
                             f"of model work, over serve.max_queue_wait_ms ({self.max_queue_wait_s * 1000:g}); "
                             "retry later", retry_after(wait))
        return None

    def _report_depth(self) -> None:
        self._observe("on_queue_depth", self._queued, self._queued_tokens)

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
        self._queued_tokens -= item.cost(item.taken, item.waiting)
        item.taken = len(item.items)
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
            if item.waiting > room and len(item.items) <= self.max_batch_size:
                break  # do not split a request that fits in a batch; keep first-come order for the rest
            n = min(item.waiting, room)
            slices.append((item, item.taken, n))
            self._queued_tokens -= item.cost(item.taken, n)
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
            items = batch.items
            tokens = sum(item.cost for item in items)
            started = time.perf_counter()
            self._in_model, self._in_model_tokens, self._in_model_since = len(items), tokens, started
            try:
                scores = await loop.run_in_executor(self._executor, batch.model.score_read, items,
                                                    self.max_batch_size)
                if len(scores) != len(items):
                    raise RuntimeError(f"model returned {len(scores)} scores for {len(items)} texts")
            except Exception as exc:  # noqa: BLE001 - any model failure fails this batch's requests, not the service
                log.warning("model call on %d texts failed: %s: %s", len(items), type(exc).__name__, exc)
                self._fail(batch, exc)
                continue
            finally:
                self._in_model = self._in_model_tokens = 0
                self._last_work = time.monotonic()
            done = time.perf_counter()
            seconds = done - started
            # While busy, the time from one answer to the next is what a call of queued work really costs: the model
            # call plus the event loop's work on the same cores (parsing, reading, answering, refusing).
            busy_cycle = done - self._last_done if self._last_done is not None else seconds
            # Per call and per token, not per text: a 20,000-character review is ~200 sentences of work, and prices as
            # such; the call's fixed part is not charged to each token of a short sentence (tasks.serving.batch_cost).
            self._cost.observe(tokens, max(seconds, busy_cycle))
            self._last_done = done if self._pending else None
            self._observe("on_batch", batch.model.info.version, len(items), seconds)
            self._resolve(batch, scores)

    def _resolve(self, batch: _Batch, scores: list[TextScore]) -> None:
        at = 0
        for item, start, n in batch.slices:
            item.results[start:start + n] = scores[at:at + n]
            at += n
            item.scored += n
            if item.scored == len(item.items) and not item.future.done():
                item.future.set_result(item.results)

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        for item, _, _ in batch.slices:
            if not item.future.done():
                item.future.set_exception(exc)
            self._drop(item)  # the rest of a split request is not worth a model call
