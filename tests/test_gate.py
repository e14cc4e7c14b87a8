"""gate: judges the shipped model with intervals, slices and the champion; PROMOTE / REJECT / INCONCLUSIVE."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import STAGES, parse_config
from tasks.core.io import file_sha256
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import load_stage
from tasks.gate import absolute_checks, check, decide
from tasks.judging.compare import (INCONCLUSIVE, PROMOTE, REJECT, ChampionError, champion_folder,
                                   compare_predictions, find_champion, row_keys)
from tests.conftest import LENIENT_GATE, REPO, keyword_reviews, tiny_params

GATE = parse_config(tiny_params(REPO)).gate.model_copy(update={"margin": 0.01, "min_compare_rows": 200})


def predictions(y_true: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Binary predictions that are right exactly where `right` is True."""
    return np.where(right, y_true, 1 - y_true)


def constructed_pair(rows: int, candidate_right: float, champion_right: float, disagree: int, seed: int = 0):
    """Labels and two prediction vectors with the given accuracies, differing in correctness on `disagree` rows
    beyond the accuracy gap (half of them each way)."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, rows)
    champion = np.arange(rows) < int(champion_right * rows)
    candidate = champion.copy()
    gain = int(candidate_right * rows) - int(champion_right * rows)
    if gain >= 0:
        candidate[int(champion_right * rows):int(champion_right * rows) + gain] = True
    else:
        candidate[int(champion_right * rows) + gain:int(champion_right * rows)] = False
    swaps = disagree // 2
    right_both = np.flatnonzero(candidate & champion)[:swaps]
    wrong_both = np.flatnonzero(~candidate & ~champion)[:swaps]
    candidate[right_both], candidate[wrong_both] = False, True
    order = rng.permutation(rows)
    return y_true, predictions(y_true, candidate[order]), predictions(y_true, champion[order])


@pytest.mark.parametrize("case, expected", [
    ((1000, 0.90, 0.80, 40), PROMOTE),   # clearly better
    ((5000, 0.85, 0.85, 20), PROMOTE),   # equal, resolved: the interval is narrower than the margin
    ((1000, 0.70, 0.85, 40), REJECT),    # clearly worse
    ((150, 0.85, 0.85, 10), INCONCLUSIVE),  # fewer rows than gate.min_compare_rows
    ((400, 0.85, 0.85, 80), INCONCLUSIVE),  # equal, but too few rows to resolve a 1-point margin at 20% disagreement
])
def test_comparison_of_constructed_pairs_gives_the_expected_outcome(case, expected):
    y_true, candidate, champion = constructed_pair(*case)
    comparison = compare_predictions(y_true, candidate, champion, 2, GATE, seed=42)
    assert comparison["outcome"] == expected, comparison["why"]
    assert comparison["rows"] == case[0]
    accuracy = comparison["differences"]["accuracy"]
    assert accuracy["value"] == pytest.approx(case[1] - case[2], abs=1e-9)
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]


def test_an_unresolvable_comparison_reports_the_rows_it_would_need():
    y_true, candidate, champion = constructed_pair(400, 0.85, 0.85, 80)
    comparison = compare_predictions(y_true, candidate, champion, 2, GATE, seed=42)
    # 20% of rows disagree: SE = sqrt(0.2 / n); 1.96 * SE < 0.01 needs n > 1.96^2 * 0.2 / 0.01^2 = 7683.
    assert comparison["rows_needed"] == pytest.approx(7683, abs=2)
    assert "7683" in comparison["why"] or "7684" in comparison["why"]
    assert comparison["mcnemar"]["a_only"] == comparison["mcnemar"]["b_only"] == 40


def test_identical_models_differ_by_exactly_zero():
    y_true, candidate, _ = constructed_pair(300, 0.8, 0.8, 0)
    comparison = compare_predictions(y_true, candidate, candidate.copy(), 2, GATE, seed=1)
    assert comparison["outcome"] == PROMOTE
    assert comparison["differences"]["accuracy"] == {"value": 0.0, "low": 0.0, "high": 0.0, "se": 0.0}
    assert comparison["mcnemar"]["p_value"] == 1.0 and comparison["rows_needed"] == 0


def passing_checks() -> list[dict]:
    return [check("test accuracy", 0.9, 0.8, True), check("quantized accuracy drop", 0.001, 0.01, False)]


def test_a_failed_check_rejects_whatever_the_comparison_says():
    checks = passing_checks() + [check("test macro-F1", 0.7, 0.78, True)]
    decision = decide(checks, {"outcome": PROMOTE, "why": "non-inferior"}, GATE)
    assert decision == {"decision": REJECT, "why": "failed: test macro-F1"}


def test_without_a_champion_the_first_run_policy_decides():
    assert decide(passing_checks(), None, GATE)["decision"] == PROMOTE
    strict = GATE.model_copy(update={"first_run": "require_champion"})
    decision = decide(passing_checks(), None, strict)
    assert decision["decision"] == INCONCLUSIVE and "require_champion" in decision["why"]


def test_with_a_champion_its_comparison_decides():
    decision = decide(passing_checks(), {"outcome": INCONCLUSIVE, "why": "straddles"}, GATE)
    assert decision == {"decision": INCONCLUSIVE, "why": "straddles"}


def test_absolute_checks_judge_point_values_and_only_judged_slices():
    metrics = {"accuracy": {"value": 0.80, "low": 0.77, "high": 0.83}, "macro_f1": {"value": 0.79, "low": 0.76,
                                                                                   "high": 0.82}}
    slices = [{"judged": True, "passed": True}, {"judged": True, "passed": False}, {"judged": False, "passed": None}]
    checks = {c["check"]: c for c in absolute_checks(metrics, {"accuracy_drop": 0.004}, True, slices, GATE)}
    assert checks["test accuracy"]["passed"] is (0.80 >= GATE.min_accuracy)
    assert checks["test accuracy"]["interval"] == [0.77, 0.83]
    assert checks["p95 latency, batch 1 (ms)"] == {"check": "p95 latency, batch 1 (ms)", "value": None, "rule": "<=",
                                                   "threshold": GATE.max_latency_ms_b1, "passed": True}
    assert checks["slices failing (2 judged of 3)"]["passed"] is False


def test_row_keys_match_reformatted_texts_only():
    assert row_keys(["A  fine film ", "a fine film"])[0] == row_keys(["a fine film"])[0]
    assert row_keys(["a fine film"]) != row_keys(["a fine movie"])


def test_a_champion_folder_that_is_not_served_or_has_other_labels_is_refused(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    with pytest.raises(ChampionError, match="not a served model folder"):
        find_champion(tmp_path, str(tmp_path), ["negative", "positive"])
    release = paths.stage_dir("gate") / "release"
    with pytest.raises(ChampionError, match="cannot be compared"):
        find_champion(release, str(release), ["bad", "good"])
    with pytest.raises(ChampionError, match="inside this project's artifacts"):
        champion_folder("artifacts/gate/release", paths.root)
    assert champion_folder("../production", paths.root) == paths.root / "../production"


# --- the stage on the tiny setup ---------------------------------------------------------------------------


def test_gate_stage_judges_the_shipped_model_and_names_the_failed_checks(staged_pipeline):
    cfg, paths = staged_pipeline
    decision = json.loads(paths.decision.read_text())
    # A random 2-layer model scores far below the shipping bar.
    assert decision["decision"] == REJECT
    failed = {c["check"] for c in decision["checks"] if not c["passed"]}
    assert {"test accuracy", "test macro-F1"} <= failed
    # What is judged is the shipped INT8 model as the serving code runs it, not the PyTorch model.
    from tasks.gate import served_probabilities
    from tasks.serving.predict import load_served_model

    test = pd.read_parquet(paths.split("test"))
    served = load_served_model(paths.int8_dir)
    one_at_a_time = served_probabilities(served, list(test["text"]), 1).argmax(axis=1)
    assert cfg.gate.batch_size == 1
    assert decision["metrics"]["accuracy"]["value"] == float((one_at_a_time == test["label"].to_numpy()).mean())
    # How far predict's batches change the labels (dynamic INT8 scales activations per call) is reported.
    batched = served_probabilities(served, list(test["text"]), 32).argmax(axis=1)
    assert decision["reference"]["batching"]["agreement"] == float((batched == one_at_a_time).mean())
    assert decision["reference"]["pytorch"]["accuracy"] == json.loads(paths.metrics.read_text())["accuracy"]
    stamp = json.loads(paths.train_stamp.read_text())
    quantized = json.loads(paths.quantization_report.read_text())
    assert decision["candidate"] == {"model": quantized["chosen_model"], "file": "artifacts/quantize/onnx/model.onnx",
                                     "precision": "dynamic_per_tensor",
                                     "sha256": file_sha256(paths.int8_dir / "model.onnx"),
                                     "train_run": stamp["run_fingerprint"]}
    assert decision["comparison"] is None and decision["first_run"] == cfg.gate.first_run
    report = (paths.stage_dir("gate") / "report.md").read_text()
    assert report.startswith("# Gate: REJECT\n") and stamp["run_fingerprint"] in report
    assert json.loads(paths.result("gate").read_text())["key_figure"].startswith("REJECT: shipped acc")


def test_gate_stage_slices_whole_text_lengths_and_names_the_long_text_rule_it_read_by(staged_pipeline):
    from transformers import AutoTokenizer

    from tasks.serving.long_text import describe, normalise

    cfg, paths = staged_pipeline
    decision = json.loads(paths.decision.read_text())
    serving = json.loads((paths.int8_dir / "serving.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(paths.model_dir)
    texts = pd.read_parquet(paths.split("test"))["text"]
    lengths = np.array([len(tokenizer(t, truncation=False)["input_ids"]) for t in texts])
    window = serving["max_length"]
    rule = normalise(serving.get("long_text"))
    assert decision["long_text"] == {"rule": rule, "described": describe(rule), "window_tokens": window,
                                     "longer_rows": int((lengths > window).sum())}
    assert decision["long_text"]["longer_rows"] > 0, "the tiny run's 32-token window cuts some test sentences"
    # Length slices count whole texts: the rows past the window (an edge of the default buckets) are all there.
    assert window in cfg.gate.length_buckets
    tokens = {s["value"]: s["rows"] for s in decision["slices"] if s["column"] == "tokens"}
    assert sum(tokens.values()) == len(texts)
    assert sum(rows for name, rows in tokens.items() if name in ("33-64", "65-256", ">256")) == (lengths > window).sum()
    report = (paths.stage_dir("gate") / "report.md").read_text()
    assert f"read by serving.json's long_text rule: {describe(rule)}." in report
    assert "| tokens = 33-64 |" in report, "accuracy per length bucket, with rows and interval"


def test_gate_stage_writes_a_release_folder_that_serves_and_records_its_test_rows(staged_pipeline):
    _, paths = staged_pipeline
    release = paths.stage_dir("gate") / "release"
    test = pd.read_parquet(paths.split("test"))
    assert json.loads((release / "test_rows.json").read_text())["keys"] == row_keys(list(test["text"]))
    record = json.loads((release / "release.json").read_text())
    assert record["sha256"] == file_sha256(release / "model.onnx") == file_sha256(paths.int8_dir / "model.onnx")
    assert record["decision"] == REJECT and record["test_rows"] == len(test)
    from tasks.serving.predict import load_served_model

    assert load_served_model(release).logits(["a fine film"], 1).shape == (1, 2)


def candidate_rows(report: str) -> list[list[str]]:
    """The cells of report.md's "Quantize candidates (dev)" table, one list per candidate."""
    section = report.split("## Quantize candidates (dev)\n")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_gate_report_lists_every_quantize_candidate_with_its_model_and_dev_figures(staged_pipeline):
    _, paths = staged_pipeline
    quantized = json.loads(paths.quantization_report.read_text())
    report = (paths.stage_dir("gate") / "report.md").read_text()
    rows = candidate_rows(report)
    assert [(r[0], r[1]) for r in rows] == [(c["model"], c["rung"]) for c in quantized["rungs"]]
    shipped = rows[-1]
    assert shipped[-1] == "shipped" and shipped[2] == f"{quantized['accuracy']:.4f}"
    assert shipped[3] == f"{quantized['accuracy_drop']:+.4f} ± {quantized['accuracy_drop_se']:.4f}"
    assert shipped[4] == f"{quantized['agreement']:.1%}" and float(shipped[5]) > 0
    assert f"against the teacher FP32 (accuracy {quantized['fp32_accuracy']:.4f})" in report
    decision = json.loads(paths.decision.read_text())
    assert decision["quantize"]["candidates"] == quantized["rungs"]


