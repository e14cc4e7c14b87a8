"""How a text longer than the model's window is read: one rule, used alike by `tunegate predict`, `tunegate serve`,
evaluate (PyTorch), quantize and the gate (onnxruntime). Pure functions over token ids, so both runtimes and every
tokenizer with a single-sequence template ([CLS] text [SEP], <s> text </s>) share them.

A rule is serving.json's `long_text` (and an entry of train.long_text.candidates):
  {"rule": "head"}                                   the first max_length tokens (what truncation gives)
  {"rule": "head_tail", "head_tokens": H}            the first H and the last (budget - H) content tokens, one window
  {"rule": "window", "stride": S, "aggregate": A}    windows of max_length tokens starting every S content tokens (the
                                                     last one ends at the text's end); A = mean_prob | mean_logit |
                                                     max_confidence combines their logits into the text's
  {"rule": "window", "stride": S, "max_windows": K, "aggregate": A}
                                                     the same, at most K windows per text (1 <= K <= MAX_WINDOWS),
                                                     evenly spaced, the first and the last kept; without the key,
                                                     at most MAX_WINDOWS
A text that fits in one window is read whole, the same way by every rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tasks.core.errors import TunegateError

RULES = ("head", "head_tail", "window")
AGGREGATES = ("mean_prob", "mean_logit", "max_confidence")
# Windows read per text at most (a 20,000-character text is ~5,000 tokens): beyond it, windows are taken evenly
# spaced over the text (the first and the last always among them), bounding a request's cost. A window rule's
# max_windows lowers it for that rule.
MAX_WINDOWS = 64
HEAD = {"rule": "head"}


class LongTextRuleError(TunegateError):
    """A long_text rule this version cannot read: unknown rule or aggregate, or sizes that do not fit the window."""


@dataclass(frozen=True)
class Wrapper:
    """The special tokens a tokenizer puts around one text, and the type id of the text's tokens."""
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    type_id: int = 0

    @classmethod
    def of(cls, tokenizer: Any) -> Wrapper:
        """Read from a `tokenizers.Tokenizer` by post-processing an encoding of one ordinary word."""
        clone = untruncated(tokenizer)
        bare = clone.encode("a", add_special_tokens=False)
        full = clone.post_process(bare)
        ids, inner = list(full.ids), list(bare.ids)
        for start in range(len(ids) - len(inner) + 1):
            if ids[start:start + len(inner)] == inner:
                type_id = full.type_ids[start] if inner else 0
                return cls(tuple(ids[:start]), tuple(ids[start + len(inner):]), int(type_id))
        raise LongTextRuleError("cannot find where this tokenizer puts a text between its special tokens")

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def wrap(self, content: list[int]) -> list[int]:
        return [*self.prefix, *content, *self.suffix]


def normalise(rule: str | dict[str, Any] | None) -> dict[str, Any]:
    """A rule as a dict, checked; the string "head" (folders exported before rules had options) and None read head."""
    if rule is None or rule == "head":
        return dict(HEAD)
    if isinstance(rule, str) or not isinstance(rule, dict):
        raise LongTextRuleError(f"long_text {rule!r}: expected one of {RULES} as {{'rule': ...}}")
    name = rule.get("rule")
    if name not in RULES:
        raise LongTextRuleError(f"long_text rule {name!r} is not one this version reads ({', '.join(RULES)}): "
                                "upgrade tunegate")
    allowed = {"head": {"rule"}, "head_tail": {"rule", "head_tokens"},
               "window": {"rule", "stride", "aggregate", "max_windows"}}[name]
    extra = set(rule) - allowed
    if extra:
        raise LongTextRuleError(f"long_text rule {name!r} takes no {sorted(extra)} (it takes {sorted(allowed)})")
    if name == "head_tail" and not (isinstance(rule.get("head_tokens"), int) and rule["head_tokens"] >= 0):
        raise LongTextRuleError(f"long_text head_tail needs head_tokens >= 0, got {rule.get('head_tokens')!r}")
    if name == "window":
        if not (isinstance(rule.get("stride"), int) and rule["stride"] >= 1):
            raise LongTextRuleError(f"long_text window needs stride >= 1, got {rule.get('stride')!r}")
        if rule.get("aggregate") not in AGGREGATES:
            raise LongTextRuleError(f"long_text window aggregate {rule.get('aggregate')!r} is not one of {AGGREGATES}")
        cap = rule.get("max_windows", MAX_WINDOWS)
        if not (isinstance(cap, int) and not isinstance(cap, bool) and 1 <= cap <= MAX_WINDOWS):
            raise LongTextRuleError(f"long_text window max_windows must be an integer from 1 to {MAX_WINDOWS}, "
                                    f"got {cap!r}")
    return dict(rule)  # max_windows stays absent when absent: old rules keep their exact dict (and hashes)


