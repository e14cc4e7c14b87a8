"""Tokenise once: each split's token ids cached on disk, then padded per batch to its own longest text."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.io import atomic_file

# Pad values per model input; any other input the tokenizer returns pads with 0.
PAD_ZERO = ("attention_mask", "token_type_ids", "special_tokens_mask")


@dataclass(frozen=True)
class TokenizedTexts:
    """Ragged token columns of n texts: column k of text i is flat[k][offsets[i]:offsets[i+1]]."""

    flat: dict[str, np.ndarray]
    offsets: np.ndarray  # int64 [n + 1]
    pad_token_id: int
    pad_left: bool
    key: str

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


def cache_key(tokenizer_hash: str, texts: list[str], max_length: int) -> str:
    digest = hashlib.sha256(f"{tokenizer_hash}\n{max_length}\n".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def tokenize(tokenizer: Any, texts: list[str], max_length: int, cache_dir: Path | None = None,
             tokenizer_hash: str | None = None) -> TokenizedTexts:
    """Token ids of `texts` (truncated to max_length), read from cache_dir when tokenised before."""
    key = cache_key(tokenizer_hash or tokenizer_fingerprint(tokenizer), texts, max_length)
    pad_left = tokenizer.padding_side == "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    path = cache_dir / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        os.utime(path)  # mtime = last use: prune_token_cache keeps the most recently used keys
        with np.load(path) as stored:
            flat = {name[len("flat_"):]: stored[name] for name in stored.files if name.startswith("flat_")}
            return TokenizedTexts(flat, stored["offsets"], pad_id, pad_left, key)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # int32 halves the cache and batch-building memory; ids and masks all fit.
    flat = {name: np.fromiter((t for row in encoded[name] for t in row), dtype=np.int32, count=int(offsets[-1]))
            for name in encoded.keys()}
    if path is not None:
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, offsets=offsets, **{f"flat_{k}": v for k, v in flat.items()})
            handle.flush()
            os.fsync(handle.fileno())
    return TokenizedTexts(flat, offsets, pad_id, pad_left, key)


def prune_token_cache(cache_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used cache entries (by mtime, which a read refreshes); returns them."""
    if not cache_dir.is_dir():
        return []
    entries = sorted(cache_dir.glob("*.npz"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    stale = entries[:-keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