def test_gate_report_names_skipped_models_and_rungs_that_did_not_build(staged_pipeline):
    from tasks.judging.report import render_report

    cfg, paths = staged_pipeline
    decision = json.loads(paths.decision.read_text())
    broken = {"model": "student", "rung": "static_minmax", "passed": False, "error": "RuntimeError: no shapes"}
    quantize = {**decision["quantize"], "candidates": [broken, *decision["quantize"]["candidates"]],
                "skipped": {"student": "distill.enabled is false: no student was built"}}
    report = render_report({**decision, "quantize": quantize}, cfg.gate)
    assert candidate_rows(report)[0] == ["student", "static_minmax", "", "", "", "", "",
                                         "not built: RuntimeError: no shapes"]
    assert "- student: skipped (distill.enabled is false: no student was built)" in report


def test_gate_judges_a_shipped_student_against_the_teachers_pytorch_figures(staged_pipeline, tmp_path):
    from tests.test_export import student_project

    cfg, paths = staged_pipeline
    copy = student_project(staged_pipeline, tmp_path)
    load_stage("quantize").fn(cfg, copy)  # lenient tiny bounds: the student's first rung ships
    load_stage("gate").fn(cfg, copy)
    decision = json.loads(copy.decision.read_text())
    assert decision["candidate"]["model"] == "student" and decision["candidate"]["precision"] == "dynamic_per_tensor"
    release = json.loads((copy.stage_dir("gate") / "release" / "release.json").read_text())
    assert release["model"] == "student"
    # The quantized-drop check compares the shipped student with the teacher's PyTorch predictions on test.
    teacher = pd.read_parquet(copy.stage_dir("evaluate") / "predictions.parquet")["predicted"].to_numpy()
    from tasks.gate import served_probabilities
    from tasks.serving.predict import load_served_model

    test = pd.read_parquet(copy.split("test"))
    student = served_probabilities(load_served_model(copy.int8_dir), list(test["text"]), 1).argmax(axis=1)
    assert decision["reference"]["quantization"]["agreement"] == float((student == teacher).mean())
    report = (copy.stage_dir("gate") / "report.md").read_text()
    assert "the student, dynamic_per_tensor" in report and "distillation and quantization cost" in report
    shipped = candidate_rows(report)[0]
    assert shipped[:2] == ["student", "dynamic_per_tensor"] and shipped[-1] == "shipped"


