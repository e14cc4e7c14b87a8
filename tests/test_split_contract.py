"""Split contract: near duplicates found at scale, leakage and imbalance across splits refused, token lengths bounded."""

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import parse_config
from tasks.contracts.report import DataValidationError, evidence
from tasks.contracts.near_dup import NearDuplicateSettings, jaccard, near_duplicate_pairs, word_shingles
from tasks.core.paths import ArtifactPaths
from tasks.prepare import make_splits, prepare, to_canonical
from tasks.contracts.splits import split_contract
from tasks.validate import validate
from tests.conftest import REPO, tiny_params

SETTINGS = NearDuplicateSettings(jaccard=0.8, shingle_words=3, permutations=32, bands=8, seed=0)


def failing(report):
    return {f"{c['expectation']}:{c['column']}": c for c in report["checks"] if not c["success"]}


def test_near_duplicate_pairs_finds_edits_and_ignores_different_texts(reviews_frame):
    texts = list(dict.fromkeys(reviews_frame["text"].str.lower()))[:300]
    long = [t for t in texts if len(t.split()) >= 25][:20]
    edited = [t + " indeed" for t in long]  # Jaccard of word 3-grams well above 0.8
    pairs, similarity = near_duplicate_pairs(texts + edited, SETTINGS)
    found = {(int(a), int(b)) for a, b in pairs}
    expected = {(texts.index(t), len(texts) + i) for i, t in enumerate(long)}
    assert expected <= found
    assert found == expected, "only the planted pairs are that similar"
    assert np.all(similarity >= 0.8)


def test_shingle_hashes_give_exact_jaccard():
    shingles = word_shingles(["a b c d e", "a b c d f", "z"], 3)
    assert jaccard(shingles.of(0), shingles.of(1)) == pytest.approx(2 / 4)  # {abc, bcd} shared of 4
    assert len(shingles.of(2)) == 1 and not shingles.of(2) & shingles.of(0)


def presplit_cfg(tiny_model_dir, **prepare):
    raw = tiny_params(tiny_model_dir)
    raw["data"]["split_column"] = "split"
    raw["prepare"].update(prepare)
    return parse_config(raw)


def presplit(reviews_frame):
    """The real reviews slice, already split 80/10/10 per class, with a `split` column."""
    rt = reviews_frame[reviews_frame["source"] == "rotten_tomatoes"].copy()
    position = rt.groupby("label").cumcount()
    rt["split"] = np.select([position < 160, position < 180], ["train", "dev"], "test")
    return rt.reset_index(drop=True)


def contract_of(frame, cfg, tokenizer_dir=None):
    rows, keys, pairs, _ = make_splits(to_canonical(frame, cfg.data, cfg.prepare.sources), cfg)
    return rows, split_contract(rows, keys, pairs, cfg, REPO, tokenizer_dir)


def test_given_splits_are_kept_and_pass(tiny_model_dir, reviews_frame):
    cfg = presplit_cfg(tiny_model_dir)
    rows, report = contract_of(presplit(reviews_frame), cfg)
    assert report["success"], failing(report)
    assert rows["split"].value_counts().to_dict() == {"train": 320, "dev": 40, "test": 40}


def test_exact_leakage_across_given_splits_fails_with_the_rows(tiny_model_dir, reviews_frame):
    cfg = presplit_cfg(tiny_model_dir)
    frame = presplit(reviews_frame)
    leaked = frame[frame["split"] == "train"].head(3).assign(split="test", text=lambda f: f["text"].str.upper())
    _, report = contract_of(pd.concat([frame, leaked], ignore_index=True), cfg)
    check = failing(report)["expect_column_values_to_be_in_set:leak_exact"]
    assert check["unexpected_count"] == 6  # each leaked text once in train, once in test
    assert {row["split"] for row in check["sample_rows"]} == {"train", "test"}


def test_near_duplicate_leakage_fails_and_names_the_partner(tiny_model_dir, reviews_frame):
    cfg = presplit_cfg(tiny_model_dir)
    frame = presplit(reviews_frame)
    source = frame[(frame["split"] == "train") & (frame["text"].str.split().str.len() >= 25)].head(2)
    _, report = contract_of(pd.concat([frame, source.assign(split="dev", text=source["text"] + " indeed")],
                                      ignore_index=True), cfg)
    broken = failing(report)
    assert "expect_column_values_to_be_in_set:leak_exact" not in broken
    check = broken["expect_column_values_to_be_in_set:leak_near"]
    assert check["unexpected_count"] == 4
    assert any("Jaccard" in (row["near_partner"] or "") for row in check["sample_rows"])


def test_a_split_missing_a_class_or_off_balance_fails(tiny_model_dir, reviews_frame):
    cfg = presplit_cfg(tiny_model_dir)
    frame = presplit(reviews_frame)
    frame = frame[~((frame["split"] == "dev") & (frame["label"] == 0))]
    broken = failing(contract_of(frame, cfg)[1])
    rows = broken["expect_column_values_to_be_between:rows"]["sample_rows"]
    assert rows[0]["split"] == "dev" and rows[0]["class"] == "negative" and rows[0]["rows"] == 0
    assert "expect_column_values_to_be_between:share_delta" in broken


