"""prepare: seeded, stratified split with no text (or near duplicate) in two splits; source filter and caps."""

import json

import pandas as pd
import pytest

from tasks.core.config import parse_config
from tasks.prepare import MISSING_VALUE, SOURCE, PrepareError, cap_rows, cap_sources, make_splits, to_canonical
from tasks.contracts.splits import split_contract
from tasks.contracts.text import normalise_texts
from tests.conftest import REPO, tiny_params


@pytest.fixture
def cfg(tiny_model_dir):
    return parse_config(tiny_params(tiny_model_dir))


def canonical(frame, cfg, sources=("rotten_tomatoes",)):
    return to_canonical(frame, cfg.data, list(sources))


def prepare_cfg(tiny_model_dir, **prepare):
    raw = tiny_params(tiny_model_dir)
    raw["prepare"].update(prepare)
    return parse_config(raw)


def split_of(rows):
    """Each text's split."""
    return dict(zip(rows["text"], rows["split"]))


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
    # Both sources of the default prepare.sources, each split on its own (reviews_frame: 400 RT + 40 IMDB rows).
    assert all(set(frame["source"]) == {"rotten_tomatoes", "imdb"} for frame in splits.values())
    stats = json.loads((paths.stage_dir("prepare") / "stats.json").read_text())
    assert {name: s["per_source"] for name, s in stats["splits"].items()} == {
        name: frame["source"].value_counts().to_dict() for name, frame in splits.items()}
    assert stats["splits"]["train"]["per_class"]["negative"] > 0
    # The tiny setup's 32-token window: long rows are counted, and none is truncated with train windows on.
    assert cfg.train.long_text.train_windows
    assert stats["long_text"]["long_rows"] > 0 and stats["long_text"]["truncated_rows"] == 0


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
    assert list(rows.columns) == ["text", "label", "source", SOURCE]  # SOURCE: data.source_column, never written
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


def test_cap_sources_takes_a_seeded_stratified_sample_of_the_named_source_only(reviews_frame, cfg):
    frame = canonical(reviews_frame, cfg, sources=())
    capped = cap_sources(frame, {"imdb": 10}, [], seed=0)
    imdb = capped[capped[SOURCE] == "imdb"]
    assert len(imdb) == 10 and imdb["label"].value_counts().to_dict() == {0: 5, 1: 5}
    rt = capped[capped[SOURCE] == "rotten_tomatoes"].reset_index(drop=True)
    assert rt.equals(frame[frame[SOURCE] == "rotten_tomatoes"].reset_index(drop=True))  # untouched, in order
    assert set(imdb["text"]) <= set(frame["text"])
    assert capped.equals(cap_sources(frame, {"imdb": 10}, [], seed=0))
    assert set(imdb["text"]) != set(cap_sources(frame, {"imdb": 10}, [], seed=1).query(f"{SOURCE} == 'imdb'")["text"])
    assert cap_sources(frame, {"imdb": 1000}, [], seed=0).equals(frame)  # a cap above the rows keeps them all


def test_prepare_caps_a_source_before_splitting(reviews_frame, tiny_model_dir):
    cfg = prepare_cfg(tiny_model_dir, sources=["imdb", "rotten_tomatoes"], source_rows={"imdb": 20})
    rows, _, _, _ = make_splits(canonical(reviews_frame, cfg, cfg.prepare.sources), cfg)
    per_source = rows[SOURCE].value_counts().to_dict()
    assert per_source == {"rotten_tomatoes": 400, "imdb": 20}
    imdb = rows[rows[SOURCE] == "imdb"]
    assert set(imdb["split"]) == {"train", "dev", "test"}  # split on its own, like any source


