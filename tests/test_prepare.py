"""prepare: seeded, stratified split with no text (or near duplicate) in two splits; source filter and caps."""

import pandas as pd
import pytest

from tasks.core.config import parse_config
from tasks.prepare import MISSING_VALUE, PrepareError, cap_rows, make_splits, to_canonical
from tasks.contracts.splits import split_contract
from tasks.contracts.text import normalise_texts
from tests.conftest import REPO, tiny_params


@pytest.fixture
def cfg(tiny_model_dir):
    return parse_config(tiny_params(tiny_model_dir))


def canonical(frame, cfg, sources=("rotten_tomatoes",)):
    return to_canonical(frame, cfg.data, list(sources))


def split_frame(frame, cfg, seed):
    """prepare's split of canonical rows with another seed: {split: rows}, and what was dropped."""
    cfg = cfg.model_copy(update={"seed": seed})
    rows, _, _, dropped = make_splits(frame, cfg)
    return {name: rows[rows["split"] == name].drop(columns=["split", "code"]).reset_index(drop=True)
            for name in ("train", "dev", "test")}, dropped


def test_split_is_stratified_and_sized(reviews_frame, cfg):
    splits, _ = split_frame(canonical(reviews_frame, cfg), cfg, seed=1)
    sizes = {name: len(frame) for name, frame in splits.items()}
    assert sizes == {"train": 320, "dev": 40, "test": 40}
    for frame in splits.values():
        assert frame["label"].value_counts().to_dict() == {0: len(frame) // 2, 1: len(frame) // 2}


def test_split_keeps_near_identical_texts_in_one_split(reviews_frame, cfg):
    frame = canonical(reviews_frame, cfg)
    copies = frame.head(30).assign(text=lambda f: "  " + f["text"].str.upper() + "\t")
    splits, dropped = split_frame(pd.concat([frame, copies], ignore_index=True), cfg, seed=3)
    keys = {name: set(normalise_texts(split["text"]).to_pylist()) for name, split in splits.items()}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]
    assert dropped["duplicate_rows"] == 30
    assert sum(len(s) for s in splits.values()) == len(frame) + 30


def test_split_keeps_near_duplicates_in_one_split(reviews_frame, cfg):
    frame = canonical(reviews_frame, cfg)
    long_enough = frame[frame["text"].str.split().str.len() >= 20].head(40)
    # One word appended: a different text, but a near duplicate (word-3-gram Jaccard >= 0.8).
    edited = long_enough.assign(text=long_enough["text"] + " indeed")
    splits, dropped = split_frame(pd.concat([frame, edited], ignore_index=True), cfg, seed=3)
    where = {text: name for name, split in splits.items() for text in split["text"]}
    assert all(where[a] == where[b] for a, b in zip(long_enough["text"], edited["text"]))
    assert dropped["near_duplicate_rows_grouped"] >= 40


def test_split_drops_texts_with_conflicting_labels(reviews_frame, cfg):
    frame = canonical(reviews_frame, cfg)
    flipped = frame.head(5).assign(label=lambda f: 1 - f["label"])
    splits, dropped = split_frame(pd.concat([frame, flipped], ignore_index=True), cfg, seed=3)
    assert dropped["conflicting_label_rows"] == 10
    assert sum(len(s) for s in splits.values()) == len(frame) - 5


def test_split_is_deterministic_per_seed(reviews_frame, cfg):
    frame = canonical(reviews_frame, cfg)
    first, _ = split_frame(frame, cfg, seed=7)
    again, _ = split_frame(frame, cfg, seed=7)
    other, _ = split_frame(frame, cfg, seed=8)
    assert first["test"].equals(again["test"])
    assert set(first["test"]["text"]) != set(other["test"]["text"])


def test_source_filter_and_unknown_source(reviews_frame, cfg):
    assert len(canonical(reviews_frame, cfg)) == 400
    assert len(canonical(reviews_frame, cfg, sources=())) == 440
    with pytest.raises(PrepareError, match="netflix"):
        canonical(reviews_frame, cfg, sources=("netflix",))


def test_cap_rows_keeps_class_balance(reviews_frame, cfg):
    capped = cap_rows(canonical(reviews_frame, cfg), 100, seed=0)
    assert len(capped) == 100 and capped["label"].value_counts().to_dict() == {0: 50, 1: 50}


