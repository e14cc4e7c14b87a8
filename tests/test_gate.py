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
from tasks.gate import absolute_checks, check, cost_check, decide, quantization_reference
from tasks.judging.compare import (INCONCLUSIVE, PROMOTE, REJECT, ChampionError, champion_folder,
                                   compare_predictions, find_champion, row_keys)
from tasks.judging.slices import token_lengths
from tests.conftest import LENIENT_GATE, REPO, keyword_reviews, tiny_params

GATE = parse_config(tiny_params(REPO)).gate.model_copy(update={"margin": 0.01, "min_compare_rows": 200})


def teacher_bounds(gate):
    """What the teacher's INT8 may give up (tasks.gate.shipped_bounds for the teacher)."""
    return {"model": "teacher", "max_accuracy_drop": gate.max_quantization_drop, "min_agreement": None}


TEACHER_BOUNDS = teacher_bounds(GATE)


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
    y_true, shipped, pytorch = constructed_pair(2000, 0.85, 0.85, 40)
    quantization = quantization_reference(y_true, pytorch, shipped, 2, GATE, seed=42, bounds=TEACHER_BOUNDS)
    budget = GATE.max_gmacs_per_text_p95
    cost = {"gmacs_per_text": {"p95": budget * 1.5}}
    batching = {"predict_batch_size": 32, "agreement": 0.99}  # 1% of labels move with batch mates
    checks = {c["check"]: c for c in absolute_checks(metrics, quantization, cost, batching, slices, GATE)}
    assert checks["test accuracy"]["passed"] is (0.80 >= GATE.min_accuracy)
    assert checks["test accuracy"]["interval"] == [0.77, 0.83]
    assert checks["quantized accuracy drop"]["outcome"] == "pass"
    assert checks["cost per text, p95 (GMACs, batch 1)"] == {
        "check": "cost per text, p95 (GMACs, batch 1)", "value": budget * 1.5, "rule": "<=", "threshold": budget,
        "passed": False, "outcome": "fail"}
    assert checks["slices failing (2 judged of 3)"]["passed"] is False
    batched = checks["labels changed by batches of 32 (share)"]
    assert batched["outcome"] == "fail" and batched["value"] == pytest.approx(0.01)


def test_a_shipped_student_answers_to_distills_bounds_on_its_drop_and_agreement():
    metrics = {"accuracy": {"value": 0.80, "low": 0.77, "high": 0.83}, "macro_f1": {"value": 0.79, "low": 0.76,
                                                                                   "high": 0.82}}
    y_true, shipped, pytorch = constructed_pair(2000, 0.85, 0.85, 40)  # 2% of rows disagree, nothing lost
    bounds = {"model": "student", "max_accuracy_drop": 0.01, "min_agreement": 0.99}
    quantization = quantization_reference(y_true, pytorch, shipped, 2, GATE, seed=42, bounds=bounds)
    cost = {"gmacs_per_text": {"p95": 0.0}}
    checks = {c["check"]: c for c in absolute_checks(metrics, quantization, cost, {"predict_batch_size": 32,
                                                                                   "agreement": 1.0}, [], GATE)}
    drop = checks["student accuracy drop vs the teacher's PyTorch"]
    assert drop["threshold"] == 0.01 and drop["outcome"] == "pass"  # upper end about +0.006
    agreement = checks["agreement with the teacher's PyTorch (share)"]
    assert agreement["value"] == pytest.approx(0.98) and agreement["threshold"] == 0.99 and agreement["passed"] is False
    assert "quantized accuracy drop" not in checks
    teacher = quantization_reference(y_true, pytorch, shipped, 2, GATE, seed=42, bounds=TEACHER_BOUNDS)
    teacher_checks = [c["check"] for c in absolute_checks(metrics, teacher, cost, {"predict_batch_size": 32,
                                                                                   "agreement": 1.0}, [], GATE)]
    assert "quantized accuracy drop" in teacher_checks and not any("agreement" in c for c in teacher_checks)


