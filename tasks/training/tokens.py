"""Tokenise once: each split's token ids cached on disk, then padded per batch to its own longest text.

A row is a text's head (truncated to max_length) or, for training on long texts, one of its windows: `owners`
says which text each row came from (its label)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.errors import TunegateError
from tasks.core.io import atomic_file
from tasks.runtime.long_text import Wrapper, content_ids, windows_of

# Pad values per model input; any other input the tokenizer returns pads with 0.
PAD_ZERO = ("attention_mask", "token_type_ids", "special_tokens_mask")


class WindowsUnsupportedError(TunegateError):
    """Texts cut into windows with a tokenizer that cannot: not a fast one, or a model input windows cannot build."""


@dataclass(frozen=True)
class TokenizedTexts:
    """Ragged token columns of n rows: column k of row i is flat[k][offsets[i]:offsets[i+1]]; row i is (a window
    of) text owners[i], the rows of one text contiguous."""

    flat: dict[str, np.ndarray]
    offsets: np.ndarray  # int64 [n + 1]
    pad_token_id: int
    pad_left: bool
    key: str
    owners: np.ndarray  # int64 [n]: the text of each row

    def row_labels(self, labels: np.ndarray) -> np.ndarray:
        """Each row's label: its text's (a window carries the label of the text it was cut from)."""
        return np.asarray(labels)[self.owners]

    @property
    def windowed_texts(self) -> int:
        """Texts read as more than one row (longer than max_length, cut into windows)."""
        return int((np.bincount(self.owners) > 1).sum()) if len(self.owners) else 0

    @property
    def windowed_rows(self) -> int:
        """Rows that are windows of those texts."""
        counts = np.bincount(self.owners) if len(self.owners) else np.zeros(0, dtype=np.int64)
        return int(counts[counts > 1].sum())

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, indices: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """The rows `indices` as int64 [len(indices), longest] tensors (dynamic padding)."""
        lengths = self.lengths[indices]
        width = int(lengths.max())
        out = {}
        for name, flat in self.flat.items():
            pad = 0 if name in PAD_ZERO else self.pad_token_id
            block = np.full((len(indices), width), pad, dtype=np.int64)
            for row, (i, n) in enumerate(zip(indices, lengths)):
                start = self.offsets[i]
                if self.pad_left:
                    block[row, width - n:] = flat[start:start + n]
                else:
                    block[row, :n] = flat[start:start + n]
            out[name] = torch.from_numpy(block)
        return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of everything that decides token ids: the full tokenizer definition (vocab, rules, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without truncation and padding: each call sets them (max_length is part of the cache key), so they
        # hold the last call's settings and would give the same tokenizer another hash after every use.
        definition = json.loads(backend.to_str())
        spec = json.dumps({k: v for k, v in definition.items() if k not in ("truncation", "padding")}, sort_keys=True)
    else:
        spec = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.padding_side, tokenizer.pad_token_id], default=str)
    return hashlib.sha256((spec + extra).encode()).hexdigest()


def cache_key(tokenizer_hash: str, texts: list[str], max_length: int, max_windows: int | None = None) -> str:
    # Head-only keys stay as they were before windows existed: their cache entries remain valid.
    reading = "" if max_windows is None else f"windows {max_windows}\n"
    digest = hashlib.sha256(f"{tokenizer_hash}\n{max_length}\n{reading}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def tokenize(tokenizer: Any, texts: list[str], max_length: int, cache_dir: Path | None = None,
             tokenizer_hash: str | None = None, max_windows: int | None = None) -> TokenizedTexts:
    """Token ids of `texts`, read from cache_dir when tokenised before: each text truncated to max_length, or,
    with `max_windows`, a text longer than that cut into at most that many windows of max_length (no overlap)."""
    key = cache_key(tokenizer_hash or tokenizer_fingerprint(tokenizer), texts, max_length, max_windows)
    pad_left = tokenizer.padding_side == "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    path = cache_dir / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        os.utime(path)  # mtime = last use: prune_token_cache keeps the most recently used keys
        with np.load(path) as stored:
            flat = {name[len("flat_"):]: stored[name] for name in stored.files if name.startswith("flat_")}
            offsets = stored["offsets"]
            # Entries written before rows could be windows hold one row per text.
            owners = stored["owners"] if "owners" in stored.files else np.arange(len(offsets) - 1, dtype=np.int64)
            return TokenizedTexts(flat, offsets, pad_id, pad_left, key, owners)
    if max_windows is None:
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        rows = {name: encoded[name] for name in encoded.keys()}
        owners = np.arange(len(texts), dtype=np.int64)
    else:
        rows, owners = window_rows(tokenizer, texts, max_length, max_windows)
    lengths = np.array([len(ids) for ids in rows["input_ids"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # int32 halves the cache and batch-building memory; ids and masks all fit.
    flat = {name: np.fromiter((t for row in column for t in row), dtype=np.int32, count=int(offsets[-1]))
            for name, column in rows.items()}
    if path is not None:
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, offsets=offsets, owners=owners, **{f"flat_{k}": v for k, v in flat.items()})
            handle.flush()
            os.fsync(handle.fileno())
    return TokenizedTexts(flat, offsets, pad_id, pad_left, key, owners)


def window_rows(tokenizer: Any, texts: list[str], max_length: int,
                max_windows: int) -> tuple[dict[str, list[list[int]]], np.ndarray]:
    """Model inputs (the columns the tokenizer returns) of every text's windows, and the text of each row.

    A text that fits max_length is one row, exactly as truncation gives it; a longer one is cut by
    long_text.windows_of with stride = the window's content budget (no overlap), thinned evenly to max_windows
    (the first and the last kept), so its end is read too.
    """
    backend = fast_backend(tokenizer, "train.long_text.train_windows (set it to false)")
    wrapper = Wrapper.of(backend)
    stride = max_length - wrapper.specials
    rule = {"rule": "window", "stride": stride, "aggregate": "mean_prob"}  # the aggregate is unused when training
    ids: list[list[int]] = []
    owners: list[int] = []
    for i, content in enumerate(content_ids(backend, texts)):
        for window in windows_of(content, rule, max_length, wrapper, max_windows=max_windows):
            ids.append(window)
            owners.append(i)
    columns: dict[str, list[list[int]]] = {}
    for name in tokenizer.model_input_names:
        if name == "input_ids":
            columns[name] = ids
        elif name == "attention_mask":
            columns[name] = [[1] * len(w) for w in ids]
        elif name == "token_type_ids":
            columns[name] = [[wrapper.type_id] * len(w) for w in ids]
        else:
            raise WindowsUnsupportedError(f"train.long_text.train_windows cannot build the model input {name!r} "
                                          f"of {type(tokenizer).__name__}: set train_windows: false")
    return columns, np.asarray(owners, dtype=np.int64)


def fast_backend(tokenizer: Any, needed_by: str) -> Any:
    """The `tokenizers.Tokenizer` inside a fast HF tokenizer: what long_text cuts windows with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise WindowsUnsupportedError(f"{needed_by} needs a fast tokenizer (tokenizer.json); "
                                      f"{type(tokenizer).__name__} is not one")
    return backend


def prune_token_cache(cache_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used cache entries (by mtime, which a read refreshes); returns them."""
    if not cache_dir.is_dir():
        return []
    entries = sorted(cache_dir.glob("*.npz"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    stale = entries[:-keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