def test_gate_stage_keeps_latency_figures_out_of_tracked_outputs(staged_pipeline):
    cfg, paths = staged_pipeline
    record = json.loads(paths.run_record("gate").read_text())
    assert record["latency_ms_b1"]["rows"] == min(cfg.gate.latency_rows, len(pd.read_parquet(paths.split("test"))))
    assert record["latency_ms_b1"]["p95"] >= record["latency_ms_b1"]["p50"] > 0
    gate_dir = paths.stage_dir("gate")
    tracked = (gate_dir / "decision.json").read_text() + (gate_dir / "report.md").read_text()
    assert f"{record['latency_ms_b1']['p95']}" not in tracked and "p95\": " not in tracked


def test_gate_stage_writes_the_reliability_diagram(staged_pipeline):
    cfg, paths = staged_pipeline
    bins = pd.read_csv(paths.stage_dir("gate") / "reliability.csv")
    assert set(bins.columns) >= {"confidence", "accuracy", "rows"}
    assert bins["rows"].sum() == len(pd.read_parquet(paths.split("test")))
    assert len(bins) <= cfg.gate.calibration_bins


def judged_leniently(cfg, **gate):
    """cfg whose absolute checks pass on any model, so that only the comparison decides."""
    return cfg.model_copy(update={"gate": cfg.gate.model_copy(update={**LENIENT_GATE, **gate})})


