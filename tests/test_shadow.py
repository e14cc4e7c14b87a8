"""Shadow evaluation by replay (tasks/judging/shadow.py, `tunegate shadow`): logged texts scored again by a
candidate, one text per call, and set beside what prod answered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from ruamel.yaml import YAML

from flows.cli import main
from flows.cli import shadow as shadow_commands
from tasks.judging.estimate import estimated_difference, expected_accuracy
from tasks.judging.shadow import (LABEL_SLICE, LENGTH_SLICE, NO_TEXT, OTHER_VERSION, ShadowError, evenly_spaced,
                                     replayable, score_one_at_a_time, shadow_replay, shadow_report, slice_masks,
                                     wilson_interval)
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.serving.predlog import PredictionLog, make_record
from tasks.serving.scoring import load_served
from tests.conftest import keyword_reviews, readable_at_80, tiny_params

EDGES = [16, 32, 64, 256]
CONFIDENCE = 0.95
# Short and long texts, so the replay sees more than one length bucket (the tiny folders read 16 tokens a window).
TEXTS = [*keyword_reviews(24, seed=3)["text"], *(" ".join(["a long and winding review of the film"] * k)
                                                  for k in (3, 5, 9))]


def logged(folder: Path, texts: list[str], *, log_texts: bool = True, version: str | None = None,
           at: float = 1_796_000_000.0) -> list[dict]:
    """Records as the service logs them: each text scored alone by the served folder."""
    served = load_served(folder, "tunegate", version, threads=1)
    records = [make_record(at + i, served.info.version, text, served.score([text], 1)[0], served.info.labels,
                           log_texts) for i, text in enumerate(texts)]
    served.close()
    return records


@pytest.fixture(scope="module")
def prod_records(served_folders) -> list[dict]:
    return logged(served_folders[0], TEXTS, version="v1.0.0")


def replay_with(folder: Path, records: list[dict], prod_version: str | None = None,
                latency_rows: int | None = None) -> dict:
    return shadow_replay(records, OnnxClassifier(folder, threads=1), prod_version=prod_version, length_edges=EDGES,
                         confidence=CONFIDENCE, latency_rows=latency_rows)


# ---------------------------------------------------------------------------------------------------------------------
# The core

def test_replay_scores_each_text_as_the_service_scores_it_alone(served_folders):
    classifier = OnnxClassifier(served_folders[1], threads=1)
    served = load_served(served_folders[1], "tunegate", None, threads=1)
    probs = score_one_at_a_time(classifier, TEXTS)
    expected = np.asarray([served.score([text], 1)[0].probabilities for text in TEXTS])
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_replaying_prod_with_itself_disagrees_nowhere_and_estimates_no_difference(served_folders, prod_records):
    report = replay_with(served_folders[0], prod_records)
    assert report["prod_version"] == "v1.0.0"
    assert report["rows"] == {"read": len(TEXTS), "replayed": len(TEXTS), "skipped": {OTHER_VERSION: 0, NO_TEXT: 0}}
    assert report["disagreement"]["count"] == 0 and report["disagreement"]["low"] == 0.0
    assert report["estimated_difference"]["value"] == 0.0 and report["estimated_difference"]["disagreements"] == 0
    prod, candidate = report["estimated_accuracy"]["prod"], report["estimated_accuracy"]["candidate"]
    assert candidate["value"] == pytest.approx(prod["value"], abs=1e-6)


def test_replay_reports_disagreement_estimates_and_latency_against_an_independent_scoring(served_folders,
                                                                                      prod_records):
    report = replay_with(served_folders[1], prod_records, latency_rows=5)
    served = load_served(served_folders[1], "tunegate", None, threads=1)
    candidate = np.asarray([served.score([r["text"]], 1)[0].probabilities for r in prod_records])
    labels = served.info.labels
    prod = np.asarray([[r["probabilities"][name] for name in labels] for r in prod_records])
    answered = np.asarray([r["label"] for r in prod_records])
    differs = np.asarray([labels[i] for i in candidate.argmax(axis=1)]) != answered
    assert differs.any(), "the two random heads must answer some texts otherwise for this test to mean anything"
    assert report["disagreement"]["count"] == int(differs.sum())
    assert report["disagreement"]["value"] == pytest.approx(differs.mean())
    assert report["disagreement"]["low"] <= report["disagreement"]["value"] <= report["disagreement"]["high"]
    assert report["estimated_accuracy"]["prod"] == pytest.approx(expected_accuracy(prod.max(axis=1), CONFIDENCE))
    assert report["estimated_accuracy"]["candidate"]["value"] == pytest.approx(candidate.max(axis=1).mean(), abs=1e-6)
    expected = estimated_difference(prod, candidate, CONFIDENCE)
    assert report["estimated_difference"]["value"] == pytest.approx(expected["value"], abs=1e-6)
    assert report["estimated_difference"]["disagreements"] == int(differs.sum())
    latency = report["latency_ms_b1"]
    assert latency["rows"] == 5 and 0 < latency["p50"] <= latency["p95"]


def test_slices_partition_the_replayed_rows_by_length_and_by_prods_label(served_folders, prod_records):
    report = replay_with(served_folders[1], prod_records)
    for column in (LENGTH_SLICE, LABEL_SLICE):
        slices = [s for s in report["slices"] if s["column"] == column]
        assert sum(s["rows"] for s in slices) == len(prod_records)
        assert sum(s["disagreement"]["count"] for s in slices) == report["disagreement"]["count"]
    lengths = [s["value"] for s in report["slices"] if s["column"] == LENGTH_SLICE]
    assert len(lengths) >= 2 and lengths == sorted(lengths, key=["1-16", "17-32", "33-64", "65-256", ">256"].index)
    answered = {s["value"]: s["rows"] for s in report["slices"] if s["column"] == LABEL_SLICE}
    assert answered == {label: sum(r["label"] == label for r in prod_records) for label in answered}


def test_slice_masks_use_the_gates_buckets_and_leave_out_empty_slices():
    masks = slice_masks(np.asarray([5, 16, 17, 300]), np.asarray(["b", "b", "b", "b"], dtype=object), EDGES,
                        ["a", "b"])
    assert [(column, value, rows.tolist()) for column, value, rows in masks] == [
        (LENGTH_SLICE, "1-16", [True, True, False, False]), (LENGTH_SLICE, "17-32", [False, False, True, False]),
        (LENGTH_SLICE, ">256", [False, False, False, True]), (LABEL_SLICE, "b", [True] * 4)]


def test_records_of_another_version_or_without_text_are_skipped_and_counted(served_folders, prod_records):
    untexted = logged(served_folders[0], TEXTS[:3], log_texts=False, version="v1.0.0")
    other = logged(served_folders[1], TEXTS[:4], version="v0.9.0")
    records = sorted([*prod_records, *untexted, *other], key=lambda r: r["time"])
    kept, version, skipped = replayable(records, "v1.0.0")
    assert version == "v1.0.0" and len(kept) == len(prod_records)
    assert skipped == {OTHER_VERSION: 4, NO_TEXT: 3}
    with pytest.raises(ShadowError, match=r"2 versions \(v1.0.0: 27, v0.9.0: 4\)"):
        replayable(records, None)


@pytest.mark.parametrize("records, prod_version, message", [
    ([], None, "no records in the window"),
    ([{"model_version": "v1", "label": "a", "probabilities": {"a": 1.0}}] * 2, None, "serve.log_texts: true"),
    ([{"model_version": "v1", "text": "t", "label": "a", "probabilities": {"a": 1.0}}], "v2",
     "no record in the window holds a text answered by v2"),
])
def test_nothing_to_replay_is_an_error_saying_why(records, prod_version, message):
    with pytest.raises(ShadowError, match=message):
        replayable(records, prod_version)


def test_a_candidate_of_another_label_set_is_refused(served_folders, prod_records):
    renamed = [{**r, "probabilities": {"bad": p for p in r["probabilities"].values()} | {"good": 0.5}}
               for r in prod_records]
    with pytest.raises(ShadowError, match="labels"):
        replay_with(served_folders[1], renamed)


def test_shadow_report_estimates_candidate_minus_prod():
    prod = np.asarray([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    candidate = np.asarray([[0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    report = shadow_report(prod, ["a", "a", "b"], candidate, np.asarray([4, 20, 40]), ["a", "b"],
                           np.asarray([1.0, 2.0, 3.0]), length_edges=EDGES, confidence=CONFIDENCE)
    assert report["disagreement"]["count"] == 1
    # the one disagreement: q = (0.45, 0.55), candidate's b gains 0.55, prod's a loses 0.45: +0.10 / 3 rows
    assert report["estimated_difference"]["value"] == pytest.approx(0.1 / 3)
    assert report["latency_ms_b1"] == {"rows": 3, "p50": 2.0, "p95": pytest.approx(2.9)}


def test_wilson_interval_is_sound_at_zero_and_matches_the_textbook_bounds():
    assert wilson_interval(0, 10, 0.95) == {"value": 0.0, "low": 0.0, "high": pytest.approx(0.2775, abs=1e-4)}
    assert wilson_interval(10, 10, 0.95)["high"] == 1.0
    figure = wilson_interval(7, 50, 0.95)
    assert figure["low"] == pytest.approx(0.0695, abs=1e-4) and figure["high"] == pytest.approx(0.2619, abs=1e-4)


def test_evenly_spaced_spans_the_whole_list():
    texts = [str(i) for i in range(10)]
    assert evenly_spaced(texts, 3) == ["0", "4", "9"] or evenly_spaced(texts, 3) == ["0", "5", "9"]
    assert evenly_spaced(texts, None) == texts and evenly_spaced(texts, 50) == texts


# ---------------------------------------------------------------------------------------------------------------------
# The command

@pytest.fixture
def project(tmp_path, tiny_model_dir) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(tiny_params(tiny_model_dir), handle)
    return root


def write_log(folder: Path, served_folder: Path, texts: list[str], log_texts: bool = True) -> None:
    """Texts scored by the served folder and logged by the service's own writer."""
    served = load_served(served_folder, "tunegate", None, threads=1)
    log = PredictionLog(folder, log_texts=log_texts, file_mb=1, max_mb=8, flush_seconds=0.05)
    log.start()
    for text in texts:
        log.append(served.info.version, [text], served.score([text], 1), served.info.labels)
    log.close()
    served.close()