# The shipped model against its PyTorch model on the same test rows: (rows, shipped accuracy, PyTorch accuracy,
# extra rows where exactly one is right) and the quantized-drop check's outcome at a 2-point bound.
DROP_BOUND = 0.02
DROP_CASES = [
    ((2000, 0.85, 0.85, 40), "pass"),                # nothing lost, resolved: upper end about +0.006
    ((1000, 0.80, 0.85, 20), "fail"),                # five points lost: lower end about +0.034
    ((950, 0.8214, 0.8351, 28), "inconclusive"),     # 1.37 points lost, SE 0.0067: about [+0.000, +0.027]
]


@pytest.mark.parametrize("case, outcome", DROP_CASES)
def test_the_quantized_drop_check_decides_on_its_paired_interval(case, outcome):
    y_true, shipped, pytorch = constructed_pair(*case)
    gate = GATE.model_copy(update={"max_quantization_drop": DROP_BOUND})
    quantization = quantization_reference(y_true, pytorch, shipped, 2, gate, seed=42, bounds=teacher_bounds(gate))
    drop_check = cost_check("quantized accuracy drop", quantization["drop"])
    assert drop_check["outcome"] == outcome and drop_check["passed"] is {"pass": True, "fail": False}.get(outcome)
    assert drop_check["value"] == quantization["accuracy_drop"] == pytest.approx(case[2] - case[1], abs=1e-3)
    low, high = drop_check["interval"]
    assert low <= drop_check["value"] <= high and drop_check["threshold"] == DROP_BOUND
    decision = decide([check("test accuracy", 0.9, 0.8, True), drop_check], None, gate)
    assert decision["decision"] == {"pass": PROMOTE, "fail": REJECT, "inconclusive": INCONCLUSIVE}[outcome]
    if outcome == "inconclusive":
        assert drop_check["rows_needed"] > drop_check["rows"] == case[0]
        assert decision["why"].startswith("not settled: quantized accuracy drop +0.0137 [")
        assert f"about {drop_check['rows_needed']} test rows would settle it, the test split has 950" in decision["why"]


def test_a_failed_check_or_a_rejecting_champion_outranks_an_inconclusive_check():
    y_true, shipped, pytorch = constructed_pair(950, 0.8214, 0.8351, 28)
    gate = GATE.model_copy(update={"max_quantization_drop": DROP_BOUND})
    unsettled = cost_check("quantized accuracy drop", quantization_reference(y_true, pytorch, shipped, 2, gate, seed=42,
                                                                             bounds=teacher_bounds(gate))["drop"])
    assert decide([unsettled, check("test macro-F1", 0.7, 0.78, True)], None, gate)["decision"] == REJECT
    rejected = decide([unsettled], {"outcome": REJECT, "why": "worse than the champion"}, gate)
    assert rejected == {"decision": REJECT, "why": "worse than the champion"}
    promoted = decide([unsettled], {"outcome": PROMOTE, "why": "non-inferior"}, gate)
    assert promoted["decision"] == INCONCLUSIVE and "against the champion" not in promoted["why"]
    both = decide([unsettled], {"outcome": INCONCLUSIVE, "why": "straddles -0.01"}, gate)
    assert both["decision"] == INCONCLUSIVE and both["why"].endswith("; against the champion: straddles -0.01")


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
    from tasks.runtime.predict import load_served_model

    test = pd.read_parquet(paths.split("test"))
    served = load_served_model(paths.int8_dir)
    one_at_a_time = served_probabilities(served, list(test["text"]), 1).argmax(axis=1)
    assert cfg.gate.batch_size == 1
    assert decision["metrics"]["accuracy"]["value"] == float((one_at_a_time == test["label"].to_numpy()).mean())
    # The shipped (row-wise INT8) model answers the same in predict's batches of 32: checked, and passes.
    batched = served_probabilities(served, list(test["text"]), 32).argmax(axis=1)
    assert decision["reference"]["batching"]["agreement"] == float((batched == one_at_a_time).mean()) == 1.0
    assert decision["reference"]["batching"]["max_prob_delta"] <= 1e-5
    (batch_check,) = [c for c in decision["checks"] if c["check"].startswith("labels changed by batches")]
    assert batch_check["outcome"] == "pass"
    assert decision["reference"]["pytorch"]["accuracy"] == json.loads(paths.metrics.read_text())["accuracy"]
    stamp = json.loads(paths.train_stamp.read_text())
    quantized = json.loads(paths.quantization_report.read_text())
    assert decision["candidate"] == {"model": quantized["chosen_model"], "file": "artifacts/quantize/onnx/model.onnx",
                                     "precision": "dynamic_per_row",
                                     "sha256": file_sha256(paths.int8_dir / "model.onnx"),
                                     "train_run": stamp["run_fingerprint"]}
    assert decision["comparison"] is None and decision["first_run"] == cfg.gate.first_run
    report = (paths.stage_dir("gate") / "report.md").read_text()
    assert report.startswith("# Gate: REJECT\n") and stamp["run_fingerprint"] in report
    assert json.loads(paths.result("gate").read_text())["key_figure"].startswith("REJECT: shipped acc")


