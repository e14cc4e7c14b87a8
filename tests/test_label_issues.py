"""Label issues: the confident-learning queue finds planted flips (on TF-IDF or on sentence embeddings), is
deterministic, skips thin data, runs the configured features, and its contract check stops prepare only at severity
error."""

import numpy as np
import pandas as pd
import pytest

import tasks.prepare
from tasks.contracts.label_issues import (QUEUE_COLUMNS, class_thresholds, detect, find_label_issues,
                                          out_of_sample_probabilities, sentence_embeddings, skip_reason)
from tasks.contracts.report import DataValidationError
from tasks.core.config import ConfigError, parse_config
from tasks.core.paths import ArtifactPaths
from tasks.prepare import label_noise, prepare
from tasks.validate import validate
from tests.conftest import REPO, tiny_params

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet".split(),
         "kilo lima mike november oscar papa quebec romeo sierra tango".split())


def two_vocabularies(rows: int, flip_share: float, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts of 6 words from their class's own vocabulary (separable), then `flip_share` of the labels flipped.
    Returns texts, the flipped labels and the flipped rows."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) % 2
    texts = [" ".join(rng.choice(WORDS[label], size=6)) for label in truth]
    flipped = np.sort(rng.choice(rows, size=int(rows * flip_share), replace=False))
    labels = truth.copy()
    labels[flipped] = 1 - labels[flipped]
    return texts, labels, flipped


def test_queue_top_k_finds_the_flipped_rows_of_separable_data():
    texts, labels, flipped = two_vocabularies(400, 0.05)
    issues = detect(texts, labels, n_classes=2, folds=5, seed=0)
    top = issues.rows[:len(flipped)]
    found = np.isin(top, flipped).sum()
    assert found / len(top) > 0.8 and found / len(flipped) > 0.8
    assert (issues.suggested[:len(flipped)] != labels[top]).all(), "a suggestion is another class"
    assert (np.diff(issues.scores) >= 0).all(), "ranked by self-confidence, lowest first"
    assert issues.noisy_share == pytest.approx(len(issues.rows) / 400)


def test_out_of_sample_probabilities_are_byte_identical_for_a_seed_and_differ_for_another():
    texts, labels, _ = two_vocabularies(200, 0.1)
    first = out_of_sample_probabilities(texts, labels, 2, 5, seed=3)
    assert first.shape == (200, 2) and np.allclose(first.sum(axis=1), 1.0)
    assert first.tobytes() == out_of_sample_probabilities(texts, labels, 2, 5, seed=3).tobytes()
    assert first.tobytes() != out_of_sample_probabilities(texts, labels, 2, 5, seed=4).tobytes()


def test_confident_learning_flags_only_rows_where_another_class_clears_its_threshold():
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 1, 0])
    # t_0 = mean(0.9, 0.7, 0.45) = 0.6833; t_1 = mean(0.8, 0.4, 0.9) = 0.7
    assert class_thresholds(probabilities, labels) == pytest.approx([0.68333333, 0.7])
    issues = find_label_issues(probabilities, labels)
    # Row 3 (labelled 1) reaches neither threshold: 0.6 < t_0; row 5 (labelled 0): 0.55 < t_1. Nothing flagged...
    assert issues.rows.tolist() == []
    labels = np.array([0, 1, 1, 1, 1, 0])  # ...until row 1 (p_0 = 0.7 >= t_0 = 0.675) is labelled 1
    issues = find_label_issues(probabilities, labels)
    assert issues.rows.tolist() == [1] and issues.suggested.tolist() == [0]
    assert issues.scores.tolist() == [0.3] and issues.noisy_share == pytest.approx(1 / 6)


def test_too_little_data_is_a_reason_to_skip():
    assert "fewer than 50" in skip_reason(np.array([0, 1] * 20), 2, 5)
    assert "smallest class has 9 rows" in skip_reason(np.array([0] * 100 + [1] * 9), 2, 5)
    assert skip_reason(np.array([0] * 100 + [1] * 10), 2, 5) is None


def _label_noise_cfg(tiny_model_dir, **settings):
    params = tiny_params(tiny_model_dir)
    params["prepare"]["label_issues"].update(settings)
    return parse_config(params)


def test_a_thin_train_split_records_the_check_as_skipped_with_its_reason(tiny_model_dir):
    texts, labels, _ = two_vocabularies(40, 0.0)
    frame = pd.DataFrame({"text": texts, "label": labels, "split": "train"})
    check, queue = label_noise(frame, _label_noise_cfg(tiny_model_dir), str(tiny_model_dir))
    assert check["skipped"] and check["severity"] == "warning" and "fewer than 50" in check["error"]
    assert list(queue.columns) == list(QUEUE_COLUMNS) and queue.empty
    check, _ = label_noise(frame, _label_noise_cfg(tiny_model_dir, enabled=False), str(tiny_model_dir))
    assert check is None


