"""The prediction log: one JSON line per scored text, written off the request path, rotated and size-bounded.

JSON lines rather than Parquet: a part being written is readable at any moment (whole lines only), and
several uvicorn workers can each append to their own part in one folder.

Two kinds of record share the parts: prod's (one per text answered; no `kind` key, as before shadows existed) and
the shadow's (`"kind": "shadow"`: a mirrored text's prod answer and the shadow's, tasks/serving/shadow.py).
Its readers are in tasks/runtime/prediction_log.py, below the service, where the gate can use them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.core.errors import TunegateError
from tasks.runtime.prediction_log import PART_PREFIX, PART_SUFFIX, list_parts
from tasks.serving.scoring import TextScore

MB = 2**20  # serve.log_file_mb / log_max_mb are MiB, as model sizes elsewhere
# Records waiting for the writer. At ~400 bytes each (no texts) that is ~25 MiB at most; a writer that far
# behind means the disk cannot keep up, and dropping (counted) is better than stalling requests.
QUEUE_RECORDS = 65536
WRITE_CHUNK = 1 << 16  # bytes gathered before a write, unless flush_seconds passes first
_STOP = object()

log = logging.getLogger(__name__)


class PredictionLogError(TunegateError):
    """The prediction log's folder cannot be used (not creatable or not writable)."""


def part_name(at: float, pid: int, seq: int) -> str:
    """A part's file name; names sort by creation time (fixed-width UTC stamp), then process, then sequence."""
    stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{PART_PREFIX}{stamp}-{pid}-{seq:06d}{PART_SUFFIX}"


def text_sha256(text: str) -> str:
    # surrogatepass: a JSON body may carry lone surrogates ("\ud800"), which plain UTF-8 cannot encode.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def make_record(at: float, version: str, text: str, score: TextScore, labels: Sequence[str] | None,
                log_texts: bool) -> dict[str, Any]:
    """One scored text as the log keeps it (the text itself only with log_texts)."""
    names = list(labels) if labels is not None else [str(i) for i in range(len(score.probabilities))]
    record: dict[str, Any] = {
        "time": at, "model_version": version, "text_sha256": text_sha256(text), "chars": len(text),
        "tokens": score.tokens, "unknown_tokens": score.unknown_tokens, "label": score.label,
        "confidence": float(max(score.probabilities)),
        "probabilities": {name: float(p) for name, p in zip(names, score.probabilities)},
        "truncated": score.tokens > score.read_tokens,
    }
    if log_texts:
        record["text"] = text
    return record


def encode_record(record: dict[str, Any]) -> bytes:
    # ensure_ascii: one line whatever the text holds (newlines, lone surrogates are escaped).
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def prune_parts(folder: Path, budget_bytes: int, keep: Path | None) -> list[Path]:
    """Delete the oldest parts (any process's, never `keep`) until the rest total at most budget_bytes."""
    sized = []
    for part in list_parts(folder):
        try:
            sized.append((part, part.stat().st_size))
        except FileNotFoundError:  # another worker pruned it first
            continue
    total = sum(size for _, size in sized)
    deleted = []
    for part, size in sized:
        if total <= budget_bytes:
            break
        if part == keep:
            continue
        part.unlink(missing_ok=True)
        total -= size
        deleted.append(part)
    return deleted


class PredictionLog:
    """Records go to a queue and a writer thread appends them to predictions-*.jsonl parts under `folder`:
    a part is closed at file_mb, the oldest parts are deleted beyond max_mb, records wait at most
    flush_seconds. Readable while written (whole lines only)."""

    def __init__(self, folder: Path, *, log_texts: bool, file_mb: float, max_mb: float, flush_seconds: float,
                 queue_records: int = QUEUE_RECORDS):
        self.folder = Path(folder)
        self.log_texts = log_texts
        self.file_bytes = max(1, int(file_mb * MB))
        self.max_bytes = max(self.file_bytes, int(max_mb * MB))
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=queue_records)
        self._lock = threading.Lock()
        self._dropped = 0
        self._written = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._part: Path | None = None
        self._fd: int | None = None
        self._part_size = 0
        self._seq = 0

    # --- request side (event loop) ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the folder and start the writer thread (PredictionLogError when the folder is unusable)."""
        if self._thread is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PredictionLogError(f"cannot create the prediction log folder {self.folder} (serve.log_dir): "
                                     f"{exc}") from exc
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise PredictionLogError(f"the prediction log folder {self.folder} (serve.log_dir) is not writable")
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, version: str, texts: list[str], scores: list[TextScore],
               labels: Sequence[str] | None = None) -> None:
        """Queue one record per text (never blocks; a full queue drops the records and counts them). `labels`
        (ModelInfo.labels) names the probabilities; without it they are keyed by index."""
        at = time.time()
        for text, score in zip(texts, scores):
            self._put((at, version, text, score, labels))

    def append_record(self, record: dict[str, Any]) -> None:
        """Queue a record already made (a shadow record, built off the event loop); never blocks, as append."""
        self._put(record)

    def _put(self, item: tuple | dict[str, Any]) -> None:
        if self._closed:
            self._count_dropped(1)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count_dropped(1)

    @property
    def dropped(self) -> int:
        """Records not written: the queue was full, the log closed, or the disk refused them."""
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    @property
    def current_part(self) -> Path | None:
        return self._part

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        if self._closed:
            return
        if self._thread is None:
            self.start()  # records queued before start are still owed to the log
        self._closed = True
        self._queue.put(_STOP)  # blocking is fine here: the writer is draining
        self._thread.join()

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    # --- writer thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[bytes] = []
        pending_bytes = 0
        oldest: float | None = None  # monotonic time the oldest pending record was taken off the queue
        stopping = False
        while not stopping:
            timeout = None if oldest is None else max(0.0, oldest + self.flush_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif item is not None:
                line = encode_record(item if isinstance(item, dict) else make_record(*item, self.log_texts))
                pending.append(line)
                pending_bytes += len(line)
                oldest = time.monotonic() if oldest is None else oldest
            due = oldest is not None and time.monotonic() - oldest >= self.flush_seconds
            if pending and (stopping or due or pending_bytes >= WRITE_CHUNK):
                self._write_lines(pending)
                pending, pending_bytes, oldest = [], 0, None
        self._close_part()

    def _write_lines(self, lines: list[bytes]) -> None:
        """Append lines to parts, starting a new part whenever the next line would pass file_mb."""
        for i, line in enumerate(lines):
            try:
                if self._fd is None or self._part_gone() or (
                        self._part_size and self._part_size + len(line) > self.file_bytes):
                    self._open_part()
                os.write(self._fd, line)  # one write per whole line: a reader never sees half of one but the last
                self._part_size += len(line)
                self._written += 1
            except OSError as exc:
                self._count_dropped(len(lines) - i)
                log.warning("prediction log: cannot write to %s (%s); %d record(s) dropped", self._part, exc,
                            len(lines) - i)
                self._close_part()  # the next batch starts a fresh part
                return

    def _part_gone(self) -> bool:
        """The open part was deleted (another worker pruned it, or an operator): writing on would be lost."""
        return os.fstat(self._fd).st_nlink == 0

    def _open_part(self) -> None:
        self._close_part()
        # Room for the new part to grow to file_mb: the folder stays within max_mb (per writing process).
        prune_parts(self.folder, self.max_bytes - self.file_bytes, keep=None)
        self._seq += 1
        self._part = self.folder / part_name(time.time(), os.getpid(), self._seq)
        self._fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._part_size = 0

    def _close_part(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass  # the part is as complete as its whole lines; nothing else to save
        self._fd = None
