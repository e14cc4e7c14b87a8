"""quantize: the ladder keeps the first rung within limits on dev (never test), records every rung with the
standard error of its accuracy drop, falls back to FP32."""

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest

import tasks.quantize as stage
from tasks.core.config import QUANTIZATION_RUNGS, ConfigError, parse_config
from tasks.core.paths import ArtifactPaths
from tasks.runtime.latency import batch1_latencies_ms
from tasks.runtime.onnx_model import CPU, OnnxClassifier
from tests.conftest import REPO, tiny_params


def test_quantize_stage_keeps_first_rung_and_reports_it(staged_pipeline):
    cfg, paths = staged_pipeline
    report = json.loads(paths.quantization_report.read_text())
    # Lenient tiny bounds: the first candidate ships, the student's when distill made one.
    first = "student" if paths.student_onnx_dir.is_dir() else "teacher"
    assert report["chosen"] == cfg.quantize.ladder[0] == "dynamic_per_row" and report["chosen_model"] == first
    ceiling = [("student", "fp32")] if first == "student" else []  # the student's FP32 is judged first
    assert [(r["model"], r["rung"]) for r in report["rungs"]] == [*ceiling, (first, "dynamic_per_row")]
    assert report["size_ratio"] < 0.6
    assert report["accuracy_drop"] == pytest.approx(report["fp32_accuracy"] - report["accuracy"])
    served = OnnxClassifier(paths.int8_dir)
    assert served.model_file == "model.onnx" and served.logits(["fine"], 1).shape == (1, 2)


def test_quantize_judges_on_dev_rows_the_calibrator_did_not_see(staged_pipeline):
    cfg, paths = staged_pipeline
    report = json.loads(paths.quantization_report.read_text())
    dev_rows = len(pd.read_parquet(paths.split("dev")))
    assert dev_rows - cfg.quantize.calibration_rows >= cfg.quantize.calibration_rows, "fixture: enough dev rows"
    assert report["split"] == "dev" and report["calibration_rows_excluded"] is True
    assert report["first_row"] == cfg.quantize.calibration_rows
    assert report["rows"] == dev_rows - cfg.quantize.calibration_rows
    assert report["accuracy_drop_se"] == report["rungs"][-1]["accuracy_drop_se"] >= 0
    low, high = report["accuracy_drop_interval"]
    assert low <= report["accuracy_drop"] <= high and report["rungs"][-1]["drop_outcome"] == "pass"
    assert report["thresholds"]["confidence"] == cfg.quantize.confidence
    key = json.loads(paths.result("quantize").read_text())["key_figure"]
    assert (f"drop {report['accuracy_drop']:+.4f} (SE {report['accuracy_drop_se']:.4f}) vs teacher FP32 on "
            f"{report['rows']} rows") in key
    assert key.startswith(f"{report['chosen_model']} {report['chosen']}: dev acc")


def test_quantize_never_reads_the_test_split(staged_pipeline, tmp_path):
    """The test split is the gate's: a project whose prepare output has no test split still quantizes."""
    cfg, paths = staged_pipeline
    copy = ArtifactPaths(tmp_path)
    shutil.copytree(paths.stage_dir("prepare"), copy.stage_dir("prepare"), ignore=shutil.ignore_patterns("test.*"))
    shutil.copytree(paths.stage_dir("export"), copy.stage_dir("export"))
    assert not copy.split("test").exists()
    stage.quantize.fn(cfg, copy)
    assert json.loads(copy.quantization_report.read_text()) == json.loads(paths.quantization_report.read_text())


def test_judging_rows_are_the_dev_rows_after_calibration_when_as_many_remain():
    dev = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    rows, record = stage.judging_rows(dev, 5)
    assert list(rows["text"]) == [f"t{i}" for i in range(5, 10)]
    assert record == {"split": "dev", "rows": 5, "first_row": 5, "calibration_rows_excluded": True}