def test_prepare_stage_writes_splits_and_stats(staged_pipeline):
    cfg, paths = staged_pipeline
    splits = {name: pd.read_parquet(paths.split(name)) for name in ("train", "dev", "test")}
    assert cfg.gate.slice_columns == ["source"]
    assert all(list(frame.columns) == ["text", "label", "source"] for frame in splits.values())
    assert set(splits["test"]["source"]) == {"rotten_tomatoes"}  # prepare.sources keeps only those rows
    stats = (paths.stage_dir("prepare") / "stats.json").read_text()
    assert '"train"' in stats and '"negative"' in stats


def test_to_canonical_reads_validation_and_valid_as_dev(reviews_frame, cfg):
    data = cfg.data.model_copy(update={"split_column": "split"})
    frame = reviews_frame.assign(split=["train", "validation", "valid", "test"] * (len(reviews_frame) // 4))
    assert to_canonical(frame, data, [])["split"].value_counts().to_dict() == {"train": 110, "dev": 220, "test": 110}


@pytest.mark.parametrize("defect,message", [
    (lambda f: f.drop(columns="label"), "data.label_column 'label' is not a column of the data"),
    (lambda f: f.assign(label=f["label"].where(f.index != 4, 7)), "1 row(s) of column 'label' hold not in data.labels"),
    (lambda f: f.assign(label=f["label"].astype(float).where(f.index != 4)), "column 'label' hold not in data.labels"),
    (lambda f: f.assign(text=f["text"].astype(object).where(f.index != 2, 5)), "1 row(s) of column 'text' hold texts"),
    (lambda f: f.assign(split="holdout"), "splits other than train, dev, validation, valid, test: e.g. 'holdout'"),
])
def test_to_canonical_refuses_defects_with_the_problem_named(reviews_frame, cfg, defect, message):
    data = cfg.data.model_copy(update={"split_column": "split"})
    with pytest.raises(PrepareError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_canonical(defect(reviews_frame.assign(split="train")), data, [])


def test_to_canonical_carries_slice_columns_with_their_raw_values(reviews_frame, cfg):
    rows = to_canonical(reviews_frame, cfg.data, [], carry=["source"])
    assert list(rows.columns) == ["text", "label", "source"]
    assert rows["source"].tolist() == reviews_frame["source"].tolist()
    assert rows["source"].value_counts().to_dict() == {"rotten_tomatoes": 400, "imdb": 40}


def test_to_canonical_carries_slice_values_as_strings_and_missing_as_its_own_value(reviews_frame, cfg):
    frame = reviews_frame.head(4).assign(year=[2001, 2002, None, 2002], source=["a", None, "b", "a"])
    rows = to_canonical(frame, cfg.data, [], carry=["source", "year"])
    assert rows["source"].tolist() == ["a", MISSING_VALUE, "b", "a"]
    assert rows["year"].tolist() == ["2001.0", "2002.0", MISSING_VALUE, "2002.0"]  # pandas made the column float


def test_to_canonical_refuses_a_slice_column_the_data_lacks(reviews_frame, cfg):
    with pytest.raises(PrepareError, match=r"gate.slice_columns names \['genre'\], not columns of the data "
                                           r"\(columns: text, label, source\)"):
        to_canonical(reviews_frame, cfg.data, [], carry=["source", "genre"])


def test_to_canonical_refuses_a_slice_column_that_would_overwrite_its_own(reviews_frame, cfg):
    with pytest.raises(PrepareError, match=r"gate.slice_columns \['label'\] clash"):
        to_canonical(reviews_frame, cfg.data, [], carry=["label"])


def test_split_keeps_each_row_with_its_slice_value_and_the_contract_holds(reviews_frame, cfg):
    frame = to_canonical(reviews_frame, cfg.data, [], carry=["source"])
    rows, keys, pairs, _ = make_splits(frame, cfg)
    source_of = dict(zip(reviews_frame["text"], reviews_frame["source"]))
    assert [source_of[t] for t in rows["text"]] == rows["source"].tolist()
    assert set(rows.loc[rows["split"] == "test", "source"]) == {"rotten_tomatoes", "imdb"}
    report = split_contract(rows, keys, pairs, cfg, REPO, tokenizer_dir=None)
    assert report["success"], [c for c in report["checks"] if not c["success"]]
