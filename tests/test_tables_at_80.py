"""The CLI's other tables (the pipeline summary, `tunegate predict`, `tunegate monitor run`) read whole in an
80-column terminal, with realistic content: the longest key figures, long texts, every monitor check.
(validate, models, history and monitor history have their own tests at 80 columns.)"""

import argparse

import pandas as pd
from rich.console import Console

from flows import run_command
from flows.cli import monitoring as monitoring_commands
from flows.cli import scoring as scoring_commands
from flows.pipeline import StageOutcome
from tests.conftest import readable_at_80


def narrow_console(monkeypatch, module) -> Console:
    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(module, "console", console)
    return console


def test_pipeline_summary_reads_at_80_columns(monkeypatch):
    console = narrow_console(monkeypatch, run_command)
    outcomes = [
        StageOutcome("validate", "skipped", 0.4, "raw 11/11 checks passed, drift 3/3"),
        StageOutcome("train", "completed", 199.2, "dev accuracy 0.8213 [0.8011, 0.8402] (rule window stride 31)"),
        StageOutcome("quantize", "completed", 41.0, "ships student:rowwise_per_channel, drop 0.41 [-0.62, 1.44] pt"),
        StageOutcome("gate", "unrecorded", 12.5, "PROMOTE: accuracy 0.8190 [0.7985, 0.8381] vs prod v0.2.0",
                     note="dvc.lock was locked by another process"),
    ]
    run_command.print_summary(outcomes)
    words = readable_at_80(console.export_text())
    for cell in ("validate", "skipped", "199.2 s", "unrecorded", "quantize", "completed"):
        assert cell in words


def test_predict_table_reads_at_80_columns(monkeypatch, tmp_path):
    console = narrow_console(monkeypatch, scoring_commands)
    texts = ["a gripping film", "dull and far too long, " * 12 + "and the ending drags on"]
    frame = pd.DataFrame({"predicted_label": ["positive", "negative"], "p_negative": [0.0312, 0.9871],
                          "p_positive": [0.9688, 0.0129]})

    class Model:
        model_file = "model.int8.rowwise.onnx"

    monkeypatch.setattr("tasks.runtime.predict.load_served_model", lambda folder: Model())
    monkeypatch.setattr("tasks.runtime.predict.predict_texts", lambda model, given, batch: frame)
    args = argparse.Namespace(model=str(tmp_path / "artifacts" / "gate" / "release"), input=None, texts=texts,
                              batch_size=32, output=None, text_column=None)
    assert scoring_commands.cmd_predict(args) == 0
    words = readable_at_80(console.export_text())
    for cell in ("positive", "negative", "0.9688", "0.9871", "a gripping film"):
        assert cell in words


def test_monitor_run_table_reads_at_80_columns(monkeypatch):
    console = narrow_console(monkeypatch, monitoring_commands)
    names = ["predicted_label_psi", "confidence_ks", "length_ks", "oov_rate", "domain_auc", "served_versions"]
    values = [0.012, 0.31, None, 0.044, 0.913, 1.0]
    checks = [{"name": name, "value": value, "threshold": 0.1 + i / 10, "severity": "alarm" if i % 2 else "warning",
               "passed": value is not None and value < 0.1 + i / 10, "evidence": "figures", "skipped": value is None}
              for i, (name, value) in enumerate(zip(names, values))]
    result = {"start": 1_796_000_000.0, "end": 1_796_003_600.0, "texts": 300, "version": "v0.12.3",
              "checks": checks, "judged": True, "alarms": ["confidence_ks"], "warnings": ["domain_auc"],
              "new_rows": 0, "events": ["tunegate.drift.detected"],
              "report": {"html": "/home/someone/projects/reviews/.tunegate/monitoring/2026-12-07T0100Z/report.html"}}
    monitoring_commands.print_monitor_result(result)
    printed = console.export_text()
    table = printed.split("verdict:")[0]  # the lines after the table are paths and lists, wrapped by the terminal
    words = readable_at_80(table)
    for cell in [*names, "ALARM", "warning", "skipped", "v0.12.3", "0.913"]:
        assert cell in words


def test_tune_trials_table_reads_at_80_columns(monkeypatch):
    from flows.cli import tune as tune_commands
    from tasks.judging.selection import COMPLETE, FAILED, PRUNED, TrialRow, summarize

    console = narrow_console(monkeypatch, tune_commands)
    recipe = {"train.learning_rate": 0.00012345678, "train.epochs": 2, "train.batch_size": 64,
              "train.warmup_ratio": 0.1734, "train.weight_decay": 0.0912}
    rows = [TrialRow(0, COMPLETE, 0.8099, recipe, "recipe-0", 412.3),
            TrialRow(1, PRUNED, 0.7711, recipe, "recipe-1", 210.0),
            TrialRow(2, FAILED, None, recipe, "recipe-2", 1804.9, note="stopped by tune.timeout_minutes"),
            TrialRow(13, COMPLETE, 0.8213, recipe, "recipe-13", 388.0)]
    record = summarize(rows, study="recipe", storage=".tunegate/tune/recipe.journal", target="train", space={},
                       default_number=0)
    tune_commands.print_record(rows, record)
    words = readable_at_80(console.export_text())
    for cell in ("recipe-13", "pruned", "0.7711", "1805", "learning_rate 0.000123", "weight_decay 0.0912",
                 "stopped by tune.timeout_minutes", "complete *", "0.8213"):
        assert cell in words