@pytest.mark.parametrize("calibration_rows", [6, 10, 500])
def test_judging_rows_are_all_dev_rows_when_fewer_than_the_calibration_rows_remain(calibration_rows):
    dev = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    rows, record = stage.judging_rows(dev, calibration_rows)
    assert list(rows["text"]) == list(dev["text"])
    assert record == {"split": "dev", "rows": 10, "first_row": 0, "calibration_rows_excluded": False}


@pytest.mark.parametrize("rung", [r for r in QUANTIZATION_RUNGS])
@pytest.mark.heavy
def test_every_rung_builds_a_model_that_runs(staged_pipeline, tmp_path, rung):
    cfg, paths = staged_pipeline
    work = tmp_path / "work"
    dev = pd.read_parquet(paths.split("dev")).head(8)
    tried, chosen = stage.climb_ladder("teacher", paths.onnx_dir, work, dev, list(dev["text"]), cfg.data.label_names,
                                       cfg.quantize.model_copy(update={"ladder": [rung]}), reference(paths, dev),
                                       stage.model_limits(cfg)["teacher"])
    assert tried[0]["rung"] == rung and "error" not in tried[0], tried[0]
    logits = OnnxClassifier(work, model_file=chosen).logits(["a test"], 1)
    assert np.isfinite(logits).all()


@pytest.mark.heavy
def test_ladder_falls_to_next_rung_when_a_rung_fails_its_limits(staged_pipeline, tmp_path, monkeypatch):
    cfg, paths = staged_pipeline
    real_measure = stage.measure_rung
    calls = []

    def measure_with_first_rung_broken(model, *args, **kwargs):
        figures = real_measure(model, *args, **kwargs)
        calls.append(model.model_file)
        if model.model_file == "dynamic_per_row.onnx":  # forced: this rung "loses" 10 points
            figures.update(accuracy_drop=0.10, passed=False)
        return figures

    monkeypatch.setattr(stage, "measure_rung", measure_with_first_rung_broken)
    dev = pd.read_parquet(paths.split("dev"))
    tried, chosen = stage.climb_ladder("teacher", paths.onnx_dir, tmp_path / "w", dev, list(dev["text"][:8]),
                                       cfg.data.label_names, cfg.quantize, reference(paths, dev),
                                       stage.model_limits(cfg)["teacher"])
    assert [r["rung"] for r in tried] == ["dynamic_per_row", "static_minmax"]
    assert not tried[0]["passed"] and tried[1]["passed"] and chosen == "static_minmax.onnx"


@pytest.mark.heavy
def test_ladder_ends_at_fp32_when_no_quantized_rung_holds_accuracy(staged_pipeline, tmp_path, monkeypatch):
    cfg, paths = staged_pipeline
    real_measure = stage.measure_rung

    def only_fp32_passes(model, *args, **kwargs):
        figures = real_measure(model, *args, **kwargs)
        return {**figures, "passed": model.model_file == "fp32.onnx"}

    monkeypatch.setattr(stage, "measure_rung", only_fp32_passes)
    dev = pd.read_parquet(paths.split("dev"))
    quick = cfg.quantize.model_copy(update={"ladder": ["dynamic_per_tensor", "static_minmax", "fp32"]})
    tried, chosen = stage.climb_ladder("teacher", paths.onnx_dir, tmp_path / "w", dev, list(dev["text"][:8]),
                                       cfg.data.label_names, quick, reference(paths, dev),
                                       stage.model_limits(cfg)["teacher"])
    assert chosen == "fp32.onnx" and [r["passed"] for r in tried] == [False, False, True]
    assert tried[-1]["accuracy_drop"] == 0.0 and tried[-1]["agreement"] == 1.0 and tried[-1]["accuracy_drop_se"] == 0.0


def test_ladder_must_end_with_fp32(tiny_model_dir):
    raw = tiny_params(tiny_model_dir)
    raw["quantize"]["ladder"] = ["dynamic_per_tensor"]
    with pytest.raises(ConfigError, match="must end with fp32"):
        parse_config(raw)


def test_weight_sqnr_ranks_outlier_heavy_weights_as_sensitive():
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(64, 64))
    spiky = smooth.copy()
    spiky[0, 0] = 500.0  # one outlier stretches the scale: everything else rounds coarsely
    assert stage.weight_sqnr(spiky) < stage.weight_sqnr(smooth) - 10