def test_rt_split_is_unchanged_when_a_capped_second_source_is_added(reviews_frame, tiny_model_dir):
    alone = prepare_cfg(tiny_model_dir, sources=["rotten_tomatoes"])
    both = prepare_cfg(tiny_model_dir, sources=["rotten_tomatoes", "imdb"], source_rows={"imdb": 30})
    rt_alone, _, _, _ = make_splits(canonical(reviews_frame, alone, alone.prepare.sources), alone)
    rows, _, _, dropped = make_splits(canonical(reviews_frame, both, both.prepare.sources), both)
    assert split_of(rows[rows[SOURCE] == "rotten_tomatoes"]) == split_of(rt_alone)
    assert len(split_of(rt_alone)) == 400 and dropped["rows_moved_to_a_group_in_another_source"] == 0


@pytest.mark.heavy
def test_split_keeps_near_duplicates_across_sources_in_one_split(reviews_frame, tiny_model_dir):
    cfg = prepare_cfg(tiny_model_dir, sources=[])
    frame = canonical(reviews_frame, cfg, sources=())
    rt = frame[frame[SOURCE] == "rotten_tomatoes"]
    long_enough = rt[rt["text"].str.split().str.len() >= 20].head(40)
    # The same reviews, one word longer, from a third source: near duplicates whose groups span sources.
    quoted = long_enough.assign(text=long_enough["text"] + " indeed", **{SOURCE: "quotes"})
    rows, keys, pairs, dropped = make_splits(pd.concat([frame, quoted], ignore_index=True), cfg)
    where = split_of(rows)
    assert all(where[a] == where[b] for a, b in zip(long_enough["text"], quoted["text"]))
    report = split_contract(rows, keys, pairs, cfg, REPO, tokenizer_dir=None)
    assert report["success"], [c for c in report["checks"] if not c["success"]]
    # "quotes" sorts before "rotten_tomatoes": its rows' splits lead, and RT rows that differed moved to them.
    quotes_alone, _, _, _ = make_splits(quoted.reset_index(drop=True), cfg)
    assert {b: where[b] for b in quoted["text"]} == split_of(quotes_alone)
    assert 0 < dropped["rows_moved_to_a_group_in_another_source"] == sum(
        where[a] != split_of(make_splits(frame, cfg)[0])[a] for a in long_enough["text"])


def test_split_drops_a_text_whose_sources_disagree_on_its_label(reviews_frame, tiny_model_dir):
    cfg = prepare_cfg(tiny_model_dir, sources=[])
    frame = canonical(reviews_frame, cfg, sources=())
    flipped = frame.head(3).assign(label=lambda f: 1 - f["label"], **{SOURCE: "quotes"})
    rows, _, _, dropped = make_splits(pd.concat([frame, flipped], ignore_index=True), cfg)
    assert not set(flipped["text"]) & set(rows.loc[rows["split"] != "", "text"])
    assert dropped["conflicting_label_rows"] == 6


@pytest.mark.parametrize("source_rows,sources,message", [
    ({"netflix": 5}, [], r"prepare.source_rows names sources absent from the data: \['netflix'\]"),
    ({"imdb": 5}, ["rotten_tomatoes"], r"prepare.source_rows names \['imdb'\], not in prepare.sources"),
])
def test_source_rows_naming_a_source_not_kept_is_refused(reviews_frame, tiny_model_dir, source_rows, sources, message):
    cfg = prepare_cfg(tiny_model_dir, sources=sources, source_rows=source_rows)
    with pytest.raises(PrepareError, match=message):
        make_splits(canonical(reviews_frame, cfg, sources), cfg)


def test_source_rows_needs_the_source_column(reviews_frame, tiny_model_dir):
    cfg = prepare_cfg(tiny_model_dir, sources=[], source_rows={"imdb": 5})
    data = cfg.data.model_copy(update={"source_column": None})
    with pytest.raises(PrepareError, match="prepare.source_rows caps rows per data.source_column"):
        make_splits(to_canonical(reviews_frame, data, []), cfg)


def test_source_rows_must_be_positive(tiny_model_dir):
    from tasks.core.config import ConfigError

    with pytest.raises(ConfigError, match="prepare.source_rows.imdb"):
        prepare_cfg(tiny_model_dir, source_rows={"imdb": 0})