def describe(rule: dict[str, Any]) -> str:
    """One line for logs and reports: head, head_tail(16), window(stride 31, mean_prob),
    window(stride 62, at most 4, mean_prob)."""
    if rule["rule"] == "head_tail":
        return f"head_tail({rule['head_tokens']})"
    if rule["rule"] == "window":
        cap = f"at most {rule['max_windows']}, " if "max_windows" in rule else ""
        return f"window(stride {rule['stride']}, {cap}{rule['aggregate']})"
    return "head"


def window_cap(rule: dict[str, Any], max_windows: int = MAX_WINDOWS) -> int:
    """Windows per text at most under a window rule: its own max_windows (MAX_WINDOWS when absent), and at most
    `max_windows` (a caller's bound)."""
    return min(rule.get("max_windows", MAX_WINDOWS), max_windows)


def window_starts(length: int, budget: int, stride: int, max_windows: int = MAX_WINDOWS) -> list[int]:
    """Start offsets of windows of `budget` content tokens over `length` tokens: every `stride`, the last one
    moved back to end at the text's end; evenly thinned to at most max_windows (first and last kept)."""
    if length <= budget:
        return [0]
    last = length - budget
    starts = list(range(0, last, stride)) + [last]
    if len(starts) > max_windows:
        picks = np.unique(np.round(np.linspace(0, len(starts) - 1, max_windows)).astype(int))
        starts = [starts[i] for i in picks]
    return starts


def windows_of(content: list[int], rule: dict[str, Any], max_length: int, wrapper: Wrapper,
               max_windows: int = MAX_WINDOWS) -> list[list[int]]:
    """The token-id sequences (special tokens included, each at most max_length) the model reads for one text
    whose content ids (no special tokens, untruncated) are `content`. Always at least one (an empty text reads as
    its special tokens alone); a window rule gives at most window_cap(rule, max_windows)."""
    budget = max_length - wrapper.specials
    if budget < 1:
        raise LongTextRuleError(f"max_length {max_length} leaves no room for text beside {wrapper.specials} special tokens")
    if len(content) <= budget:
        return [wrapper.wrap(content)]
    if rule["rule"] == "head":
        return [wrapper.wrap(content[:budget])]
    if rule["rule"] == "head_tail":
        head = min(rule["head_tokens"], budget)
        tail = budget - head
        return [wrapper.wrap(content[:head] + (content[len(content) - tail:] if tail else []))]
    starts = window_starts(len(content), budget, rule["stride"], window_cap(rule, max_windows))
    return [wrapper.wrap(content[s:s + budget]) for s in starts]


def tokens_read(content_length: int, rule: dict[str, Any], max_length: int, wrapper: Wrapper,
                max_windows: int = MAX_WINDOWS) -> int:
    """Distinct content tokens of a text the rule reads (== content_length when nothing is skipped)."""
    budget = max_length - wrapper.specials
    if content_length <= budget or rule["rule"] != "window":
        return min(content_length, budget)
    starts = window_starts(content_length, budget, rule["stride"], window_cap(rule, max_windows))
    covered = np.zeros(content_length, dtype=bool)
    for s in starts:
        covered[s:s + budget] = True
    return int(covered.sum())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


Aggregate = Literal["mean_prob", "mean_logit", "max_confidence"]


def combine(window_logits: np.ndarray, owners: np.ndarray, n_texts: int, rule: dict[str, Any]) -> np.ndarray:
    """[n_texts, classes] logits from [n_windows, classes] window logits; owners[i] = the text of window i.
    head and head_tail have one window per text. mean_prob returns log mean probabilities (softmax of them is
    the mean of the windows' probabilities)."""
    window_logits = np.asarray(window_logits, dtype=np.float32)
    out = np.zeros((n_texts, window_logits.shape[1]), dtype=np.float32)
    if rule["rule"] != "window":
        out[owners] = window_logits
        return out
    counts = np.bincount(owners, minlength=n_texts).astype(np.float32)[:, None]
    aggregate: Aggregate = rule["aggregate"]
    if aggregate == "mean_logit":
        np.add.at(out, owners, window_logits)
        return out / counts
    probs = _softmax(window_logits)
    if aggregate == "mean_prob":
        np.add.at(out, owners, probs)
        return np.log(np.maximum(out / counts, np.finfo(np.float32).tiny))
    confidence = probs.max(axis=1)
    best = np.full(n_texts, -1.0)
    for i, owner in enumerate(owners):  # the most confident window of each text (the first on a tie)
        if confidence[i] > best[owner]:
            best[owner] = confidence[i]
            out[owner] = window_logits[i]
    return out


