"""The monitor's reference: a seeded sample of the training split, scored by the served model one text at a time
as the prediction log counts it, cached per version; and the version prod holds, read through the registry and DVC."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import parse_config
from tasks.core.paths import ArtifactPaths
from tasks.monitoring import reference as ref
from tasks.monitoring.drift import vocabulary_of
from tasks.monitoring.performance import read_gate_figures
from tasks.serving.scoring import load_served
from tests.conftest import build_released_project, export_served_folder, keyword_reviews, run, tiny_params

MAX_LENGTH = 12  # tokens: short, so most keyword reviews overflow the window (tokens are counted untruncated)


@pytest.fixture(scope="module")
def cfg(tiny_model_dir):
    params = tiny_params(tiny_model_dir)
    params["monitor"]["reference_rows"] = 100
    params["serve"]["threads"] = 1
    return parse_config(params)


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory, tiny_model_dir):
    """The tiny random BERT exported as a served folder (model.onnx, tokenizer, serving.json), MAX_LENGTH tokens."""
    return export_served_folder(tmp_path_factory.mktemp("served"), tiny_model_dir, MAX_LENGTH)


@pytest.fixture(scope="module")
def train_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("prepare") / "train.parquet"
    keyword_reviews(300, seed=3).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def reference(served_folder, train_parquet, cfg):
    return ref.reference_from_folder(served_folder, train_parquet, cfg)


def test_reference_from_folder_samples_reference_rows_of_the_training_split(reference, train_parquet):
    train = pd.read_parquet(train_parquet)
    assert len(reference.texts) == len(reference.labels) == len(reference.tokens) == len(reference.confidences) == 100
    assert set(reference.texts) <= set(train["text"])
    truth = dict(zip(train["text"], train["label"]))
    assert reference.labels == [["negative", "positive"][truth[t]] for t in reference.texts], "labels are named"
    assert reference.vocabulary == vocabulary_of(train["text"]), "the vocabulary is the whole split's"
    assert reference.version.startswith("sha256:") and reference.gate_figures is None


def test_reference_counts_tokens_and_scores_as_the_prediction_log_does(reference, served_folder):
    served = load_served(served_folder, "tunegate", None, threads=1)
    logged = served.score(reference.texts, 1)  # what the service records for each text sent alone
    assert list(reference.tokens) == [s.tokens for s in logged]
    assert reference.tokens.max() > MAX_LENGTH, "lengths are counted untruncated"
    assert np.allclose(reference.confidences, [max(s.probabilities) for s in logged], atol=1e-6)
    predicted = [s.label for s in logged]
    assert np.allclose(reference.predicted_shares, [predicted.count(n) / 100 for n in ("negative", "positive")])
    assert reference.label_names == ["negative", "positive"] and reference.unknown_rate == 0.0


def test_reference_sample_is_seeded(served_folder, train_parquet, cfg):
    frame = pd.read_parquet(train_parquet)
    assert ref.sample_rows(frame, 100, 7).equals(ref.sample_rows(frame, 100, 7))
    assert not ref.sample_rows(frame, 100, 7).equals(ref.sample_rows(frame, 100, 8))
    assert len(ref.sample_rows(frame, 1000, 7)) == len(frame), "a small split is taken whole"


def test_reference_cache_round_trips_and_is_ignored_when_its_inputs_changed(reference, cfg, tmp_path):
    paths = ArtifactPaths(tmp_path)
    json_path, npz_path = ref.cache_paths(paths, "v0.1.0")
    assert (json_path.name, npz_path.name) == ("reference-v0.1.0.json", "reference-v0.1.0.npz")
    key = ref.cache_key("v0.1.0", "a" * 40, "b" * 64, cfg)
    ref.save_reference(reference, key, json_path, npz_path)
    loaded = ref.load_cached(key, json_path, npz_path)
    assert loaded is not None and loaded.texts == reference.texts and loaded.vocabulary == reference.vocabulary
    assert np.array_equal(loaded.tokens, reference.tokens) and np.allclose(loaded.confidences, reference.confidences)
    assert np.allclose(loaded.predicted_shares, reference.predicted_shares)
    assert ref.load_cached({**key, "rows": 200}, json_path, npz_path) is None, "monitor.reference_rows changed"
    npz_path.write_bytes(b"truncated")
    assert ref.load_cached(key, json_path, npz_path) is None, "a damaged cache is recomputed, not trusted"


def test_read_gate_figures_takes_the_gates_test_accuracy_and_macro_f1(cfg, tmp_path):
    span = {"value": 0.8, "low": 0.77, "high": 0.83}
    path = tmp_path / "decision.json"
    path.write_text(json.dumps({"decision": "PROMOTE", "metrics": {"rows": 852, "accuracy": span, "macro_f1": span}}))
    figures = read_gate_figures(path, cfg.gate)
    assert figures["accuracy"] == span and figures["rows"] == 852
    assert figures["bootstrap_samples"] == cfg.gate.bootstrap_samples
    assert read_gate_figures(tmp_path / "absent.json", cfg.gate) is None


def git(root, *args: str) -> str:
    return run(["git", *args], root).stdout.strip()


@pytest.fixture
def released_project(tmp_path, served_folder, train_parquet, tiny_model_dir):
    """A git + DVC project with a committed gate release, training split and decision (nothing registered yet)."""
    params = tiny_params(tiny_model_dir)
    params["monitor"]["reference_rows"] = 100
    params["serve"]["threads"] = 1
    return build_released_project(tmp_path / "project", served_folder, train_parquet, params)


@pytest.mark.e2e
def test_load_reference_reads_prods_training_split_through_dvc_and_caches_it(released_project, train_parquet,
                                                                               monkeypatch):
    from tasks.core.config import load_config
    from tasks.registry import tags

    root = released_project
    cfg = load_config(root / "params.yaml")
    with pytest.raises(ref.ReferenceUnavailable, match="tunegate promote"):
        ref.load_reference(root, cfg)
    tags.register(root, git(root, "rev-parse", "HEAD"), "v0.1.0", tags.tag_message("register v0.1.0", {}))
    tags.assign(root, "v0.1.0", tags.PROD, tags.tag_message("prod <- v0.1.0", {}))
    shutil.rmtree(root / "artifacts")  # the reference comes from DVC at prod's commit, not the workspace
    train = pd.read_parquet(train_parquet)

    loaded = ref.load_reference(root, cfg)
    assert loaded.version == "v0.1.0" and loaded.commit == git(root, "rev-parse", "HEAD")
    assert len(loaded.texts) == 100 and set(loaded.texts) <= set(train["text"])
    assert loaded.gate_figures["accuracy"]["value"] == 0.9, "the gate's figures, read at prod's commit"
    assert (root / ".tunegate" / "monitoring" / "reference-v0.1.0.json").is_file()

    def rescored(*args, **kwargs):
        raise AssertionError("the cached reference was scored again")

    monkeypatch.setattr(ref, "build_reference", rescored)
    again = ref.load_reference(root, cfg)
    assert again.texts == loaded.texts and np.array_equal(again.tokens, loaded.tokens)