def test_presplit_folder_of_files_is_read_as_its_splits(tiny_model_dir, reviews_frame, tmp_path):
    from tasks.core.data import read_dataset

    frame = presplit(reviews_frame)
    folder = tmp_path / "data"
    folder.mkdir()
    for name, file in (("train", "train.csv"), ("dev", "validation.jsonl"), ("test", "test.parquet")):
        part = frame[frame["split"] == name].drop(columns="split")
        {"csv": part.to_csv, "jsonl": lambda p: part.to_json(p, orient="records", lines=True),
         "parquet": part.to_parquet}[file.split(".")[1]](folder / file, **({"index": False} if "csv" in file else {}))
    cfg = presplit_cfg(tiny_model_dir)
    table = read_dataset(folder, cfg.data)
    assert table["split"].value_counts().to_dict() == {"train": 320, "dev": 40, "test": 40}


def windows_cfg(tiny_model_dir, train_windows, **prepare):
    """presplit_cfg with train.long_text.train_windows set."""
    raw = tiny_params(tiny_model_dir)
    raw["data"]["split_column"] = "split"
    raw["prepare"].update(prepare)
    raw["train"]["long_text"]["train_windows"] = train_windows
    return parse_config(raw)


def token_lengths(report):
    return next(v for k, v in report["profile"].items() if k.startswith("Token lengths"))


def test_token_length_contract_bounds_the_share_training_truncates(tiny_model_dir, reviews_frame):
    cfg = windows_cfg(tiny_model_dir, train_windows=False, max_truncated_share=0.05)
    frame = presplit(reviews_frame)
    _, report = contract_of(frame, cfg, str(tiny_model_dir))
    check = failing(report)["expect_column_mean_to_be_between:truncated"]
    overall = token_lengths(report)[-1]
    assert overall["split"] == "all" and overall["truncated_share"] == pytest.approx(check["observed_value"])
    assert overall["long_share"] == overall["truncated_share"]  # every long text loses its tail in training
    assert overall["p50"] < cfg.train.max_length < overall["max"]
    assert report["long_text"]["truncated_rows"] == report["long_text"]["long_rows"] == overall["long_rows"] > 0
    said = evidence(check)  # what the terminal table and the error message show
    assert "(at most 0.05)" in said and "longer than train.max_length = 32 tokens" in said
    assert "set train.long_text.train_windows: true" in said
    assert "raise train.max_length (e.g. -S train.max_length=" in said


def test_token_length_contract_passes_long_texts_that_training_cuts_into_windows(tiny_model_dir, reviews_frame):
    cfg = windows_cfg(tiny_model_dir, train_windows=True, max_truncated_share=0.05)
    rows, report = contract_of(presplit(reviews_frame), cfg, str(tiny_model_dir))
    check = next(c for c in report["checks"] if c["column"] == "truncated")
    assert check["success"] and check["observed_value"] == 0
    # Long rows are still counted (read at inference by the long_text rule), per split and overall.
    profile = token_lengths(report)
    off = windows_cfg(tiny_model_dir, train_windows=False, max_truncated_share=0.05)
    assert profile == [{**r, "truncated_share": 0.0} for r in token_lengths(contract_of(presplit(reviews_frame), off,
                                                                                       str(tiny_model_dir))[1])]
    assert report["long_text"] == {"window_tokens": 32, "train_windows": True, "long_rows": profile[-1]["long_rows"],
                                   "long_share": pytest.approx(profile[-1]["long_rows"] / len(rows)),
                                   "truncated_rows": 0}
    assert 0 < profile[-1]["long_share"] < 1 and sum(r["long_rows"] for r in profile[:-1]) == profile[-1]["long_rows"]


def test_failed_prepare_contract_keeps_the_last_good_splits(staged_pipeline, tiny_model_dir):
    _, paths = staged_pipeline
    strict = tiny_params(tiny_model_dir)
    strict["prepare"]["min_rows_per_class"] = 10_000
    before = {p: p.read_bytes() for p in paths.stage_dir("prepare").rglob("*") if p.is_file()}
    with pytest.raises(DataValidationError, match=r"enough rows per class \[rows\]"):
        prepare.fn(parse_config(strict), paths)
    after = {p: p.read_bytes() for p in paths.stage_dir("prepare").rglob("*") if p.is_file()}
    assert after == before
    assert "FAIL" in (paths.failed_dir("prepare") / "report.md").read_text()


def test_failed_validation_keeps_the_last_good_report(tmp_path, tiny_model_dir, reviews_frame):
    (tmp_path / "data").mkdir()
    (tmp_path / "expectations").symlink_to(REPO / "expectations")
    cfg, paths = parse_config(tiny_params(tiny_model_dir)), ArtifactPaths(tmp_path)
    data = tmp_path / "data" / "movie_reviews.csv"
    reviews_frame.to_csv(data, index=False)
    validate.fn(cfg, paths)
    good = paths.validation_report.read_bytes()
    reviews_frame.assign(label=1).to_csv(data, index=False)
    with pytest.raises(DataValidationError):
        validate.fn(cfg, paths)
    assert paths.validation_report.read_bytes() == good
    assert '"success": false' in (paths.failed_dir("validate") / "report.json").read_text()
