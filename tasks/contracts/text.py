"""Text normalisation shared by the data contracts and the split (arrow kernels: millions of rows)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


# Two spaces in a row, or whitespace other than the space (what Python's str.split() splits on).
UNEVEN_WHITESPACE = r"  |[\t\n\x0b\f\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"


def is_missing(value: object) -> bool:
    """True for None, NaN, NA and NaT; False for any other value, lists and arrays included."""
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def is_text(texts: pd.Series) -> pd.Series:
    """Per value: True when it is a string (missing values and every other type: False)."""
    if pd.api.types.is_string_dtype(texts) and not pd.api.types.is_object_dtype(texts):
        return texts.notna()  # a str column holds only strings and missing values
    return texts.map(lambda v: isinstance(v, str)).astype(bool)


def as_text_array(texts: Iterable[object]) -> pa.Array:
    """Texts as one arrow large_string array: missing values null, other non-strings as their str()."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        try:  # a str column (or an all-string object column) converts without a Python loop
            texts = pa.array(texts if isinstance(texts, pd.Series) else list(texts), type=pa.large_string(),
                             from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            texts = pa.array([None if is_missing(t) else str(t) for t in texts], type=pa.large_string())
    if isinstance(texts, pa.ChunkedArray):  # arrow-backed pandas columns may come in chunks
        texts = texts.combine_chunks()
    return texts.cast(pa.large_string())


def normalise_texts(texts: Iterable[object]) -> pa.Array:
    """Keys under which near-identical texts are grouped: NFKC, lower-cased, whitespace runs as one space."""
    array = pc.utf8_trim_whitespace(pc.utf8_normalize(as_text_array(texts), "NFKC"))
    # Splitting every text into words is the slow part: only texts with a whitespace run or
    # whitespace other than a plain space need it.
    uneven = pc.fill_null(pc.match_substring_regex(array, UNEVEN_WHITESPACE), False)
    if pc.any(uneven).as_py():
        collapsed = pc.binary_join(pc.utf8_split_whitespace(array.filter(uneven)), pa.scalar(" ", pa.large_string()))
        array = pc.replace_with_mask(array, uneven, collapsed)
    return pc.utf8_lower(array)


def normalise_text(text: str) -> str:
    """normalise_texts of one text."""
    return normalise_texts([text])[0].as_py()


def dictionary_encoded(texts: pa.Array) -> pa.DictionaryArray:
    """texts as (indices into distinct values, distinct values in order of first appearance)."""
    return pc.dictionary_encode(texts)
