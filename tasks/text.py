"""Text normalisation shared by the data contracts and the split."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable


def normalise_text(text: str) -> str:
    """Key under which near-identical texts are grouped: NFKC, case-folded, whitespace runs as one space."""
    if not text.isascii():  # NFKC leaves ASCII unchanged: skip it for the common case
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split()).casefold()


def normalise_texts(texts: Iterable[object]) -> list[object]:
    """normalise_text of every string; other values (missing, numbers) pass through unchanged."""
    return [normalise_text(t) if isinstance(t, str) else t for t in texts]
