"""Text keys: the normalisation that decides which texts count as the same."""

import sys

import numpy as np
import pandas as pd

from tasks.contracts.text import normalise_text, normalise_texts


def test_normalise_folds_width_case_and_every_kind_of_whitespace():
    spaces = [chr(c) for c in range(sys.maxunicode) if chr(c).isspace()]
    assert normalise_texts([f"  Good{s}{s}FILM\t" for s in spaces]).to_pylist() == ["good film"] * len(spaces)
    assert normalise_text("Ｆｕｌｌ\u00a0width ﬁne") == "full width fine"  # NFKC


def test_normalise_keeps_missing_values_missing_and_reads_other_values_as_text():
    assert normalise_texts(pd.Series(["A", np.nan, 3], dtype=object)).to_pylist() == ["a", None, "3"]
    assert normalise_texts(pd.Series(["A  b", None], dtype="str")).to_pylist() == ["a b", None]


def test_normalise_reads_chunked_arrow_columns():
    import pyarrow as pa

    chunked = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([["A  b"], ["C"]])))
    assert normalise_texts(chunked).to_pylist() == ["a b", "c"]


def test_normalise_reads_nested_values_as_their_text():
    texts = pd.Series([np.array(["A", "b"]), {"t": "X"}, ["Y"], None], dtype=object)
    assert normalise_texts(texts).to_pylist() == ["['a' 'b']", "{'t': 'x'}", "['y']", None]