def test_gate_stage_against_itself_promotes_with_a_difference_of_zero(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    champion = tmp_path / "champion"
    shutil.copytree(paths.stage_dir("gate") / "release", champion)
    project = tmp_path / "project"
    shutil.copytree(paths.root, project)
    copy = ArtifactPaths(project)
    load_stage("gate").fn(judged_leniently(cfg, champion=str(champion)), copy)
    decision = json.loads(copy.decision.read_text())
    comparison = decision["comparison"]
    assert decision["decision"] == PROMOTE, decision["why"]
    assert comparison["differences"]["accuracy"]["value"] == 0.0 == comparison["differences"]["macro_f1"]["value"]
    assert comparison["rows"] == len(pd.read_parquet(copy.split("test")))
    assert comparison["champion"]["sha256"] == decision["candidate"]["sha256"]
    assert comparison["champion"]["train_run"] == decision["candidate"]["train_run"]


def test_gate_compares_on_the_test_rows_both_models_were_judged_on(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    champion = tmp_path / "champion"
    shutil.copytree(paths.stage_dir("gate") / "release", champion)
    keys = json.loads((champion / "test_rows.json").read_text())["keys"]
    (champion / "test_rows.json").write_text(json.dumps({"keys": keys[:30] + ["0" * 16]}))  # the data changed
    project = tmp_path / "project"
    shutil.copytree(paths.root, project)
    copy = ArtifactPaths(project)
    load_stage("gate").fn(judged_leniently(cfg, champion=str(champion)), copy)
    comparison = json.loads(copy.decision.read_text())["comparison"]
    assert comparison["rows"] == 30 and "30 of" in comparison["scope"]
    load_stage("gate").fn(judged_leniently(cfg, champion=str(champion), min_compare_rows=31), copy)
    decision = json.loads(copy.decision.read_text())
    assert decision["decision"] == INCONCLUSIVE and "only 30 test rows" in decision["why"]


# --- a real comparison: a model trained on a tenth of the data against one trained on all of it -------------

def run_all_stages(root, cfg):
    paths = ArtifactPaths(root)
    for stage in STAGES:
        load_stage(stage).fn(cfg, paths)
    return paths


@pytest.mark.e2e
def test_a_model_trained_on_a_tenth_of_the_data_is_rejected_against_one_trained_on_all(tiny_model_dir, tmp_path):
    frame = keyword_reviews(2000)
    raw = tiny_params(tiny_model_dir)
    raw["train"].update(epochs=3)
    # The comparison, not compression, is under test: the teacher ships, unquantized.
    raw["quantize"].update(models=["teacher"], ladder=["fp32"])
    trained = {}
    for name, cap in (("all", None), ("tenth", 160)):
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        frame.to_csv(root / "data" / "movie_reviews.csv", index=False)
        shutil.copytree(REPO / "expectations", root / "expectations")
        raw["prepare"]["max_train_rows"] = cap
        cfg = judged_leniently(parse_config(raw))
        trained[name] = (cfg, run_all_stages(root, cfg))
    full_accuracy = json.loads(trained["all"][1].decision.read_text())["metrics"]["accuracy"]["value"]
    assert full_accuracy > 0.9, "the setup: all the data teaches the tiny model the keywords"

    cfg, tenth = trained["tenth"]
    load_stage("gate").fn(judged_leniently(cfg, champion=str(trained["all"][1].stage_dir("gate") / "release")), tenth)
    decision = json.loads(tenth.decision.read_text())
    assert decision["decision"] == REJECT, decision["why"]
    assert decision["comparison"]["outcome"] == REJECT
    assert decision["comparison"]["rows"] == len(pd.read_parquet(tenth.split("test"))) >= 150
    assert decision["comparison"]["differences"]["accuracy"]["high"] < -cfg.gate.margin

    cfg, full = trained["all"]  # the other way round: the better model against the worse one
    load_stage("gate").fn(judged_leniently(cfg, champion=str(tenth.stage_dir("gate") / "release")), full)
    assert json.loads(full.decision.read_text())["decision"] == PROMOTE