def test_gate_stage_slices_whole_text_lengths_and_names_the_long_text_rule_it_read_by(staged_pipeline):
    from transformers import AutoTokenizer

    from tasks.runtime.long_text import describe, normalise

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
    from tasks.runtime.predict import load_served_model

    assert load_served_model(release).logits(["a fine film"], 1).shape == (1, 2)


def test_gate_stage_writes_a_parity_certificate_that_this_host_reproduces(staged_pipeline):
    from tasks.core.host import cpu_facts
    from tasks.runtime.parity import verify_folder

    cfg, paths = staged_pipeline
    release = paths.stage_dir("gate") / "release"
    certificate = json.loads((release / "parity.json").read_text())
    texts = list(pd.read_parquet(paths.split("test"))["text"])
    assert len(texts) > cfg.gate.parity_rows == len(certificate["texts"])
    by_key = dict(zip(row_keys(texts), texts))
    assert all(by_key[row["key"]] == row["text"] for row in certificate["texts"])
    lengths = token_lengths(paths.int8_dir / "tokenizer.json", texts)
    chosen = {row["text"] for row in certificate["texts"]}
    assert texts[int(np.argmax(lengths))] in chosen and texts[int(np.argmin(lengths))] in chosen
    window = json.loads((release / "serving.json").read_text())["max_length"]
    assert sum(length > window for text, length in zip(texts, lengths) if text in chosen) > 1, "long texts too"
    assert certificate["model_sha256"] == json.loads((release / "release.json").read_text())["sha256"]
    assert certificate["max_prob_delta"] == cfg.gate.parity_max_prob_delta
    report = verify_folder(release, 0.998)
    assert report.passed and report.agreement == 1.0 and report.max_prob_delta == 0.0
    assert json.loads(paths.run_record("gate").read_text())["parity_certificate"]["judged_on"] == cpu_facts()


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
    low, high = quantized["accuracy_drop_interval"]
    assert shipped[4] == f"[{low:+.4f}, {high:+.4f}]"
    assert shipped[5] == f"{quantized['agreement']:.1%}" and float(shipped[6]) > 0
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
    assert candidate_rows(report)[0] == ["student", "static_minmax", "", "", "", "", "", "",
                                         "not built: RuntimeError: no shapes"]
    assert "- student: skipped (distill.enabled is false: no student was built)" in report