def test_quantize_measures_every_rung_on_cpu_even_where_cuda_is_offered(staged_pipeline, tmp_path, gpu_host):
    """INT8 ops have no CUDA kernels: quantize's accuracy and latency must describe CPU serving on any host."""
    cfg, paths = staged_pipeline
    dev = pd.read_parquet(paths.split("dev")).head(8)
    quick = cfg.quantize.model_copy(update={"ladder": ["dynamic_per_tensor", "fp32"], "latency_rows": 2})
    stage.climb_ladder("teacher", paths.onnx_dir, tmp_path / "w", dev, list(dev["text"]), cfg.data.label_names, quick,
                       reference(paths, dev), stage.model_limits(cfg)["teacher"])
    assert gpu_host.sessions.requests and all(asked == [CPU] for asked in gpu_host.sessions.requests)


def test_the_shipped_quantized_folder_says_it_serves_on_cpu(staged_pipeline, gpu_host):
    _, paths = staged_pipeline
    assert json.loads((paths.int8_dir / "serving.json").read_text())["providers"] == [CPU]
    assert OnnxClassifier(paths.int8_dir).providers == [CPU] and gpu_host.sessions.requests == [[CPU]]


class _CountingModel:
    """Stands in for an OnnxClassifier: records the batches it was asked to score."""

    def __init__(self):
        self.calls: list[tuple[list[str], int]] = []

    def logits(self, texts, batch_size):
        self.calls.append((list(texts), batch_size))
        return np.zeros((len(texts), 2))


def test_batch1_latencies_time_each_text_alone_after_one_untimed_warm_up():
    model = _CountingModel()
    times = batch1_latencies_ms(model, ["a", "b", "c"])
    assert times.shape == (3,) and (times >= 0).all()
    assert model.calls == [(["a"], 1), (["a"], 1), (["b"], 1), (["c"], 1)]  # warm-up, then one call per text
    assert batch1_latencies_ms(_CountingModel(), []).shape == (0,)



def reference(paths: ArtifactPaths, rows: pd.DataFrame) -> stage.Reference:
    """The teacher FP32's predictions on `rows`: what every candidate is judged against."""
    return stage.teacher_reference(paths.onnx_dir, rows, ["negative", "positive"], 1, seed=42)


# --- the rung's drop decided on its paired interval, as the gate decides its own --------------------------------

class ConstructedModel:
    """Stands in for a rung's OnnxClassifier: answers each text with a set label, alone or in any batch."""

    def __init__(self, texts: list[str], predicted: np.ndarray):
        self.answers = dict(zip(texts, predicted.tolist()))

    def _logits(self, texts) -> np.ndarray:
        return np.eye(2, dtype=np.float32)[[self.answers[t] for t in texts]] * 4.0

    def logits(self, texts, batch_size):
        return self._logits(texts)

    def read(self, texts):
        return list(texts)

    def reading_logits(self, reading, groups):
        return self._logits(reading)


@pytest.mark.parametrize("case, outcome", [
    ((2000, 0.85, 0.85, 40), "pass"),            # nothing lost, resolved: upper end about +0.006
    ((1000, 0.80, 0.85, 20), "fail"),            # five points lost: lower end about +0.034
    ((950, 0.8214, 0.8351, 28), "inconclusive"),  # 1.37 points lost, SE 0.0067: about [+0.000, +0.027]
])
def test_a_rung_ships_only_when_its_drop_interval_passes(case, outcome):
    from tests.test_gate import constructed_pair

    y_true, candidate, teacher = constructed_pair(*case)
    rows = pd.DataFrame({"text": [f"review {i}" for i in range(len(y_true))], "label": y_true})
    cfg = parse_config(tiny_params(REPO)).quantize.model_copy(
        update={"max_accuracy_drop": 0.02, "confidence": 0.95, "min_agreement": 0.5, "latency_rows": 2})
    judged_against = stage.Reference(teacher, float((teacher == y_true).mean()), seed=42)
    figures = stage.measure_rung(ConstructedModel(list(rows["text"]), candidate), rows, judged_against,
                                 ["negative", "positive"], cfg, stage.Limits(cfg.max_accuracy_drop, cfg.min_agreement))
    assert figures["drop_outcome"] == outcome and figures["passed"] is (outcome == "pass")
    low, high = figures["accuracy_drop_interval"]
    assert low <= figures["accuracy_drop"] <= high
    assert figures["accuracy_drop"] == pytest.approx(case[2] - case[1], abs=1e-3)
    assert (figures["drop_rows_needed"] is None) is (outcome != "inconclusive")


