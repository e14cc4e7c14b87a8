"""Benchmarks: the inference benchmark's own arithmetic, and a smoke run of every script in benchmarks/
on the tiny model and a few rows (each must print its JSON result line), so a refactor cannot break one."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from ruamel.yaml import YAML

from benchmarks.inference import encoder_gemms, int8_floor_ms, time_interleaved
from benchmarks.serving import (first_label, long_review_figures, max_rps_within, overload_figures,
                                shadow_counts, speedup)
from benchmarks.orchestration import per_stage_overhead
from benchmarks.simulate_week import cycle, first_alarm_delay, in_domain_pool, unshifted_alarms
from tasks.core.config import STAGES, parse_config
from tests.conftest import REPO, tiny_params


def test_int8_floor_is_each_layers_int8_gemms_plus_attention_products_at_the_fp32_rate():
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    assert encoder_gemms(config, 10) == {"qkv": (10, 4, 12), "attention_out": (10, 4, 4), "ffn_in": (10, 4, 8),
                                         "ffn_out": (10, 8, 4)}
    kernel_ms = {"int8_qkv": 3.0, "int8_attention_out": 2.0, "int8_ffn_in": 4.0, "int8_ffn_out": 5.0,
                 "fp32_ffn_in": 10.0, "empty": 1.0}
    # GEMMs less the empty call: 2 + 1 + 3 + 4 = 10 ms a layer; FP32 at 9 ms per 10*4*8 MACs;
    # attention products 2 * tokens^2 * hidden = 800 MACs a layer -> 22.5 ms; two layers
    assert int8_floor_ms(config, batch=1, tokens=10, kernel_ms=kernel_ms) == 2 * (10 + 22.5)


def test_interleaved_timing_gives_every_contender_its_runs_in_rotating_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    figures = time_interleaved(calls, runs=6, rounds=3)
    assert set(figures) == {"a", "b", "c"} and all(f["p50_ms"] >= 0 for f in figures.values())
    assert all(len(f["round_p50_ms"]) == 3 for f in figures.values()), "each round's own p50, for paired ratios"
    rounds = order[3 * 3:]  # after 3 warm-up calls each: 3 rounds of (1 untimed + 2 timed) calls per contender
    assert len(rounds) == 3 * 3 * 3
    assert rounds[:9] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert rounds[9:12] == ["b"] * 3 and rounds[18:21] == ["c"] * 3, "each round starts one contender later"


def test_targets_judge_each_bound_and_a_missing_value_fails():
    from benchmarks._targets import judge, target_lines, with_targets

    targets = (("speed", ">=", 8.0, "equal reading"), ("gap", "<=", 0.01), ("errors", "==", 0), ("absent", ">=", 1))
    summary = with_targets({"speed": 8.0, "gap": 0.02, "errors": 0, "absent": None}, targets)
    assert summary["targets"] == {
        "speed": {"target": ">= 8", "value": 8.0, "verdict": "PASS", "pass": True, "note": "equal reading"},
        "gap": {"target": "<= 0.01", "value": 0.02, "verdict": "FAIL", "pass": False},
        "errors": {"target": "== 0", "value": 0, "verdict": "PASS", "pass": True},
        "absent": {"target": ">= 1", "value": None, "verdict": "FAIL", "pass": False}}
    assert summary["all_targets_pass"] is False
    assert with_targets({"speed": 9.5}, targets[:1])["all_targets_pass"] is True
    assert judge({}, targets[:1])["speed"]["pass"] is False, "a key the summary lacks fails"
    assert target_lines(summary["targets"])[:2] == ["  target speed >= 8 (equal reading): 8.0 -> PASS",
                                                    "  target gap <= 0.01: 0.02 -> FAIL"]


def test_a_target_with_rounds_or_an_interval_passes_only_when_all_of_it_meets_the_bound():
    from benchmarks._targets import target_lines, with_targets

    targets = (("speed", ">=", 8.0),)
    verdicts = {rounds: with_targets({"speed": 8.5, "speed_rounds": list(rounds)}, targets)["targets"]["speed"]
                for rounds in ((8.1, 9.0, 8.4), (7.9, 9.0, 8.4), (7.1, 7.9, 6.0))}
    assert [(v["verdict"], v["pass"]) for v in verdicts.values()] == [("PASS", True), ("INCONCLUSIVE", False),
                                                                      ("FAIL", False)]
    assert verdicts[(7.9, 9.0, 8.4)]["rounds"] == [7.9, 9.0, 8.4]
    assert target_lines({"speed": verdicts[(7.9, 9.0, 8.4)]}) == [
        "  target speed >= 8: 8.5 [3 rounds: 7.9-9.0] -> INCONCLUSIVE"]
    gaps = {(low, high): with_targets({"gap": round((low + high) / 2, 4), "gap_interval": [low, high]},
                                      (("gap", "<=", 0.01),))["targets"]
            for low, high in ((-0.004, 0.009), (-0.007, 0.022), (0.012, 0.03))}
    assert [(t["gap"]["verdict"], t["gap"]["interval"]) for t in gaps.values()] == [
        ("PASS", [-0.004, 0.009]), ("INCONCLUSIVE", [-0.007, 0.022]), ("FAIL", [0.012, 0.03])], "as the gate decides"
    assert target_lines(gaps[(-0.007, 0.022)]) == [
        "  target gap <= 0.01: 0.0075 [interval -0.007, 0.022] -> INCONCLUSIVE"]
    summary = with_targets({"speed": None, "speed_rounds": None}, targets)
    assert summary["targets"]["speed"]["verdict"] == "FAIL" and summary["all_targets_pass"] is False
    assert with_targets({"speed": 9.0, "speed_rounds": [9.0]}, targets)["all_targets_pass"] is True


def test_benchmark_targets_are_the_compression_targets():
    from benchmarks import inference, long_reviews, serving

    bounds = lambda targets: {key: (op, bound) for key, op, bound, *_ in targets}  # noqa: E731
    assert bounds(inference.TARGETS) == {"workload_speedup_vs_hf_pipeline": (">=", 8.0),
                                         "student_speedup_b1": (">=", 7.0), "student_speedup_b32x128": (">=", 3.5)}
    assert bounds(serving.TARGETS)["speedup_vs_hf_pipeline"] == (">=", 8.0)
    assert bounds(serving.TARGETS)["speedup_vs_hf_pipeline_equal_reading"] == (">=", 8.0)
    assert bounds(long_reviews.TARGETS) == {"long_review_accuracy_gap": ("<=", 0.01)}


def test_folder_reading_by_links_the_served_files_and_sets_only_the_long_text_rule(tmp_path):
    from benchmarks._folders import folder_reading_by

    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx")
    serving = {"model_file": "model.onnx", "max_length": 64, "long_text": {"rule": "window", "stride": 31}}
    (folder / "serving.json").write_text(json.dumps(serving))
    view = folder_reading_by(folder, {"rule": "head"}, tmp_path / "view")
    assert (view / "model.onnx").is_symlink() and (view / "model.onnx").read_bytes() == b"onnx"
    assert json.loads((view / "serving.json").read_text()) == {**serving, "long_text": {"rule": "head"}}
    assert json.loads((folder / "serving.json").read_text()) == serving, "the served folder is not touched"


def assert_targets(result: dict, expected: dict[str, str]) -> None:
    """The JSON line judges exactly `expected` ({key: "OP BOUND"}): each with its value, a verdict and a boolean pass
    (true for PASS alone; a null value fails), and all_targets_pass is their conjunction."""
    targets = result["targets"]
    assert {key: check["target"] for key, check in targets.items()} == expected
    for key, check in targets.items():
        assert isinstance(check["pass"], bool) and check["value"] == result[key], key
        assert check["pass"] is (check["verdict"] == "PASS") and check["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert check["value"] is not None or check["pass"] is False, key
    assert result["all_targets_pass"] is all(check["pass"] for check in targets.values())


def run_benchmark(script: str, *args: str, cwd: Path) -> dict:
    """Run benchmarks/<script> as `make bench*` does; return the JSON line it ends with."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def tiny_project(tmp_path, tiny_model_dir) -> Path:
    """A project folder whose params.yaml names the tiny model (and the suites beside it)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "expectations").symlink_to(REPO / "expectations")
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(tiny_params(tiny_model_dir), handle)
    return root


@pytest.mark.e2e
def test_cpu_kernels_benchmark_smoke_run_prints_its_json(tmp_path):
    result = run_benchmark("cpu_kernels.py", "--hidden", "32", "--intermediate", "64", "--runs", "3",
                           "--layer-norm-runs", "3", cwd=tmp_path)
    fields = {"fp32_gmacs", "int8_gmacs", "skip_layer_norm_us", "add_layer_norm_us", "int8_over_fp32",
              "skip_layer_norm_slowdown"}
    assert set(result) == {"b1x32", "b32x128"} and all(set(shape) == fields for shape in result.values())


@pytest.mark.e2e
def test_data_contracts_benchmark_smoke_run_prints_its_json(tiny_project, tmp_path):
    out = tmp_path / "data_contracts.json"
    result = run_benchmark("data_contracts.py", "--sizes", "1000", "--project", str(tiny_project), "--out", str(out),
                           cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    (figures,) = result["details"]
    assert figures["rows"] == 1000 and figures["contracts_pass"] is True
    assert figures["near_duplicate_pairs"] >= 5, "the 5 planted near-duplicate pairs are found"
    assert "token_contract_seconds" in figures, "the smallest size also times the token-length contract"


@pytest.mark.e2e
def test_train_vs_trainer_benchmark_smoke_run_prints_its_json(tiny_project, tiny_model_dir, tmp_path):
    out = tmp_path / "train_vs_trainer.json"
    result = run_benchmark("train_vs_trainer.py", "--project", str(tiny_project), "--train-rows", "32",
                           "--dev-rows", "16", "--rounds", "1", "--threads", "1", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    contenders = ("tunegate", "trainer_run_glue", "trainer_best")
    assert all(0.0 <= result[name]["dev_accuracy"] <= 1.0 and result[name]["samples_per_s"] > 0 for name in contenders)
    assert 0 < result["train_rows"] <= 32 and 0 < result["dev_rows"] <= 16
    assert result["epochs"] == 1 and result["rounds"] == 1 and result["base_model"] == str(tiny_model_dir)


def extra_imdb_rows(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` IMDB rows of the packaged data that `frame` lacks (the tiny run's splits hold every IMDB row it has)."""
    from tasks.core.data import default_data_source

    full = pd.read_csv(default_data_source())
    imdb = full[(full["source"] == "imdb") & ~full["text"].isin(frame["text"])]
    return imdb.groupby("label").head(rows // 2)


def finished_project(root: Path, tmp_path: Path, extra_imdb: int) -> Path:
    """A finished run's artifacts (linked) and its data plus `extra_imdb` IMDB reviews no stage saw (the tiny run
    puts every IMDB row of its data into a split)."""
    project = tmp_path / "finished"
    project.mkdir()
    (project / "artifacts").symlink_to(root / "artifacts")
    (project / "data").mkdir()
    data = pd.read_csv(root / "data" / "movie_reviews.csv")
    pd.concat([data, extra_imdb_rows(data, extra_imdb)]).to_csv(project / "data" / "movie_reviews.csv", index=False)
    return project


@pytest.mark.e2e
def test_inference_benchmark_smoke_run_on_a_finished_run_prints_its_json(staged_pipeline, tiny_project, tmp_path,
                                                                         monkeypatch):
    cfg, paths = staged_pipeline
    # The finished run's artifacts, and its data plus 8 IMDB reviews no stage saw: the real workload's long part.
    project = finished_project(paths.root, tmp_path, extra_imdb=8)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the HF pipeline loads the local folder: nothing may be downloaded
    out = tmp_path / "inference.json"
    result = run_benchmark("inference.py", "--project", str(project), "--params", str(tiny_project / "params.yaml"),
                           "--runs-b1", "2", "--runs-b32", "2", "--rounds", "1", "--long-texts", "6",
                           "--short-texts", "8", "--reading-rounds", "1", "--workload-imdb", "6",
                           "--workload-rounds", "1", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    quantized = json.loads(paths.quantization_report.read_text())
    shipped_model = quantized.get("chosen_model", "teacher")
    student = (paths.student_dir / "config.json").is_file()
    assert result["student"]["present"] is student and result["shipped"] == {"model": shipped_model,
                                                                             "rung": quantized["chosen"]}
    teacher = {"pytorch_eager_fp32", "onnxruntime_fp32", "onnxruntime_optimized_fp32", "onnxruntime_int8"}
    students = {"student_pytorch_eager_fp32", "student_onnxruntime_fp32", "student_onnxruntime_int8"}
    assert set(result["contenders"]) == teacher | students
    assert all((result["contenders"][name] is not None) is student for name in students), "no student: null rows"
    # The benchmark scores the shipped INT8 model on the test split, as the gate does (batches may differ: one row);
    # the teacher's INT8 is the shipped one when the teacher shipped, else quantize's first rung built here.
    assert result["int8_rung"] == (quantized["chosen"] if shipped_model == "teacher" else "dynamic_per_row")
    shipped = {"teacher": "onnxruntime_int8", "student": "student_onnxruntime_int8"}[shipped_model]
    gate = json.loads(paths.decision.read_text())["metrics"]
    assert result["contenders"][shipped]["accuracy"] == pytest.approx(gate["accuracy"]["value"],
                                                                     abs=1.01 / gate["rows"])
    assert set(result["int8_ceiling"]) == {"b1", "b32x128"}
    student_keys = ("student_speedup_b1", "student_speedup_b32x128", "student_accuracy_drop", "student_agreement")
    if student:
        assert all(result[key] > 0 and result[f"{key}_rounds"] == [result[key]]
                   for key in ("student_speedup_b1", "student_speedup_b32x128"))
        low, high = result["student_accuracy_drop_interval"]
        assert low <= result["student_accuracy_drop"] <= high and 0.0 <= result["student_agreement"] <= 1.0
        assert result["student_judged"]["rows"] == result["test_rows"] and result["student_judged"]["batch_size"] == 1
        assert result["student"]["layers"] == len(cfg.distill.keep_layers)
        assert result["student"]["params"] < result["student"]["teacher_params"]
    else:
        assert all(result[key] is None for key in student_keys)
    # texts/s per reading rule: one per distinct window set of train.long_text.candidates (aggregates cost alike)
    reading = result["reading_texts_per_s"]
    assert set(reading) == {"head", "head_tail(16)", "window(stride 62, at most 4, mean_prob)",
                            "window(stride 62, mean_prob)", "window(stride 31, mean_prob)"}
    assert all(figures["long"] > 0 and figures["short"] > 0 for figures in reading.values())
    assert result["reading_rows"]["long"] == 6 and result["reading_rows"]["short"] == 8
    windows = result["reading_windows_per_long_text"]
    assert windows["head"] == windows["head_tail(16)"] == 1.0 and windows["window(stride 31, mean_prob)"] > 1.0
    # The real workload: the test split + the 6 unseen reviews, by predict's code path and by the HF pipeline.
    per_s = result["workload_texts_per_s"]
    assert set(per_s) == {"tunegate_predict", "hf_pipeline"} and all(v > 0 for v in per_s.values())
    # one round: the median of the rounds' paired ratios is the ratio of the texts/s
    assert result["workload_speedup_vs_hf_pipeline_rounds"] == [result["workload_speedup_vs_hf_pipeline"]]
    assert result["workload_speedup_vs_hf_pipeline"] == pytest.approx(per_s["tunegate_predict"] / per_s["hf_pipeline"],
                                                                      rel=0.01)
    assert result["workload_rows"]["test"] == result["test_rows"] and result["workload_rows"]["imdb"] == 6
    assert result["workload_rows"]["imdb_unseen_pool"] >= 6
    for figures in result["workload_accuracy"].values():
        assert all(0.0 <= figures[part] <= 1.0 for part in ("all", "test", "imdb"))
    own = result["workload_shipped_rule"]
    served_rule = json.loads((paths.int8_dir / "serving.json").read_text()).get("long_text")
    from tasks.runtime.long_text import describe, normalise

    assert own["rule"] == describe(normalise(served_rule)) and own["imdb_texts_per_s"] > 0
    assert 0.0 <= own["imdb_accuracy"] <= 1.0
    assert_targets(result, {"workload_speedup_vs_hf_pipeline": ">= 8", "student_speedup_b1": ">= 7",
                            "student_speedup_b32x128": ">= 3.5"})
    assert "equal reading" in result["targets"]["workload_speedup_vs_hf_pipeline"]["note"]


@pytest.mark.e2e
def test_batch_invariance_benchmark_smoke_run_on_a_finished_run_prints_its_json(staged_pipeline, tiny_project,
                                                                                tmp_path):
    cfg, paths = staged_pipeline
    out = tmp_path / "batch_invariance.json"
    result = run_benchmark("batch_invariance.py", "--project", str(paths.root), "--params",
                           str(tiny_project / "params.yaml"), "--rows", "40", "--rounds", "1", "--out", str(out),
                           cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    assert set(result["accuracy"]) == {"dynamic_per_row", "dynamic_per_tensor", "fp32"}
    row = result["batching"]["dynamic_per_row"]
    assert set(row) == {"2", "8", "32", "64"} and all(f["label_agreement"] == 1.0 for f in row.values())
    assert result["targets"] == {"row_labels_identical": True, "row_max_prob_delta_within": True}
    assert all(rate > 0 for rates in result["texts_per_s"].values() for rate in rates.values())


def test_inference_workload_is_the_test_split_then_unseen_undistilled_reviews_in_the_datas_order(tmp_path):
    from benchmarks.inference import workload_rows
    from tasks.core.paths import ArtifactPaths
    from tasks.judging.compare import row_keys

    cfg = parse_config(tiny_params(REPO))
    paths = ArtifactPaths(tmp_path)
    paths.split("test").parent.mkdir(parents=True)
    splits = {"train": ["Seen in training."], "dev": ["a dev text"], "test": ["test one", "test two"]}
    for name, texts in splits.items():
        pd.DataFrame({"text": texts, "label": [1, 0][:len(texts)]}).to_parquet(paths.split(name))
    distilled = paths.stage_dir("distill") / "transfer_rows.json"
    distilled.parent.mkdir(parents=True)
    distilled.write_text(json.dumps({"rows": row_keys(["Distilled on."])}))
    reviews = [f"review {i}" for i in range(6)]
    (tmp_path / "data").mkdir()
    pd.DataFrame({"text": ["seen IN training.", "distilled on.", *reviews, "a short one"],
                  "label": [0, 1, 0, 1, 0, 1, 0, 1, 0],
                  "source": ["imdb"] * 8 + ["rotten_tomatoes"]}).to_csv(tmp_path / cfg.data.path, index=False)
    rows, pool = workload_rows(cfg, paths, imdb_rows=4, source="imdb")
    assert pool == 6, "neither a split's text nor a distilled one (however cased) is in the pool"
    assert rows["text"].to_list()[:2] == ["test one", "test two"] and rows["label"].to_list()[:2] == ["positive",
                                                                                                    "negative"]
    picked = rows["text"].to_list()[2:]
    assert len(picked) == 4 and set(picked) <= set(reviews)
    assert picked == sorted(picked, key=reviews.index), "the sample keeps the data's order"
    assert rows["part"].to_list() == ["test"] * 2 + ["imdb"] * 4
    assert workload_rows(cfg, paths, imdb_rows=0, source="imdb")[0]["part"].to_list() == ["test", "test"]


def test_inference_benchmark_finds_no_student_when_distillation_is_off(tmp_path):
    from benchmarks.inference import find_student
    from tasks.core.paths import ArtifactPaths

    paths = ArtifactPaths(tmp_path)
    assert find_student(paths)[0] is None and "distill stage" in find_student(paths)[1]
    paths.stage_dir("distill").mkdir(parents=True)
    (paths.stage_dir("distill") / "distill.json").write_text(json.dumps({"enabled": False}))
    assert find_student(paths) == (None, "no student: distill.enabled is false")


def test_long_reviews_takes_only_rows_of_the_source_whose_normalised_text_is_in_no_split():
    from benchmarks.long_reviews import seeded_sample, unseen_rows
    from tasks.judging.compare import row_keys

    cfg = parse_config(tiny_params(REPO))
    data = pd.DataFrame({"text": ["A long review.", "Seen  in TRAINING ", "a LONG review.", "fresh one", "short one",
                                  None],
                         "label": [1, 0, 1, 0, 1, 0],
                         "source": ["imdb", "imdb", "imdb", "imdb", "rotten_tomatoes", "imdb"]})
    rows = unseen_rows(data, cfg, "imdb", set(row_keys(["seen in training"])))
    # the trained text is left out however it is spaced or cased, a repeated text counts once, labels by name
    assert rows.to_dict("records") == [{"text": "A long review.", "label": "positive"},
                                       {"text": "fresh one", "label": "negative"}]
    assert sorted(seeded_sample(rows, 5, seed=1)["text"]) == sorted(rows["text"]), "fewer than asked: all of them"
    assert len(seeded_sample(rows, 1, seed=1)) == 1


@pytest.mark.e2e
def test_long_reviews_benchmark_scores_unseen_reviews_through_predict_and_prints_its_json(staged_pipeline,
                                                                                        tiny_project, tmp_path):
    from tasks.judging.compare import row_keys
    from tasks.runtime.long_text import describe, normalise

    cfg, paths = staged_pipeline
    project = finished_project(paths.root, tmp_path, extra_imdb=16)
    work, out = tmp_path / "work", tmp_path / "long_reviews.json"
    result = run_benchmark("long_reviews.py", "--project", str(project), "--params",
                           str(tiny_project / "params.yaml"), "--rows", "12", "--work", str(work), "--out", str(out),
                           cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    release = paths.stage_dir("gate") / "release"
    assert Path(result["model"]).resolve() == release.resolve()
    served_rule = normalise(json.loads((release / "serving.json").read_text()).get("long_text"))
    assert result["long_text"] == describe(served_rule)
    # 12 IMDB reviews of the data that no split holds
    scored = pd.read_csv(work / "imdb.predictions.csv")
    data = pd.read_csv(project / "data" / "movie_reviews.csv")
    split_keys = {key for split in ("train", "dev", "test")
                  for key in row_keys(list(pd.read_parquet(paths.split(split))["text"]))}
    assert len(scored) == result["rows"]["imdb"] == 12
    assert set(scored["text"]) <= set(data.loc[data["source"] == "imdb", "text"])
    assert not set(row_keys(list(scored["text"]))) & split_keys
    # accuracies are those of predict's own output, with their intervals; the RT figure covers the test split
    for key, frame in (("imdb_unseen_accuracy", scored), ("rt_test_accuracy",
                                                          pd.read_csv(work / "rotten_tomatoes_test.predictions.csv"))):
        assert result[key] == pytest.approx((frame["predicted_label"] == frame["label"]).mean(), abs=1e-4)
    test = pd.read_parquet(paths.split("test"))
    assert result["rows"]["rt"] == int((test["source"] == "rotten_tomatoes").sum()), "the test split's RT rows"
    low, high = result["imdb_interval"]
    assert low <= result["imdb_unseen_accuracy"] <= high
    assert result["imdb_texts_per_s"] > 0 and result["rt_texts_per_s"] > 0
    assert result["imdb_longer_than_window"] > 0.5, "IMDB reviews are longer than the tiny run's 32-token window"
    # the teacher's exported FP32 folder on the same reviews, read by the shipped rule; the gap is teacher - shipped
    teacher = pd.read_csv(work / "imdb_teacher.predictions.csv")
    assert teacher["text"].to_list() == scored["text"].to_list()
    assert Path(result["teacher_model"]).resolve() == paths.onnx_dir.resolve()
    assert result["imdb_teacher_accuracy"] == pytest.approx((teacher["predicted_label"] == teacher["label"]).mean(),
                                                            abs=1e-4)
    assert result["long_review_accuracy_gap"] == pytest.approx(
        result["imdb_teacher_accuracy"] - result["imdb_unseen_accuracy"], abs=2e-4)
    low, high = result["long_review_accuracy_gap_interval"]
    assert low <= result["long_review_accuracy_gap"] <= high and result["imdb_teacher_texts_per_s"] > 0
    assert_targets(result, {"long_review_accuracy_gap": "<= 0.01"})


def level(rps: float, p99_ms: float, errors: dict | None = None, timeouts: int = 0) -> dict:
    return {"rps": rps, "p99_ms": p99_ms, "errors": errors or {}, "timeouts": timeouts, "connection_errors": 0}


def test_serving_sustainable_rate_is_the_best_level_within_p99_100ms_that_failed_nothing():
    levels = [level(50, 20), level(180, 90), level(300, 100, errors={"429": 3}), level(400, 350)]
    assert max_rps_within(levels) == 180
    assert max_rps_within([level(40, 120)]) == 0.0


def test_serving_speedup_falls_back_to_the_hf_best_rate_when_it_never_meets_the_p99_bound():
    assert speedup(300.0, 50.0, 60.0) == (6.0, "hf_max_rps_at_p99_100ms")
    ratio, basis = speedup(300.0, 0.0, 60.0)
    assert ratio == 5.0 and basis.startswith("hf_best_rps_any_p99")
    assert speedup(300.0, 0.0, 0.0)[0] is None


def test_serving_overload_counts_only_answers_given_inside_the_window_as_served():
    raw = {"window_s": 2.0, "status": [200, 200, 200, 429, 503], "latency_ms": [10.0, 20.0, 900.0, 1.0, 2.0],
           "done_s": [0.5, 1.5, 2.4, 1.0, 1.1], "sent": 6, "timeouts": 1, "connection_errors": 0, "saturated": 0}
    figures = overload_figures(raw, sustainable_rps=1.0, offered_rps=2.0)
    assert figures["served_rps"] == 1.0 and figures["served_share"] == 1.0, "the answer after the window is late"
    assert figures["refusals_429"] == 1 and figures["errors_5xx"] == 1 and figures["timeouts"] == 1
    assert figures["p99_ms"] > 800, "a late answer still counts in the latency of served requests"


def test_serving_long_review_figures_count_refusals_and_the_cost_of_the_reviews_sent():
    raw = {"window_s": 2.0, "status": [200, 200, 429, 200], "latency_ms": [100.0, 120.0, 1.0, 300.0],
           "index": [0, 1, 0, 1], "timeouts": 0, "connection_errors": 0}
    figures = long_review_figures(raw, windows=[4, 8], tokens=[256, 512])
    assert figures["served"] == 3 and figures["rps"] == 1.5 and figures["refusals_429"] == 1
    assert figures["p50_ms"] == 120.0 and figures["p99_ms"] > 290, "refused requests are not in the latency"
    assert figures["windows_per_review_mean"] == 6.0 and figures["tokens_per_review_mean"] == 384.0


def test_serving_reads_the_shadows_counts_from_metrics():
    from tasks.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.on_shadow_mirrored(10)
    for agree in (True, True, False):
        metrics.on_shadow_scored(agree)
    metrics.on_shadow_dropped("queue_full", 5)
    metrics.on_shadow_dropped("stopping", 1)
    metrics.on_shadow_failed(1)
    metrics.on_shadow_queue(2)
    counts = shadow_counts(metrics.exposition()[0].decode())
    assert counts == {"mirrored": 10, "scored": 3, "dropped": 6,
                      "dropped_by_reason": {"queue_full": 5, "unavailable": 0, "stopping": 1}, "failed": 1,
                      "disagreements": 1, "load_failures": 0, "queued": 2}


def test_serving_reads_the_label_from_either_contenders_answer():
    tunegate = {"model_version": "v1", "predictions": [{"label": "positive", "probabilities": {}}]}
    assert first_label(tunegate) == "positive"
    assert first_label({"label": "negative", "score": 0.9}) == "negative"
    assert first_label({"detail": "queue full"}) is None


@pytest.mark.e2e
def test_serving_benchmark_smoke_run_serves_every_contender_mirrors_the_overload_and_prints_its_json(
        staged_pipeline, tiny_project, tmp_path):
    # One run with --shadow: the plain contenders and levels run as without it, then the overload again mirrored.
    _, paths = staged_pipeline
    out = tmp_path / "serving.json"
    result = run_benchmark("serving.py", "--smoke", "--project", str(tiny_project), "--model", str(paths.int8_dir),
                           "--hf-model", str(paths.model_dir), "--texts", str(paths.split("test")), "--threads", "1",
                           "--shadow", str(paths.onnx_dir), "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    assert {"max_rps_at_p99_100ms", "speedup_vs_hf_pipeline", "speedup_vs_hf_pipeline_equal_reading",
            "overload_served_share", "overload_p99_ms", "overload_timeouts", "overload_5xx", "loadgen_ceiling_rps",
            "batched_label_agreement", "targets", "all_targets_pass"} <= set(result)
    contenders = {"tunegate_batched", "tunegate_unbatched", "tunegate_batched_heads", "hf_pipeline"}
    assert set(result["max_rps_at_p99_100ms"]) == set(result["contenders"]) == contenders
    sustainable = result["max_rps_at_p99_100ms"]
    for key, numerator in (("speedup_vs_hf_pipeline", "tunegate_batched"),
                           ("speedup_vs_hf_pipeline_equal_reading", "tunegate_batched_heads")):
        if sustainable["hf_pipeline"] > 0:  # else the basis is the pipeline's best rate at any latency
            assert result[key] == pytest.approx(sustainable[numerator] / sustainable["hf_pipeline"], abs=0.01)
    for name, contender in result["contenders"].items():
        assert [f["concurrency"] for f in contender["levels"]] == [1, 4]
        assert all(f["requests"] > 0 and "no_label" not in f["errors"] for f in contender["levels"]), name
    assert result["loadgen_ceiling_rps"] > 0 and result["overload"]["arrivals"] > 0
    assert 0.0 <= result["batched_label_agreement"] <= 1.0
    assert_targets(result, {"speedup_vs_hf_pipeline": ">= 8", "speedup_vs_hf_pipeline_equal_reading": ">= 8",
                            "overload_served_share": ">= 0.9", "overload_p99_ms": "<= 250", "overload_timeouts": "== 0",
                            "overload_5xx": "== 0", "long_review_alone_refusals": "== 0",
                            "long_review_timeouts": "== 0", "long_review_5xx": "== 0",
                            "overload_shadow_served_share": ">= 0.9", "overload_shadow_p99_ms": "<= 250",
                            "overload_shadow_timeouts": "== 0", "overload_shadow_5xx": "== 0"})
    if result["long_review_texts"]:  # test texts read as several windows, sent by 8 clients back to back
        assert result["long_review"]["requests"] > 0 and result["long_review_refusals"] is not None
        assert result["long_review"]["alone"]["requests"] > 0 and result["long_review_alone_refusals"] == 0
    # The mirrored overload.
    assert "tunegate_batched_shadow" not in result["contenders"], "the shadowed server runs the overload only"
    shadowed = result["overload_shadow"]
    assert shadowed["arrivals"] > 0 and shadowed["offered_rps"] == result["overload"]["offered_rps"]
    counts = shadowed["shadow"]
    assert counts["mirrored"] > 0 and counts["failed"] == 0 and counts["load_failures"] == 0
    assert counts["scored"] + counts["dropped"] + counts["queued"] <= counts["mirrored"]
    assert result["overload_shadow_scored"] == counts["scored"]
    for key in ("overload_shadow_served_share", "overload_shadow_p99_ms", "overload_shadow_timeouts",
                "overload_shadow_5xx"):
        assert key in result["targets"] and result["targets"][key]["value"] == result[key]


@pytest.mark.e2e
def test_simulate_week_smoke_run_serves_a_tiny_week_and_prints_its_json(staged_pipeline, tiny_model_dir, tmp_path):
    _, paths = staged_pipeline
    params = tiny_params(tiny_model_dir)
    params["monitor"].update(min_window_texts=20, reference_rows=100, domain_max_texts=100)
    root = tmp_path / "week-project"
    root.mkdir()
    (root / "data").symlink_to(paths.root / "data")
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(params, handle)
    out = tmp_path / "week.json"
    # 2 days x 2 windows x 20 texts; the shift (IMDB rows of the fixture data) half a window into day 2.
    result = run_benchmark("simulate_week.py", "--project", str(root), "--model", str(paths.int8_dir),
                           "--release", str(paths.stage_dir("gate") / "release"), "--train", str(paths.split("train")),
                           "--days", "2", "--windows-per-day", "2", "--shift-day", "1", "--texts-per-window", "20",
                           "--shuffled-windows", "3", "--threads", "1", "--out", str(out), cwd=tmp_path)
    assert {"detection_delay_texts", "false_alarms_unshifted", "false_alarm_share_shuffled", "windows",
            "texts_per_window", "retrain"} <= set(result)
    assert result["windows"] == 4 and result["texts_per_window"] == 20 and result["shift_at_text"] == 50
    assert len(json.loads(out.read_text())["window_judgements"]) == 4
    assert all(j["judged"] and j["texts"] == 20 for j in json.loads(out.read_text())["window_judgements"])
    # Long IMDB reviews after short Rotten Tomatoes sentences: the window holding the shift's second half alarms.
    assert result["detection_delay_texts"] is not None and result["detection_delay_texts"] <= 30
    assert 0.0 <= result["false_alarm_share_shuffled"] <= 1.0
    assert result["retrain"] == {"ran": False, "decision": None, "why_not": result["retrain"]["why_not"]}
    # The label-free estimate of every wholly in-domain window, against the accuracy its true labels give.
    assert result["estimate_unshifted"]["windows"] == 2 and 0.0 <= result["estimate_unshifted"]["coverage"] <= 1.0
    assert result["estimate_shifted"]["windows"] == 1


@pytest.mark.slow
@pytest.mark.e2e
def test_orchestration_benchmark_smoke_run_on_a_finished_tiny_project_prints_its_json(make_project, staged_pipeline,
                                                                                      tmp_path):
    # A git + DVC project holding the outputs of a finished tiny run (the staged pipeline's, same params) whose
    # dvc.lock does not record them yet: --copy always records them in a scratch copy, as it does for a workspace
    # with edited code, and times that copy (cheaper than a `dvc repro` here).
    _, paths = staged_pipeline
    root = make_project(name="finished-project")
    shutil.copytree(paths.root / "artifacts", root / "artifacts")
    out = tmp_path / "orchestration.json"
    result = run_benchmark("orchestration.py", "--project", str(root), "--repeats", "1", "--warmup", "0",
                           "--copy", "always", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    assert {"dvc_repro_seconds", "flow_seconds", "flow_in_process_seconds", "api_startup_seconds",
            "per_stage_overhead_seconds", "stages", "target", "pass"} <= set(result)
    assert result["stages"] == len(STAGES) and result["mode"] == "copy" and result["repeats"] == 1
    assert all(len(runs) == 1 for runs in result["runs"].values())
    assert not (root / "dvc.lock").exists(), "the project itself is never written to"


def test_simulate_week_delay_counts_texts_from_the_shift_to_the_end_of_the_first_alarming_window():
    alarmed = [False, True, False, True, True]  # windows of 10 texts; the shift at text 35
    assert first_alarm_delay(alarmed, 10, 35) == 5, "the window of texts 30-39 holds the shift and alarms"
    assert unshifted_alarms(alarmed, 10, 35) == 1, "the alarm on texts 10-19 is false: no shifted text in it"
    assert first_alarm_delay([True, False, False], 10, 15) is None, "an alarm before the shift detects nothing"


def test_simulate_week_in_domain_stream_is_the_held_out_splits_and_cycles_in_fresh_shuffles():
    dev, test = pd.DataFrame({"text": ["b", "c", "a"]}), pd.DataFrame({"text": ["e", "b"]})
    pool = in_domain_pool([dev, test], {"a"})  # "a": a text also in the train split (a duplicate) is left out
    assert pool == ["b", "c", "e"]
    stream = cycle(pool, 7, np.random.default_rng(0))
    assert len(stream) == 7 and sorted(stream[:3]) == sorted(stream[3:6]) == pool, "each pass holds every text once"


def test_orchestration_overhead_is_the_flows_extra_seconds_shared_by_the_stages():
    assert per_stage_overhead(flow_seconds=10.0, dvc_seconds=3.0, stages=7) == 1.0


@pytest.mark.e2e
def test_long_text_recipes_packs_a_carry_folder_and_its_quick_sweep_writes_a_row_per_config(tiny_model_dir, tmp_path):
    from benchmarks.long_text_recipes import pack
    from tests.conftest import keyword_reviews

    prepare = tmp_path / "prepare"
    prepare.mkdir()
    short = keyword_reviews(192)
    for split, rows in (("train", short[:96]), ("dev", short[96:144]), ("test", short[144:])):
        rows.to_parquet(prepare / f"{split}.parquet")
    # "IMDB" reviews of ~100 words (longer than one 64-token window): eight same-label keyword texts joined.
    parts = keyword_reviews(8 * 48, seed=1)
    long = pd.DataFrame({"text": [" . ".join(parts["text"][i::48][:8]) for i in range(48)],
                         "label": [i % 2 for i in range(48)], "source": "imdb"})
    pd.concat([short, long]).to_csv(tmp_path / "raw.csv", index=False)
    carry = tmp_path / "carry"
    megabytes = pack(carry, str(tiny_model_dir), prepare, tmp_path / "raw.csv",
                     {"imdb_train": 16, "imdb_dev": 12, "imdb_eval": 12})
    packed = pd.read_parquet(carry / "data.parquet")
    assert 0 < megabytes < 55 and (carry / "model" / "model.safetensors").is_file()
    assert packed.groupby("split").size().to_dict() == {"train": 96, "dev": 48, "test": 48, "imdb_train": 16,
                                                        "imdb_dev": 12, "imdb_eval": 12}
    assert packed[packed["split"] == "test"]["text"].tolist() == short[144:]["text"].tolist(), "RT split kept as is"
    imdb = packed[packed["split"].str.startswith("imdb")]
    assert imdb["text"].is_unique and (imdb.groupby("split")["label"].mean() == 0.5).all(), "disjoint, stratified"

    result = run_benchmark("long_text_recipes.py", "--run", str(carry), "--out", str(tmp_path / "out"), "--quick",
                           cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert result["failed"] == [] and [r["name"] for r in rows] == ["N0", "N8-K2", "L1+transfer"]
    finetuned, student = rows[:2], rows[2]
    for row in finetuned:
        assert {"train_examples", "train_tokens", "train_seconds", "accuracy", "vs_baseline", "dev_choice",
                "imdb_eval_reading_cost", "wall_seconds"} <= set(row)
        assert set(row["accuracy"]) == {"test", "dev", "imdb_dev", "imdb_eval"}
        assert len(row["accuracy"]["imdb_eval"]) == 7 and all(
            0.0 <= a["acc"] <= 1.0 and a["n"] == 12 for a in row["accuracy"]["imdb_eval"].values())
    assert finetuned[1]["train_examples"] > finetuned[0]["train_examples"] == 96, "IMDB windows join RT train"
    assert finetuned[1]["train_examples"] <= 96 + 8 * 2, "at most K=2 windows per review"
    assert {"drop_vs_teacher", "parameters", "layers"} <= set(student) and student["layers"] == [0]
    assert all(0.0 <= d["agreement"] <= 1.0 for d in student["drop_vs_teacher"].values())


@pytest.mark.e2e
def test_distill_recipes_quick_sweep_judges_each_student_by_distills_bounds(staged_pipeline, tiny_project, tmp_path):
    cfg, paths = staged_pipeline
    project = finished_project(paths.root, tmp_path, extra_imdb=8)  # transfer sentences come from unseen reviews
    out = tmp_path / "recipes.json"
    result = run_benchmark("distill_recipes.py", "--project", str(project), "--params",
                           str(tiny_project / "params.yaml"), "--quick", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    assert [r["name"] for r in result["recipes"]] == ["default", "former_loss"]
    bounds = result["bounds"]
    for recipe in result["recipes"]:
        low, high = recipe["dev_drop_interval"]
        assert recipe["epochs"] == 1 and low <= recipe["dev_drop"] <= high and 0.0 <= recipe["agreement"] <= 1.0
        assert recipe["outcome"] in ("pass", "fail", "inconclusive") and recipe["train_seconds"] > 0
        assert recipe["passes"] is (recipe["outcome"] == "pass" and recipe["agreement"] >= bounds["min_agreement"])
    assert result["recipes"][1]["alpha"] == 0.5 and result["recipes"][1]["temperature"] == 2.0
    assert result["rows"]["transfer"] > 0 and result["rows"]["judged_dev"] > 0 and result["teacher_logits_seconds"] >= 0


@pytest.mark.e2e
def test_label_noise_benchmark_smoke_run_scores_the_queue_per_rate_and_prints_its_json(tiny_project, tmp_path):
    from tests.test_label_issues import two_vocabularies

    texts, labels, _ = two_vocabularies(340, 0.0)
    split = tiny_project / "artifacts" / "prepare"
    split.mkdir(parents=True)
    pd.DataFrame({"text": texts[:300], "label": labels[:300]}).to_parquet(split / "train.parquet")
    pd.DataFrame({"text": texts[300:], "label": labels[300:]}).to_parquet(split / "dev.parquet")  # fine-tunings' dev
    result = run_benchmark("label_noise.py", "--rates", "0.05", "0.1", "--project", str(tiny_project),
                           "--features", "both", "finetuned", "finetuned+tfidf", cwd=tmp_path)
    assert [row["rate"] for row in result["rates"]] == [0.05, 0.1]
    assert [row["flipped"] for row in result["rates"]] == [15, 30]
    assert all(row["precision_at_k"] > 0.8 and row["recall_at_k"] >= 0.75 for row in result["rates"]), result
    assert result["train_rows"] == 300 and set(result["targets"]) == {"min_precision_lift"}
    assert result["features"] == "tfidf" and result["rates"] == result["detectors"]["tfidf"]["rates"]
    assert list(result["detectors"]) == ["tfidf", "embeddings", "finetuned", "finetuned+tfidf"]
    finetuned, ensemble = (result["detectors"][name]["rates"] for name in ("finetuned", "finetuned+tfidf"))
    # Both candidates read one cross-fitting per rate (the same flips): each one's seconds count its fine-tunings.
    assert [row["flipped"] for row in finetuned] == [row["flipped"] for row in ensemble] == [15, 30]
    assert all(row["seconds"] > 0 and 0 <= row["precision_at_k"] <= 1 for row in finetuned + ensemble)
    assert all(e["seconds"] >= f["seconds"] for f, e in zip(finetuned, ensemble))


@pytest.mark.heavy
def test_label_noise_benchmark_stops_with_a_clear_message_without_a_train_split(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "label_noise.py"), "--project", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "train.parquet is missing" in done.stderr


def test_label_noise_judges_the_configured_detector_unless_told_and_only_one_it_measured():
    from benchmarks.label_noise import judged_detector

    assert judged_detector("tfidf", ["tfidf", "finetuned+tfidf"], None) == "tfidf"
    assert judged_detector("embeddings", ["tfidf", "finetuned"], None) == "tfidf"
    assert judged_detector("tfidf", ["tfidf", "finetuned+tfidf"], "finetuned+tfidf") == "finetuned+tfidf"
    with pytest.raises(SystemExit, match="--judge finetuned is not measured"):
        judged_detector("tfidf", ["tfidf"], "finetuned")


def test_label_noise_flips_the_drawn_share_to_other_classes_and_its_table_fits_80_columns():
    from benchmarks.label_noise import flip_labels, table_lines, top_k_scores

    labels = np.arange(1000) % 3
    noisy, flipped = flip_labels(labels, 3, 0.05, seed=0)
    assert len(flipped) == 50 and (noisy[flipped] != labels[flipped]).all()
    assert (np.delete(noisy, flipped) == np.delete(labels, flipped)).all()
    assert top_k_scores(np.array([flipped[0], 999, flipped[1]]), flipped[:2]) == {
        "k": 2, "found": 1, "precision_at_k": 0.5, "recall_at_k": 0.5}
    row = {"rate": 0.1, "flipped": 100000, "flagged": 100000, "estimated_share": 0.1234, "precision_at_k": 0.4321,
           "recall_at_k": 0.4321, "seconds": 1234.56,
           "test_accuracy": {"top_k_dropped": {"value": 0.8123, "low": 0.8001, "high": 0.8245}}}
    lines = table_lines({"train_rows": 100000, "folds": 5, "seed": 42, "rates": [row]})
    assert len(lines) == 4 and max(map(len, lines)) <= 80


@pytest.mark.e2e
def test_live_accuracy_benchmark_smoke_run_reweights_each_stream_and_prints_its_json(staged_pipeline, tiny_project,
                                                                                    tmp_path):
    cfg, paths = staged_pipeline
    project = finished_project(paths.root, tmp_path, extra_imdb=12)
    out = tmp_path / "live_accuracy.json"
    result = run_benchmark("live_accuracy.py", "--project", str(project), "--params", str(tiny_project / "params.yaml"),
                           "--imdb-rows", "12", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    streams = result["streams"]
    assert set(streams) == {"dev", "dev_short", "dev_one_class", "dev_words", "imdb_unseen"}
    assert streams["dev"]["rows"] == len(pd.read_parquet(paths.split("dev"))) and streams["imdb_unseen"]["rows"] == 12
    assert result["test_rows"] == len(pd.read_parquet(paths.split("test")))
    for name, figures in streams.items():
        assert figures["verdict"] in ("reweighted", "overlap too small", "not computed"), name
        assert (figures["weighted"] is None) is (figures["verdict"] != "reweighted"), name
        assert (figures["covered"] is None) is (figures["weighted"] is None or not figures["rows"]), name
        if figures["weighted"]:
            assert figures["weighted"]["low"] <= figures["weighted"]["value"] <= figures["weighted"]["high"]
            assert figures["covered"] is (figures["weighted"]["low"] <= figures["realized"]
                                          <= figures["weighted"]["high"])


def test_live_accuracy_table_fits_80_columns(capsys):
    from benchmarks.live_accuracy import print_table

    span = {"value": 0.8343, "low": 0.8071, "high": 0.8581}
    stream = {"rows": 100000, "verdict": "reweighted", "weighted": span, "effective_rows": 99999.0,
              "live_share_supported": 1.0, "realized": 0.8225, "covered": True}
    small = {**stream, "verdict": "overlap too small", "weighted": None, "covered": None}
    none = {**small, "verdict": "not computed", "effective_rows": None, "live_share_supported": None}
    print_table({"model": "artifacts/gate/release", "test_rows": 100000, "test_accuracy": span, "confidence": 0.95,
                 "settings": {"max_weight": 20.0, "min_effective_rows": 100, "min_supported_share": 0.9},
                 "streams": {"dev_one_class": stream, "imdb_unseen": small, "dev_words": none}})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and max(map(len, lines)) <= 80, lines
    assert "overlap too small" in lines[5] and "not computed" in lines[6]


@pytest.mark.e2e
def test_estimate_accuracy_benchmark_smoke_run_scores_each_stream_and_prints_its_json(staged_pipeline, tiny_project,
                                                                                      tmp_path):
    _, paths = staged_pipeline
    project = finished_project(paths.root, tmp_path, extra_imdb=16)
    out = tmp_path / "estimate.json"
    result = run_benchmark("estimate_accuracy.py", "--project", str(project), "--params",
                           str(tiny_project / "params.yaml"), "--window-texts", "20", "--windows", "5",
                           "--shifted-rows", "12", "--threads", "1", "--out", str(out), cwd=tmp_path)
    assert set(result["streams"]) == {"in_domain_test", "in_domain_dev", "shifted", "flipped"}
    test = pd.read_parquet(paths.split("test"))
    assert result["streams"]["in_domain_test"]["texts"] == int((test["source"] == "rotten_tomatoes").sum())
    assert result["streams"]["shifted"]["texts"] == 12, "IMDB reviews that no split holds"
    written = json.loads(out.read_text())["window_figures"]
    for name, stream in result["streams"].items():
        windows = written[name]
        assert stream["windows"] == len(windows) == 5
        assert all(w["rows"] == min(20, stream["texts"]) for w in windows), "a stream shorter than a window: all"
        assert stream["coverage"] == pytest.approx(np.mean([w["low"] <= w["realised"] <= w["high"] for w in windows]))
        assert all(w["error"] == pytest.approx(w["estimate"] - w["realised"]) for w in windows)
    # the flipped stream is the in-domain texts with other labels: the same probabilities, so the same estimate
    flipped, test_stream, dev = (result["streams"][k] for k in ("flipped", "in_domain_test", "in_domain_dev"))
    assert flipped["texts"] == test_stream["texts"] + dev["texts"]
    pooled = (test_stream["estimate"] * test_stream["texts"] + dev["estimate"] * dev["texts"]) / flipped["texts"]
    assert flipped["estimate"] == pytest.approx(pooled, abs=2e-4)
    assert_targets(result, {"in_domain_coverage": ">= 0.9", "in_domain_check_failed_share": "<= 0.05"})


def test_estimate_accuracy_flips_the_drawn_share_and_its_table_fits_80_columns():
    from benchmarks.estimate_accuracy import flip_labels, table_lines

    labels = np.arange(1000) % 2
    flipped_labels, flipped = flip_labels(labels, 2, 0.3, seed=0)
    assert len(flipped) == 300 and (flipped_labels[flipped] != labels[flipped]).all()
    assert (np.delete(flipped_labels, flipped) == np.delete(labels, flipped)).all()
    stream = {"texts": 25000, "estimate": 0.9123, "realised": 0.8345, "mean_error": -0.1234, "p95_abs_error": 0.2345,
              "coverage": 0.955, "check_failed_share": 1.0}
    lines = table_lines({"streams": {"in_domain_test": stream, "flipped": stream}})
    assert len(lines) == 3 and max(map(len, lines)) <= 80


@pytest.mark.e2e
def test_shadow_replay_benchmark_smoke_run_logs_prod_replays_the_candidate_and_prints_its_json(
        served_folders, reviews_frame, tiny_model_dir, tmp_path):
    # A finished run in miniature: the data, prepare's splits (Rotten Tomatoes rows only, so every IMDB row is unseen)
    # and two served folders that answer differently, as prod and candidate.
    project = tmp_path / "finished"
    (project / "data").mkdir(parents=True)
    reviews_frame.to_csv(project / "data" / "movie_reviews.csv", index=False)
    (project / "artifacts" / "prepare").mkdir(parents=True)
    rt = reviews_frame[reviews_frame["source"] == "rotten_tomatoes"].reset_index(drop=True)
    for split, rows in (("train", rt[:300]), ("dev", rt[300:350]), ("test", rt[350:])):
        rows.to_parquet(project / "artifacts" / "prepare" / f"{split}.parquet")
    with (project / "params.yaml").open("w") as handle:
        YAML().dump(tiny_params(tiny_model_dir), handle)
    out = tmp_path / "shadow_replay.json"
    result = run_benchmark("shadow_replay.py", "--project", str(project), "--prod", str(served_folders[0]),
                           "--candidate", str(served_folders[1]), "--shifted-rows", "8", "--in-domain-rows", "8",
                           "--threads", "1", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    assert result["rows"]["replayed"] == 16 and result["rows"]["skipped"] == {"other_version": 0, "no_text": 0}
    assert {name: figures["rows"] for name, figures in result["by_source"].items()} == {"imdb": 8,
                                                                                       "rotten_tomatoes": 8}
    assert sum(f["disagreement"]["count"] for f in result["by_source"].values()) == result["disagreement"]["count"]
    for model in ("prod", "candidate"):
        realized, estimated = result["realized_accuracy"][model], result["estimated_accuracy"][model]
        assert realized["low"] <= realized["value"] <= realized["high"] and 0.5 <= estimated["value"] <= 1.0
    difference = result["realized_difference"]
    assert difference["value"] == pytest.approx(result["realized_accuracy"]["candidate"]["value"]
                                                - result["realized_accuracy"]["prod"]["value"])
    assert result["latency_ms_b1"]["rows"] == 16 and result["prod_version"].startswith("sha256:")


@pytest.mark.heavy
def test_label_budget_benchmark_smoke_run_on_a_synthetic_pool_prints_its_json(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = run_benchmark("label_budget.py", "--seeds", "2", "--synthetic-only", "--synthetic-rows", "1500",
                           "--bootstrap", "50", "--project", str(tmp_path), cwd=tmp_path)
    assert [(r["pool"], r["design"]) for r in result["rows"]] == [("synthetic", "queue"), ("synthetic", "uniform")]
    assert all(r["seeds"] == 2 and r["settled"] <= 2 for r in result["rows"])
    assert set(result["targets"]) == {"min_label_saving"}


def test_label_budget_table_fits_80_columns_and_looks_reach_the_whole_pool():
    from benchmarks.label_budget import look_schedule, table_lines

    assert look_schedule(35) == [10, 20, 30, 35] and look_schedule(1000)[-1] == 1000
    row = {"pool": "synthetic", "design": "uniform", "rows": 100000, "disagreement": 0.1234, "true_difference": 0.0211,
           "full_pool_verdict": "INCONCLUSIVE", "seeds": 200, "settled": 200, "promote": 199, "reject": 1,
           "median_labels": 99999.0, "p90_labels": 99999.0, "error_rate_vs_sign": 0.005}
    assert max(map(len, table_lines([row]))) <= 80