@pytest.mark.heavy
def test_gate_judges_a_shipped_student_against_the_teachers_pytorch_figures(staged_pipeline, tmp_path):
    from tests.test_export import student_project

    cfg, paths = staged_pipeline
    copy = student_project(staged_pipeline, tmp_path)
    load_stage("quantize").fn(cfg, copy)  # lenient tiny bounds: the student's first rung ships
    load_stage("gate").fn(cfg, copy)
    decision = json.loads(copy.decision.read_text())
    assert decision["candidate"]["model"] == "student" and decision["candidate"]["precision"] == "dynamic_per_row"
    release = json.loads((copy.stage_dir("gate") / "release" / "release.json").read_text())
    assert release["model"] == "student"
    # The quantized-drop check compares the shipped student with the teacher's PyTorch predictions on test.
    teacher = pd.read_parquet(copy.stage_dir("evaluate") / "predictions.parquet")["predicted"].to_numpy()
    from tasks.gate import served_probabilities
    from tasks.runtime.predict import load_served_model

    test = pd.read_parquet(copy.split("test"))
    student = served_probabilities(load_served_model(copy.int8_dir), list(test["text"]), 1).argmax(axis=1)
    assert decision["reference"]["quantization"]["agreement"] == float((student == teacher).mean())
    report = (copy.stage_dir("gate") / "report.md").read_text()
    assert "the student, dynamic_per_row" in report and "distillation and quantization cost" in report
    ceiling, shipped = candidate_rows(report)[:2]  # the student's FP32 is judged first, as its ladder's ceiling
    assert ceiling[:2] == ["student", "fp32"] and ceiling[-1] == "ceiling holds"
    assert shipped[:2] == ["student", "dynamic_per_row"] and shipped[-1] == "shipped"
    # The student answers to distill's bounds (drop and agreement), not to the teacher's quantization bound.
    checks = {c["check"]: c for c in decision["checks"]}
    assert checks["student accuracy drop vs the teacher's PyTorch"]["threshold"] == cfg.distill.max_accuracy_drop
    assert checks["agreement with the teacher's PyTorch (share)"]["threshold"] == cfg.distill.min_agreement
    assert "quantized accuracy drop" not in checks
    assert "compares two models (the student accuracy drop vs the teacher's PyTorch:" in report
    assert "quantized accuracy drop" not in report


def test_gate_stage_keeps_latency_figures_out_of_tracked_outputs(staged_pipeline):
    cfg, paths = staged_pipeline
    record = json.loads(paths.run_record("gate").read_text())
    assert record["latency_ms_b1"]["rows"] == min(cfg.gate.latency_rows, len(pd.read_parquet(paths.split("test"))))
    assert record["latency_ms_b1"]["p95"] >= record["latency_ms_b1"]["p50"] > 0
    gate_dir = paths.stage_dir("gate")
    decision = json.loads((gate_dir / "decision.json").read_text())
    tracked = (gate_dir / "decision.json").read_text() + (gate_dir / "report.md").read_text()
    for figure in ("p50", "p95"):
        assert f"{record['latency_ms_b1'][figure]}" not in tracked
    assert "latency" not in json.dumps(decision["checks"]) and "_ms" not in json.dumps(decision)
    # What the budget judged instead is written beside the timings.
    assert record["cost_gmacs_per_text_p95"] == decision["compute_cost"]["gmacs_per_text"]["p95"]


# The gate's tracked text outputs a timing could leak into: the decision, its report and the release's model card.
TRACKED_TEXT = ("decision.json", "report.md", "release/README.md")


def _spin(started, stop) -> None:
    """A CPU hog: one busy core until `stop` is set."""
    started.release()
    while not stop.is_set():
        pass


@pytest.mark.heavy
def test_gate_writes_the_same_decision_on_a_loaded_host_as_on_a_quiet_one(staged_pipeline, tmp_path):
    """Every core busy beside it, the gate still writes byte-identical decision.json, report.md and model card: no
    input of the decision is a timing."""
    import multiprocessing
    import os

    cfg, paths = staged_pipeline
    project = tmp_path / "project"
    shutil.copytree(paths.root, project)
    copy = ArtifactPaths(project)
    gate_dir = copy.stage_dir("gate")
    load_stage("gate").fn(cfg, copy)
    quiet = [(gate_dir / name).read_bytes() for name in TRACKED_TEXT]
    context = multiprocessing.get_context("fork")  # the hogs only spin: nothing of this process is used there
    started, stop = context.Semaphore(0), context.Event()
    hogs = [context.Process(target=_spin, args=(started, stop), daemon=True) for _ in range(os.cpu_count() or 1)]
    for hog in hogs:
        hog.start()
    try:
        for _ in hogs:
            assert started.acquire(timeout=60), "a hog did not start"
        load_stage("gate").fn(cfg, copy)
    finally:
        stop.set()
        for hog in hogs:
            hog.join(timeout=10)
            if hog.is_alive():
                hog.terminate()
    loaded = [(gate_dir / name).read_bytes() for name in TRACKED_TEXT]
    assert loaded == quiet
    record = json.loads(copy.run_record("gate").read_text())
    assert record["latency_ms_b1"]["p95"] > 0, "the timings were taken, and kept in the run record"


