"""tunegate predict: serves the shipped folder with onnxruntime + tokenizers alone."""

import json
import shutil

import pandas as pd
import pytest
from ruamel.yaml import YAML

from flows.cli import build_parser, main
from tasks.runtime.onnx_model import CPU, OnnxClassifier
from tests.conftest import REPO, tiny_params, tunegate_without_torch


@pytest.mark.heavy
def test_predict_texts_without_torch(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    done, attempted = tunegate_without_torch(["predict", "--model", str(paths.int8_dir), "a gripping, beautiful film",
                                              "dull and far too long"], REPO, tmp_path)
    assert done.returncode == 0, done.stderr
    assert attempted == [], "predict tried to import torch or transformers"
    assert "a gripping, beautiful film" in done.stdout and "p_positive" in done.stdout
    assert sum(done.stdout.count(label) for label in ("negative", "positive")) >= 2


@pytest.mark.heavy
def test_predict_file_in_and_out_without_torch(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    source = tmp_path / "reviews.jsonl"
    pd.read_parquet(paths.split("test")).head(20).to_json(source, orient="records", lines=True)
    target = tmp_path / "out" / "predicted.jsonl"
    done, attempted = tunegate_without_torch(["predict", "--model", str(paths.int8_dir), "--input", str(source),
                                              "--output", str(target)], REPO, tmp_path)
    assert done.returncode == 0, done.stderr
    assert attempted == [], "predict tried to import torch or transformers"
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 20 and {"text", "label", "predicted_label", "predicted_probability", "p_negative", "p_positive"} <= set(rows[0])
    assert all(abs(r["p_negative"] + r["p_positive"] - 1) < 1e-5 for r in rows)
    assert {r["predicted_label"] for r in rows} <= set(cfg.data.label_names)


def test_predict_agrees_with_the_quantized_stage_accuracy(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    report = json.loads(paths.quantization_report.read_text())
    judged = pd.read_parquet(paths.split(report["split"])).iloc[report["first_row"]:]  # the rows quantize judged on
    judged.to_csv(tmp_path / "judged.csv", index=False)
    assert main(["predict", "--model", str(paths.int8_dir), "--input", str(tmp_path / "judged.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "judged.predictions.csv")
    names = ["negative", "positive"]
    accuracy = (predicted["predicted_label"] == [names[i] for i in judged["label"]]).mean()
    assert len(judged) == report["rows"] and accuracy == report["accuracy"]


def test_predict_explains_bad_usage(staged_pipeline, tmp_path, monkeypatch, capsys):
    _, paths = staged_pipeline
    monkeypatch.chdir(tmp_path)  # no params.yaml here: --text-column defaults to `text`
    assert main(["predict", "--model", str(paths.int8_dir)]) == 1
    assert "give texts as arguments or --input" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "hello"]) == 1
    assert "not an exported model folder" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("review\nfine\n")
    assert main(["predict", "--model", str(paths.int8_dir), "--input", str(tmp_path / "in.csv")]) == 1
    assert "no column 'text'" in capsys.readouterr().err


def test_predict_text_column_defaults_to_the_projects_data_text_column(staged_pipeline, tiny_model_dir, tmp_path,
                                                                       monkeypatch, capsys):
    _, paths = staged_pipeline
    params = tiny_params(tiny_model_dir)
    params["data"]["text_column"] = "review"
    with (tmp_path / "params.yaml").open("w") as handle:
        YAML().dump(params, handle)
    pd.DataFrame({"review": ["a gripping, beautiful film", "dull and far too long"], "id": [1, 2]}).to_csv(
        tmp_path / "in.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--model", str(paths.int8_dir), "--input", "in.csv"]) == 0
    assert "text column 'review'" in capsys.readouterr().out
    predicted = pd.read_csv(tmp_path / "in.predictions.csv")
    assert list(predicted["id"]) == [1, 2] and predicted["predicted_label"].isin(["negative", "positive"]).all()
    # an explicit --text-column still wins over params.yaml
    assert main(["predict", "--model", str(paths.int8_dir), "--input", "in.csv", "--text-column", "text"]) == 1
    assert "no column 'text'" in capsys.readouterr().err


def test_predict_help_names_where_the_text_column_default_comes_from():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    assert "default: data.text_column of params.yaml in the current folder; without one, text" in " ".join(
        predict.format_help().split())


def test_a_quantized_model_is_served_on_cpu_where_cuda_is_offered_even_without_serving_providers(
        staged_pipeline, tmp_path, gpu_host):
    """Folders shipped before serving.json named providers: the INT8 ops in the graph say CPU."""
    _, paths = staged_pipeline
    old = shutil.copytree(paths.int8_dir, tmp_path / "int8")
    serving = json.loads((old / "serving.json").read_text())
    del serving["providers"]
    (old / "serving.json").write_text(json.dumps(serving))
    assert OnnxClassifier(old).providers == [CPU]
    assert gpu_host.sessions.requests == [[CPU]]
    OnnxClassifier(paths.onnx_dir)  # an FP32 folder exported for target cpu serves on CPU too
    assert gpu_host.sessions.requests[-1] == [CPU]
