"""Near-duplicate texts at scale: MinHash signatures over word shingles + LSH banding.

Cost grows about linearly with the number of texts (one pass per permutation, one grouping per
band); only texts that share a band become candidate pairs, and each candidate's exact Jaccard
similarity is checked before it is reported.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_POSITION = np.random.default_rng(0).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix of each value (splitmix64 finaliser); uint64 arithmetic wraps."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _MIX_1
    x ^= x >> np.uint64(27)
    x *= _MIX_2
    x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True)
class Shingles:
    """Every text's word shingles as hashes: text i owns values[offsets[i]:offsets[i + 1]]."""

    values: np.ndarray   # uint64, one per shingle
    offsets: np.ndarray  # int64, len(texts) + 1

    def of(self, i: int) -> set[int]:
        return set(self.values[self.offsets[i]:self.offsets[i + 1]].tolist())


def word_shingles(texts: list[str] | pa.Array, size: int) -> Shingles:
    """Hashes of each text's runs of `size` consecutive words (a shorter text is one shingle)."""
    array = texts.cast(pa.large_string()) if isinstance(texts, pa.Array) else pa.array(texts, type=pa.large_string())
    words = pc.split_pattern(array, " ")
    counts = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    # Word ids via arrow's hash table (C++), then mixed: equal words get equal hashes within this call.
    ids = pc.dictionary_encode(pc.list_flatten(words)).indices.to_numpy(zero_copy_only=False)
    word_hash = _splitmix(ids.astype(np.uint64) + np.uint64(1))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    long = counts >= size
    n_shingles = np.where(long, counts - size + 1, 1)
    offsets = np.concatenate([[0], np.cumsum(n_shingles)])
    # Shingle hash = sum over its words of word_hash * an odd per-position multiplier (uint64 wraps), so
    # "a b c" and "c b a" differ. Computed for every word position at once (contiguous slices, no
    # gathers), then only the positions where a whole shingle fits inside its text are kept.
    padded = np.concatenate([word_hash, np.zeros(size - 1, dtype=np.uint64)])
    every_start = padded[:len(word_hash)] * _POSITION[0]
    for k in range(1, size):
        every_start += padded[k:k + len(word_hash)] * _POSITION[k]
    # Keep the positions where a whole shingle fits in its text: drop each text's last size-1 word
    # positions; a text shorter than `size` words keeps only its first position (one shingle).
    ends = starts + counts
    fits = np.ones(len(word_hash), dtype=bool)
    for k in range(1, size):
        fits[ends[counts >= k] - k] = False
    fits[starts[~long]] = True
    values = every_start[fits]
    # A short text's one shingle is all its words (every_start there ran into the next text).
    short_starts, short_counts = starts[~long], counts[~long]
    short_values = np.zeros(len(short_starts), dtype=np.uint64)
    for k in range(size - 1):
        present = k < short_counts
        short_values[present] += word_hash[short_starts[present] + k] * _POSITION[k]
    values[offsets[:-1][~long]] = short_values
    return Shingles(values=values, offsets=offsets)


def minhash_signatures(shingles: Shingles, permutations: int, seed: int) -> np.ndarray:
    """uint32 [texts, permutations]: each column is the minimum of a random hash over a text's shingles."""
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(1, 2**63, size=permutations, dtype=np.uint64) | np.uint64(1)
    addends = rng.integers(0, 2**63, size=permutations, dtype=np.uint64)
    keys = (shingles.values >> np.uint64(32)) ^ (shingles.values & np.uint64(0xFFFFFFFF))
    starts = shingles.offsets[:-1]
    signatures = np.empty((len(starts), permutations), dtype=np.uint32)

    def fill(j: int) -> None:
        # Multiply-shift hashing (strongly universal for 32-bit keys): the hash is the high 32 bits of
        # keys * m + a, and the minimum of those is the high half of the minimum 64-bit value.
        hashed = np.multiply(keys, multipliers[j])
        np.add(hashed, addends[j], out=hashed)
        signatures[:, j] = np.minimum.reduceat(hashed, starts) >> np.uint64(32)

    # numpy releases the GIL inside these loops: one thread per core roughly halves the time.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(fill, range(permutations)))
    return signatures


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, max_group: int = 256) -> np.ndarray:
    """Pairs (i < j) of rows that agree on every value of at least one band: int64 [pairs, 2].

    A bucket of more than `max_group` rows pairs each with its first row only (a star keeps them
    connected without the quadratic blow-up of all pairs).
    """
    rows_per_band = signatures.shape[1] // bands
    found = []
    for band in range(bands):
        key = np.zeros(len(signatures), dtype=np.uint64)
        for column in signatures[:, band * rows_per_band:(band + 1) * rows_per_band].T:
            key = _splitmix(key ^ column.astype(np.uint64))
        found.append(_bucket_pairs(key, max_group))
    pairs = np.concatenate(found)
    packed = np.unique(pairs[:, 0] * len(signatures) + pairs[:, 1])  # 1-D unique: far faster than axis=0
    return np.stack([packed // len(signatures), packed % len(signatures)], axis=1)


def _bucket_pairs(key: np.ndarray, max_group: int) -> np.ndarray:
    """All pairs of positions sharing a key (vectorised: no Python loop over buckets)."""
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.concatenate([[True], key[order][1:] != key[order][:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(key)]]))
    size_of = np.repeat(sizes, sizes)
    rank = np.arange(len(key)) - np.repeat(starts, sizes)  # position within its bucket
    big = size_of > max_group
    # Row at sorted position p pairs with the next `partners[p]` rows of its bucket (or, in a
    # big bucket, the bucket's first row pairs with all the others).
    partners = np.where(big, np.where(rank == 0, size_of - 1, 0), size_of - 1 - rank)
    left = np.repeat(np.arange(len(key)), partners)
    step = np.arange(len(left)) - np.repeat(np.cumsum(partners) - partners, partners) + 1
    right = left + step
    a, b = order[left], order[right]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass(frozen=True)
class NearDuplicateSettings:
    jaccard: float
    shingle_words: int
    permutations: int
    bands: int
    seed: int


def near_duplicate_pairs(texts: list[str] | pa.Array, settings: NearDuplicateSettings) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of distinct positions whose shingle sets have Jaccard >= settings.jaccard, and that Jaccard.

    Pass distinct (normalised) texts: exact duplicates are cheaper to find by equality.
    """
    if len(texts) < 2:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    shingles = word_shingles(texts, settings.shingle_words)
    signatures = minhash_signatures(shingles, settings.permutations, settings.seed)
    candidates = lsh_candidate_pairs(signatures, settings.bands)
    similarity = np.array([jaccard(shingles.of(i), shingles.of(j)) for i, j in candidates.tolist()])
    keep = similarity >= settings.jaccard if len(similarity) else np.zeros(0, dtype=bool)
    return candidates[keep], similarity[keep]