def test_the_ladder_passes_over_a_rung_whose_drop_is_inconclusive(staged_pipeline, tmp_path, monkeypatch):
    cfg, paths = staged_pipeline
    real_measure = stage.measure_rung

    def first_rung_unsettled(model, *args, **kwargs):
        figures = real_measure(model, *args, **kwargs)
        if model.model_file == f"{cfg.quantize.ladder[0]}.onnx":
            figures.update(drop_outcome="inconclusive", drop_rows_needed=4139, passed=False)
        return figures

    monkeypatch.setattr(stage, "measure_rung", first_rung_unsettled)
    dev = pd.read_parquet(paths.split("dev"))
    quick = cfg.quantize.model_copy(update={"ladder": [cfg.quantize.ladder[0], "fp32"], "latency_rows": 2})
    tried, chosen = stage.climb_ladder("teacher", paths.onnx_dir, tmp_path / "w", dev, list(dev["text"][:8]),
                                       cfg.data.label_names, quick, reference(paths, dev),
                                       stage.model_limits(cfg)["teacher"])
    assert [r["drop_outcome"] for r in tried] == ["inconclusive", "pass"] and chosen == "fp32.onnx"
    assert tried[-1]["accuracy_drop_interval"] == [0.0, 0.0], "FP32 against itself loses exactly nothing"


# --- the ladder over model size: the student's rungs first, then the teacher's ----------------------------------

QUICK_LADDER = ["dynamic_per_row", "fp32"]


@pytest.fixture(scope="module")
def student_run(staged_pipeline, tmp_path_factory) -> ArtifactPaths:
    """A copy of the staged run with a 1-layer student (the teacher's first layer and head), exported."""
    from tests.test_export import student_project

    return student_project(staged_pipeline, tmp_path_factory.mktemp("student-run"))


def quantized(cfg, paths: ArtifactPaths, distill: dict | None = None, **quantize) -> dict:
    """Run the quantize stage with these quantize (and distill) settings; its quantization.json."""
    update = {"quantize": cfg.quantize.model_copy(update=quantize),
              "distill": cfg.distill.model_copy(update=distill or {})}
    stage.quantize.fn(cfg.model_copy(update=update), paths)
    return json.loads(paths.quantization_report.read_text())


def test_a_student_within_the_bounds_ships_and_the_shipped_folder_is_the_student(staged_pipeline, student_run):
    cfg, _ = staged_pipeline
    report = quantized(cfg, student_run, ladder=QUICK_LADDER)  # lenient tiny bounds: the student passes
    assert report["chosen_model"] == "student" and report["chosen"] == "dynamic_per_row"
    # The student's FP32 first, as its ladder's ceiling (never shipped), then its rungs.
    assert [(r["model"], r["rung"]) for r in report["rungs"]] == [("student", "fp32"), ("student", "dynamic_per_row")]
    ceiling = report["rungs"][0]
    assert ceiling["ceiling"] and ceiling["ceiling_holds"] and not ceiling["passed"]
    assert report["thresholds"]["student"] == {"max_accuracy_drop": cfg.distill.max_accuracy_drop,
                                               "min_agreement": cfg.distill.min_agreement}
    assert json.loads((student_run.int8_dir / "config.json").read_text())["num_hidden_layers"] == 1
    graph = onnx.load(str(student_run.int8_dir / "model.onnx")).graph
    assert sum(node.op_type == "MatMulIntegerToFloat" for node in graph.node) == 6  # one layer: Q, K, V, out, FFN x2
    models = report["models"]
    assert report["rungs"][1]["params"] == models["student"]["params"] < models["teacher"]["params"]
    assert report["size_ratio"] < models["student"]["fp32_mb"] / models["teacher"]["fp32_mb"] < 1
    timings = json.loads(student_run.run_record("quantize").read_text())["timings"]
    assert set(timings) == {"student:fp32", "student:dynamic_per_row"}
    assert timings["student:dynamic_per_row"]["latency_ms_b1"] > 0