@dataclass(frozen=True)
class Reading:
    """What the model reads for a list of texts: windows (token ids, special tokens included), the text each
    window belongs to (windows of one text are contiguous, in text order), and each text's content length."""
    windows: list[list[int]]
    owners: np.ndarray
    content_lengths: list[int]

    def of_text(self, i: int) -> list[list[int]]:
        return [w for w, owner in zip(self.windows, self.owners) if owner == i]

    def rows(self) -> list[np.ndarray]:
        """Each text's window indices (at least one per text)."""
        bounds = np.searchsorted(self.owners, np.arange(len(self.content_lengths) + 1))
        return [np.arange(bounds[i], bounds[i + 1]) for i in range(len(self.content_lengths))]

    def window_counts(self) -> list[int]:
        return np.bincount(self.owners, minlength=len(self.content_lengths)).tolist()

    def widths(self) -> list[int]:
        """Each text's longest window, in tokens (what a batch holding it is padded to at least)."""
        return [max(len(self.windows[r]) for r in rows) for rows in self.rows()]

    def window_tokens(self) -> list[int]:
        """Tokens of each text's windows together: what reading it costs."""
        return [sum(len(self.windows[r]) for r in rows) for rows in self.rows()]


def content_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids without special tokens, untruncated (a `tokenizers.Tokenizer`, left unchanged)."""
    return [encoding.ids for encoding in _encode_untruncated(tokenizer, texts)]


def read_ids(contents: list[list[int]], rule: dict[str, Any], max_length: int, wrapper: Wrapper) -> Reading:
    """Cut texts' content ids (from `content_ids`) into the windows `rule` reads."""
    windows: list[list[int]] = []
    owners: list[int] = []
    for i, content in enumerate(contents):
        for window in windows_of(content, rule, max_length, wrapper):
            windows.append(window)
            owners.append(i)
    return Reading(windows, np.asarray(owners, dtype=np.int64), [len(c) for c in contents])


def read_texts(tokenizer: Any, texts: list[str], rule: dict[str, Any], max_length: int,
               wrapper: Wrapper | None = None) -> Reading:
    """Tokenise texts (a `tokenizers.Tokenizer`; its own truncation and padding are ignored) and cut them into
    the windows `rule` reads."""
    return read_ids(content_ids(tokenizer, texts), rule, max_length, wrapper or Wrapper.of(tokenizer))


def text_batches(reading: Reading, texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Text indices in batches of at most batch_size, in order of windows, then characters: texts within one window
    fall into the batches length_sorted_batches gave before rules (an INT8 model's dynamic quantization scales
    each batch by all its rows, so other batches would change its answers), and long texts sit with texts of
    as many windows."""
    counts = reading.window_counts()
    order = np.asarray(sorted(range(len(texts)), key=lambda i: (counts[i], len(texts[i]))), dtype=np.int64)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def logits_in_groups(reading: Reading, groups: list[Any], run: Callable[[list[list[int]]], np.ndarray],
                     rule: dict[str, Any], classes: int) -> np.ndarray:
    """[n_texts, classes] float32 logits in text order: `run` (windows -> [n_windows, classes] logits) is called
    once per group of text indices with all the windows of its texts (a text's windows are never split across
    calls), then each text's window logits are combined by `rule`."""
    rows = reading.rows()
    window_logits = np.zeros((len(reading.windows), classes), dtype=np.float32)
    for group in groups:
        picked = np.concatenate([rows[i] for i in group])
        window_logits[picked] = run([reading.windows[r] for r in picked])
    return combine(window_logits, reading.owners, len(reading.content_lengths), rule)


def _encode_untruncated(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Content encodings (no special tokens, no truncation, no padding) without changing `tokenizer`."""
    return untruncated(tokenizer).encode_batch(texts, add_special_tokens=False)


def untruncated(tokenizer: Any) -> Any:
    """`tokenizer`, or a clone of it without truncation and padding when it has them (cloning costs ~50 ms for a
    30k-word vocabulary: clone once where a tokenizer is read many times)."""
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    bare = type(tokenizer).from_str(tokenizer.to_str())
    bare.no_truncation()
    bare.no_padding()
    return bare


def padded(windows: list[list[int]], pad_id: int, type_id: int = 0) -> dict[str, np.ndarray]:
    """input_ids, attention_mask and token_type_ids (int64), padded on the right to the longest window."""
    width = max(len(w) for w in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for row, w in enumerate(windows):
        ids[row, :len(w)] = w
        mask[row, :len(w)] = 1
    types = np.where(mask == 1, type_id, 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
