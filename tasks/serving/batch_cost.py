"""What a model call costs, learned while serving: seconds = per_batch + per_token x tokens.

Admission prices the work ahead of a request with it. A price per token alone, learned from whatever was served,
overprices long texts after short ones: a call has a fixed part (onnxruntime's per-op overhead, the event loop's
parsing and answering between calls) that a short sentence pays over few tokens. On the shipped student INT8 (AMD
EPYC, AVX-512 VNNI, 2 cores, 2026-12-07) one text alone took 0.7 ms for 8 tokens (0.085 ms a token) and 7.6 ms for a
4-window review of 256 (0.030 ms a token): a review priced at the sentences' rate counts ~3x its time, and requests
were refused (429) at 4 clients while the served p99 was 39 ms, under a 150 ms bound. Two parts fitted by least
squares over recent calls price both.

The fit weights call i of n by MEMORY ** (n - i) (about the last 1 / (1 - MEMORY) calls count); each observation is
first clipped to CLIP times the current prediction either way, so one slow call (a GC pause, a noisy neighbour)
moves the estimate by a bounded step and later calls bring it back. Where the calls seen so far do not spread
enough in size to separate the two parts, or the fit gives a negative part, the whole cost is priced per token (the
ratio of the weighted sums), as a single rate would."""

from __future__ import annotations

import math
from dataclasses import dataclass

MEMORY = 0.9  # weight kept by the past at each new call: about the last 10 calls count
CLIP = 4.0  # one call's seconds count as at most this factor above (or below) what the fit predicted
# Calls whose token counts spread less than this share of their mean cannot separate a fixed part from a per-token
# one: the cost is then priced per token.
MIN_SPREAD = 0.05


@dataclass(frozen=True)
class Rates:
    """Seconds a model call costs: per_batch for the call, plus per_token for each token in it."""

    per_batch: float
    per_token: float

    def seconds(self, calls: float, tokens: float) -> float:
        return self.per_batch * calls + self.per_token * tokens


class BatchCost:
    """The two rates, fitted online (module docstring). `rates` is None before the first call."""

    def __init__(self) -> None:
        self._weight = self._tokens = self._seconds = self._tokens_sq = self._product = 0.0
        self.rates: Rates | None = None

    def observe(self, tokens: int, seconds: float) -> Rates:
        """Learn from one call of `tokens` tokens that took `seconds`; returns the new rates."""
        tokens = max(1, tokens)
        if self.rates is not None:
            predicted = self.rates.seconds(1, tokens)
            seconds = min(max(seconds, predicted / CLIP), predicted * CLIP)
        self._weight = MEMORY * self._weight + 1.0
        self._tokens = MEMORY * self._tokens + tokens
        self._seconds = MEMORY * self._seconds + seconds
        self._tokens_sq = MEMORY * self._tokens_sq + tokens * tokens
        self._product = MEMORY * self._product + tokens * seconds
        self.rates = self._fit()
        return self.rates

    def _fit(self) -> Rates:
        mean_tokens, mean_seconds = self._tokens / self._weight, self._seconds / self._weight
        per_token_only = Rates(0.0, mean_seconds / mean_tokens)
        variance = max(0.0, self._tokens_sq / self._weight - mean_tokens ** 2)
        if math.sqrt(variance) < MIN_SPREAD * mean_tokens:
            return per_token_only
        per_token = (self._product / self._weight - mean_tokens * mean_seconds) / variance
        per_batch = mean_seconds - per_token * mean_tokens
        if per_token <= 0 or per_batch < 0:
            return per_token_only
        return Rates(per_batch, per_token)
