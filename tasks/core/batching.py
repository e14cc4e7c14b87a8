"""Length-grouped batching: padding costs compute, so batch texts of similar length together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches in order of length (for inference: order does not matter)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shuffled_length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                            pool_batches: int = 50) -> list[np.ndarray]:
    """Training batches: shuffle, sort within pools of `pool_batches` batches by length, shuffle batches.

    Batches hold texts of similar length (little padding) yet differ every epoch.
    """
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