@pytest.mark.heavy
def test_the_ladder_falls_back_to_the_teacher_when_the_student_misses_the_bound(staged_pipeline, tmp_path):
    from tests.test_export import student_project

    cfg, _ = staged_pipeline
    flipped = student_project(staged_pipeline, tmp_path, flip=True)  # disagrees with the teacher on every row
    # The student answers to distill's agreement bound, the teacher's rungs to quantize's.
    report = quantized(cfg, flipped, ladder=QUICK_LADDER, min_agreement=0.0, distill={"min_agreement": 0.5})
    by_model = {}
    for record in report["rungs"]:
        by_model.setdefault(record["model"], []).append(record)
    # The student's ladder has no fp32 rung (params.yaml, quantize.models): its FP32 is judged first as the
    # ceiling; it misses the agreement bound, so no INT8 rung of the student is built.
    assert [r["rung"] for r in by_model["student"]] == ["fp32"]
    ceiling = by_model["student"][0]
    assert ceiling["ceiling"] and not ceiling["ceiling_holds"] and ceiling["agreement"] < 0.5
    assert not ceiling["passed"]
    assert report["chosen_model"] == "teacher" and by_model["teacher"][-1]["passed"]
    assert report["agreement"] >= 0.5
    assert json.loads((flipped.int8_dir / "config.json").read_text())["num_hidden_layers"] == 2
    # Every candidate is judged against the same teacher FP32: one reference accuracy behind every drop.
    assert len({round(r["accuracy"] + r["accuracy_drop"], 9) for r in report["rungs"]}) == 1


def test_a_missing_student_is_skipped_with_the_reason_export_gave(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    copy = ArtifactPaths(tmp_path)
    shutil.copytree(paths.stage_dir("prepare"), copy.stage_dir("prepare"))
    shutil.copytree(paths.stage_dir("export"), copy.stage_dir("export"), ignore=shutil.ignore_patterns("student"))
    parity = copy.stage_dir("export") / "parity.json"
    skipped = {"skipped": "distill.enabled is false"}
    parity.write_text(json.dumps({**json.loads(parity.read_text()), "student": skipped}))
    report = quantized(cfg, copy, ladder=QUICK_LADDER)
    assert report["models"]["student"] == skipped
    assert report["chosen_model"] == "teacher" and {r["model"] for r in report["rungs"]} == {"teacher"}


@pytest.mark.parametrize("ladder, student", [
    (["dynamic_per_tensor", "static_minmax", "fp32"], ["dynamic_per_tensor", "static_minmax"]),
    (["fp32"], ["fp32"]),  # a ladder of only FP32: the student is tried in FP32 too
])
def test_the_student_climbs_the_ladder_without_fp32_unless_it_is_all_there_is(ladder, student):
    assert stage.model_rungs("student", ladder) == student
    assert stage.model_rungs("teacher", ladder) == ladder


@pytest.mark.parametrize("models, message", [
    (["student"], "end with teacher"),
    (["teacher", "student"], "end with teacher"),
    (["student", "student", "teacher"], "each model once"),
    ([], "at least 1"),
    (["pruned", "teacher"], "student"),
])
def test_quantize_models_must_name_each_model_once_and_end_with_the_teacher(tiny_model_dir, models, message):
    raw = tiny_params(tiny_model_dir)
    raw["quantize"]["models"] = models
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_weight_count_is_the_models_parameter_count(staged_pipeline):
    from tasks.training.modeling import load_classifier

    import torch

    _, paths = staged_pipeline
    model, _ = load_classifier(paths.model_dir, torch.device("cpu"))
    assert stage.weight_count(paths.onnx_dir / "model.onnx") == sum(p.numel() for p in model.parameters())