def test_gate_stage_writes_the_reliability_diagram(staged_pipeline):
    cfg, paths = staged_pipeline
    bins = pd.read_csv(paths.stage_dir("gate") / "reliability.csv")
    assert set(bins.columns) >= {"confidence", "accuracy", "rows"}
    assert bins["rows"].sum() == len(pd.read_parquet(paths.split("test")))
    assert len(bins) <= cfg.gate.calibration_bins


def judged_leniently(cfg, **gate):
    """cfg whose absolute checks pass on any model, so that only the comparison decides."""
    return cfg.model_copy(update={"gate": cfg.gate.model_copy(update={**LENIENT_GATE, **gate})})


@pytest.mark.heavy
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


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_gate_reweights_test_rows_toward_a_logged_stream_and_reports_it(staged_pipeline, tmp_path):
    from tasks.serving.predlog import PredictionLog
    from tasks.serving.scoring import load_served

    cfg, paths = staged_pipeline
    project = tmp_path / "project"
    shutil.copytree(paths.root, project)
    copy = ArtifactPaths(project)
    texts = list(pd.read_parquet(copy.split("dev"))["text"])
    served = load_served(copy.int8_dir, cfg.serve.model_name, None, threads=1)
    log = PredictionLog(project / "live-log", log_texts=True, file_mb=1, max_mb=8, flush_seconds=0.1)
    log.start()
    log.append(served.info.version, texts, served.score(texts, 1), served.info.labels)
    log.close()
    served.close()
    live = cfg.gate.live_traffic.model_copy(update={"log_dir": "live-log", "min_effective_rows": 1,
                                                   "min_supported_share": 0.01})
    # The champion is the candidate itself: the replay of what it answered must find no disagreement.
    champion = tmp_path / "champion"
    shutil.copytree(copy.stage_dir("gate") / "release", champion)
    load_stage("gate").fn(judged_leniently(cfg, live_traffic=live, champion=str(champion)), copy)
    shadow = json.loads(copy.decision.read_text())["shadow"]
    assert shadow["rows"]["replayed"] == len(texts) and shadow["disagreement"]["value"] == 0.0
    assert shadow["estimated_difference"]["value"] == 0.0 and "latency_ms_b1" not in shadow
    assert shadow["estimated_accuracy"]["prod"]["value"] == pytest.approx(
        shadow["estimated_accuracy"]["candidate"]["value"], abs=1e-6)
    assert "## Shadow replay of the prediction log" in (copy.stage_dir("gate") / "report.md").read_text()
    found = json.loads(copy.decision.read_text())["live_traffic"]
    assert found["verdict"] == "reweighted" and found["live_texts"] == len(texts), found["why"]
    assert found["unweighted"]["accuracy"] == json.loads(copy.decision.read_text())["metrics"]["accuracy"]
    assert 0 < found["effective_rows"] <= found["test_rows"] and "per_row" not in found
    assert "reweighted to live traffic" in (copy.stage_dir("gate") / "report.md").read_text()


def test_gate_without_a_live_log_says_how_to_get_one(staged_pipeline):
    cfg, paths = staged_pipeline
    assert cfg.gate.live_traffic.log_dir is None  # the default: the gate's outputs depend on tracked inputs only
    decision = json.loads(paths.decision.read_text())
    assert decision["live_traffic"] is None and decision["shadow"] is None
    assert "gate.live_traffic.log_dir is null" in (paths.stage_dir("gate") / "report.md").read_text()