def test_label_noise_reads_only_the_train_rows(tiny_model_dir):
    texts, labels, _ = two_vocabularies(300, 0.05)
    train = pd.DataFrame({"text": texts, "label": labels, "split": "train"})
    # dev/test rows with every label wrong: read, they would change the queue
    other = pd.DataFrame({"text": texts[:100], "label": 1 - labels[:100], "split": ["dev", "test"] * 50})
    cfg = _label_noise_cfg(tiny_model_dir)
    alone = label_noise(train, cfg, str(tiny_model_dir))
    mixed = label_noise(pd.concat([other, train], ignore_index=True), cfg, str(tiny_model_dir))
    assert alone[0]["observed_value"] == mixed[0]["observed_value"]
    pd.testing.assert_frame_equal(alone[1], mixed[1])


def test_sentence_embeddings_are_unit_length_deterministic_masked_and_truncated(tiny_model_dir):
    texts = ["alpha bravo charlie", "kilo lima", "alpha bravo charlie delta echo foxtrot golf hotel india juliet"]
    embeddings = sentence_embeddings(texts, str(tiny_model_dir))
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert embeddings.tobytes() == sentence_embeddings(texts, str(tiny_model_dir)).tobytes()
    # Padding is masked out of the mean: a text padded beside a longer one embeds as it does alone.
    alone = sentence_embeddings(texts[:1], str(tiny_model_dir))
    assert np.allclose(embeddings[0], alone[0], atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[2], atol=1e-3)
    # Past max_tokens ([CLS] + 3 words + [SEP]) nothing is read: texts sharing their head embed alike.
    cut = sentence_embeddings(texts[::2], str(tiny_model_dir), max_tokens=5)
    assert np.allclose(cut[0], cut[1], atol=1e-5)


def test_embedding_queue_finds_the_flipped_rows_and_needs_the_embeddings(tiny_model_dir):
    texts, labels, flipped = two_vocabularies(400, 0.05)
    embeddings = sentence_embeddings(texts, str(tiny_model_dir))

    def precision_at_k(features):
        top = detect(texts, labels, n_classes=2, folds=5, seed=0, embeddings=features).rows[:len(flipped)]
        return np.isin(top, flipped).sum() / len(flipped)

    # A random 2-layer encoder still separates two disjoint vocabularies; the same rows with their embeddings
    # shuffled among them carry no signal, so a detector that ignored its features could not tell the two apart.
    assert precision_at_k(embeddings) >= 0.6
    assert precision_at_k(embeddings[np.random.default_rng(0).permutation(len(texts))]) <= 0.3


def test_label_noise_embeds_the_train_rows_with_the_base_model_only_when_configured(tiny_model_dir, monkeypatch):
    texts, labels, _ = two_vocabularies(300, 0.05)
    train = pd.DataFrame({"text": texts, "label": labels, "split": "train"})
    calls = []

    def recorded(rows, model_dir):
        calls.append((list(rows), model_dir))
        return sentence_embeddings(rows, model_dir)

    monkeypatch.setattr(tasks.prepare, "sentence_embeddings", recorded)
    tfidf = label_noise(train, _label_noise_cfg(tiny_model_dir, features="tfidf"), str(tiny_model_dir))
    assert calls == []
    cfg = _label_noise_cfg(tiny_model_dir, features="embeddings")
    embedded = label_noise(train, cfg, str(tiny_model_dir))
    assert calls == [(texts, str(tiny_model_dir))]
    expected = detect(texts, labels, 2, cfg.prepare.label_issues.folds, cfg.seed,
                      sentence_embeddings(texts, str(tiny_model_dir)))
    assert embedded[0]["kwargs"]["flagged_rows"] == len(expected.rows)
    assert embedded[1]["text"].tolist() == [texts[row] for row in expected.rows]
    assert embedded[1]["text"].tolist() != tfidf[1]["text"].tolist()


def test_an_unknown_label_issue_feature_set_is_refused():
    params = tiny_params(REPO / "no-model-needed")
    params["prepare"]["label_issues"]["features"] = "bert"
    with pytest.raises(ConfigError, match=r"prepare\.label_issues\.features"):
        parse_config(params)


def _prepared_project(tmp_path, params, frame):
    (tmp_path / "data").mkdir()
    (tmp_path / "expectations").symlink_to(REPO / "expectations")
    frame.to_csv(tmp_path / "data" / "movie_reviews.csv", index=False)
    cfg, paths = parse_config(params), ArtifactPaths(tmp_path)
    validate.fn(cfg, paths)
    return cfg, paths