def test_shadow_command_replays_a_logged_window_and_writes_its_json(project, served_folders, capsys):
    log = project / "log"
    write_log(log, served_folders[0], TEXTS)
    out = project / "reports" / "shadow.json"
    code = main(["shadow", "--project", str(project), "--log", str(log), "--candidate", str(served_folders[1]),
                 "--window-minutes", "30", "--json", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["rows"]["replayed"] == len(TEXTS) and printed["prod_version"].startswith("sha256:")
    assert printed["candidate"]["folder"] == str(served_folders[1])
    assert printed["candidate"]["version"].startswith("sha256:") and printed["candidate"]["version"] != \
        printed["prod_version"]
    assert printed["window"]["until"] - printed["window"]["since"] == pytest.approx(30 * 60)


def test_shadow_command_takes_a_candidate_folder_relative_to_the_project(project, served_folders, monkeypatch,
                                                                          capsys):
    import shutil

    write_log(project / ".tunegate" / "predictions", served_folders[0], TEXTS[:6])  # serve.log_dir by default
    shutil.copytree(served_folders[0], project / "artifacts" / "gate" / "release")
    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(shadow_commands, "console", console)
    monkeypatch.chdir(project.parent)
    code = main(["shadow", "--project", str(project), "--candidate", "artifacts/gate/release",
                 "--since", "2000-01-01"])
    assert code == 0
    words = readable_at_80(console.export_text())
    assert "shadow replay: 6 texts" in words and "all 6 0.000" in words


@pytest.mark.parametrize("args, message", [
    (["--end", "2001-01-01T00:00:00Z"], "no records in the window"),
    (["--candidate", "v9.9.9"], "neither a folder nor a registered version"),
])
def test_shadow_command_exits_1_naming_what_is_missing(project, served_folders, capsys, args, message):
    write_log(project / "log", served_folders[0], TEXTS[:3])
    given = ["--candidate", str(served_folders[1]), *args] if "--candidate" not in args else args
    code = main(["shadow", "--project", str(project), "--log", str(project / "log"), *given])
    assert code == 1
    assert message in capsys.readouterr().err


def test_shadow_command_on_a_log_without_texts_says_how_to_keep_them(project, served_folders, capsys):
    write_log(project / "log", served_folders[0], TEXTS[:3], log_texts=False)
    code = main(["shadow", "--project", str(project), "--log", str(project / "log"), "--candidate",
                 str(served_folders[1])])
    assert code == 1
    assert "serve.log_texts: true" in capsys.readouterr().err


def test_shadow_table_reads_at_80_columns_with_long_labels_and_paths(monkeypatch):
    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(shadow_commands, "console", console)
    span = {"value": 0.0612, "low": 0.0401, "high": 0.0912, "count": 37, "rows": 604}
    estimate = {"value": 0.8713, "low": 0.8467, "high": 0.8981, "rows": 604}
    difference = {"value": -0.0014, "low": -0.0212, "high": 0.0189, "rows": 604, "disagreements": 37}
    slices = [{"column": column, "value": value, "rows": 133, "disagreement": span, "prod_estimated_accuracy": 0.9106,
               "candidate_estimated_accuracy": 0.9006, "estimated_difference": difference}
              for column, value in [("length", "1-16"), ("length", "65-256"), ("length", ">256"),
                                    ("prod_label", "negative"), ("prod_label", "somewhat_positive_with_caveats")]]
    report = {"log": "/srv/tunegate/.tunegate/predictions", "window": {"since": 1_796_000_000.0,
                                                                       "until": 1_796_003_600.0},
              "candidate": {"folder": "/home/someone/projects/reviews/.tunegate/registry/v0.12.3",
                            "version": "v0.12.3"},
              "prod_version": "sha256:253b426d8dc6", "confidence": 0.95,
              "rows": {"read": 640, "replayed": 604, "skipped": {"other_version": 30, "no_text": 6}},
              "disagreement": span, "estimated_accuracy": {"prod": estimate, "candidate": estimate},
              "estimated_difference": difference, "slices": slices,
              "latency_ms_b1": {"rows": 200, "p50": 50.93, "p95": 208.33}}
    shadow_commands.print_shadow_report(report)
    words = readable_at_80(console.export_text())
    for cell in ("slice", "rows", "disagree", "interval", "cand-prod", "length 65-256", "label negative", "0.061",
                 "[0.040, 0.091]", "0.911", "0.901", "-0.001", "v0.12.3", "p95 208.3 ms", "30 of another version"):
        assert cell in words, cell
