"""tunegate predict: serves the shipped folder with onnxruntime + tokenizers alone."""

import json
import subprocess
import sys

import pandas as pd

from flows.cli import main
from tests.conftest import REPO

NO_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
    "from flows.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None], 'torch was imported'\n"
    "sys.exit(code)\n"
)


def predict_without_torch(*args: str) -> subprocess.CompletedProcess:
    """Run `tunegate predict` in a process where `import torch` (and transformers) raises ImportError."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, "predict", *args], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})


def test_predict_texts_without_torch(staged_pipeline):
    _, paths = staged_pipeline
    done = predict_without_torch("--model", str(paths.int8_dir), "a gripping, beautiful film", "dull and far too long")
    assert done.returncode == 0, done.stderr
    assert "a gripping, beautiful film" in done.stdout and "p_positive" in done.stdout
    assert sum(done.stdout.count(label) for label in ("negative", "positive")) >= 2


def test_predict_file_in_and_out_without_torch(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    source = tmp_path / "reviews.jsonl"
    pd.read_parquet(paths.split("test")).head(20).to_json(source, orient="records", lines=True)
    target = tmp_path / "out" / "predicted.jsonl"
    done = predict_without_torch("--model", str(paths.int8_dir), "--input", str(source), "--output", str(target))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 20 and {"text", "label", "predicted_label", "predicted_probability", "p_negative", "p_positive"} <= set(rows[0])
    assert all(abs(r["p_negative"] + r["p_positive"] - 1) < 1e-5 for r in rows)
    assert {r["predicted_label"] for r in rows} <= set(cfg.data.label_names)


def test_predict_agrees_with_the_quantized_stage_accuracy(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    test = pd.read_parquet(paths.split("test"))
    test.assign(text=test["text"]).to_csv(tmp_path / "test.csv", index=False)
    assert main(["predict", "--model", str(paths.int8_dir), "--input", str(tmp_path / "test.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "test.predictions.csv")
    names = ["negative", "positive"]
    accuracy = (predicted["predicted_label"] == [names[i] for i in test["label"]]).mean()
    report = json.loads(paths.quantization_report.read_text())
    assert accuracy == report["accuracy"]


def test_predict_explains_bad_usage(staged_pipeline, tmp_path, capsys):
    _, paths = staged_pipeline
    assert main(["predict", "--model", str(paths.int8_dir)]) == 1
    assert "give texts as arguments or --input" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "hello"]) == 1
    assert "not an exported model folder" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("review\nfine\n")
    assert main(["predict", "--model", str(paths.int8_dir), "--input", str(tmp_path / "in.csv")]) == 1
    assert "no column 'text'" in capsys.readouterr().err