@pytest.mark.heavy
def test_severity_warning_passes_prepare_with_the_warning_and_error_stops_it(tmp_path, tiny_model_dir,
                                                                            reviews_frame):
    params = tiny_params(tiny_model_dir)
    params["prepare"]["label_issues"].update(max_noisy_share=0.0, severity="warning")
    cfg, paths = _prepared_project(tmp_path, params, reviews_frame)
    result = prepare.fn(cfg, paths)
    report = (paths.stage_dir("prepare") / "contract.json").read_text()
    assert result.contract_warnings >= 1 and "estimated label noise (train)" in report
    params["prepare"]["label_issues"]["severity"] = "error"
    with pytest.raises(DataValidationError, match=r"estimated label noise \(train\)"):
        prepare.fn(parse_config(params), paths)


@pytest.mark.heavy
def test_prepare_writes_the_ranked_queue_with_label_names(tmp_path, tiny_model_dir, reviews_frame):
    params = tiny_params(tiny_model_dir)
    cfg, paths = _prepared_project(tmp_path, params, reviews_frame)
    prepare.fn(cfg, paths)
    out = paths.stage_dir("prepare")
    queue = pd.read_csv(out / "label_issues.csv")
    assert list(queue.columns) == list(QUEUE_COLUMNS) and len(queue) > 0
    names = set(cfg.data.label_names)
    assert set(queue["given_label"]) <= names and set(queue["suggested_label"]) <= names
    assert (queue["given_label"] != queue["suggested_label"]).all()
    assert queue["rank"].tolist() == list(range(1, len(queue) + 1)) and queue["score"].is_monotonic_increasing
    assert set(queue["text"]) <= set(pd.read_parquet(out / "train.parquet")["text"]), "train rows only"
    first = (out / "label_issues.csv").read_bytes()
    prepare.fn(cfg, paths)
    assert (out / "label_issues.csv").read_bytes() == first


def prepared_project(root, tiny_model_dir, rows: int, flip_share: float):
    """A project whose params.yaml names the tiny model and whose prepare output is two-vocabulary data, `flip_share`
    of the train labels flipped; returns the flipped train rows."""
    from ruamel.yaml import YAML

    root.mkdir()
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(tiny_params(tiny_model_dir), handle)
    texts, labels, flipped = two_vocabularies(rows + 40, 0.0)
    flipped = np.sort(np.random.default_rng(1).choice(rows, size=int(rows * flip_share), replace=False))
    noisy = np.asarray(labels[:rows]).copy()
    noisy[flipped] = 1 - noisy[flipped]
    split = ArtifactPaths(root).split("train").parent
    split.mkdir(parents=True)
    pd.DataFrame({"text": texts[:rows], "label": noisy}).to_parquet(split / "train.parquet")
    pd.DataFrame({"text": texts[rows:], "label": labels[rows:]}).to_parquet(split / "dev.parquet")
    return flipped


@pytest.mark.e2e
def test_cli_label_issues_writes_the_cross_fitted_queue_and_prints_its_top_in_80_columns(tmp_path, tiny_model_dir,
                                                                                        capsys):
    from flows.cli import main

    root = tmp_path / "project"
    flipped = prepared_project(root, tiny_model_dir, rows=200, flip_share=0.1)
    assert main(["label-issues", "--project", str(root)]) == 0
    out = capsys.readouterr().out
    queue = pd.read_csv(root / "artifacts" / "label_issues" / "finetuned+tfidf.csv")
    assert list(queue.columns) == list(QUEUE_COLUMNS) and list(queue["rank"]) == list(range(1, len(queue) + 1))
    assert queue["score"].is_monotonic_increasing and (queue["given_label"] != queue["suggested_label"]).all()
    # TF-IDF separates the two vocabularies; the tiny random model adds noise but not enough to hide the flips.
    train = pd.read_parquet(ArtifactPaths(root).split("train"))
    top = queue["text"].head(len(flipped))
    found = top.isin(train["text"].iloc[flipped]).mean()
    assert found >= 0.6, queue.head(len(flipped))
    assert f"of 200 train rows flagged" in out and "finetuned+tfidf.csv" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out


def test_cli_label_issues_needs_the_prepared_split(tmp_path, tiny_model_dir, capsys):
    from flows.cli import main

    root = tmp_path / "project"
    prepared_project(root, tiny_model_dir, rows=100, flip_share=0.0)
    (ArtifactPaths(root).split("dev")).unlink()
    assert main(["label-issues", "--project", str(root)]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert "dev.parquet is missing" in err and "prepare" in err
    assert not (root / "artifacts" / "label_issues").exists()
