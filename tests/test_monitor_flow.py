"""The monitor flow: its report, its time series, the ledger of labelled data, and the events it emits."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ruamel.yaml import YAML

from tasks.core.config import parse_config
from tasks.monitoring.arrivals import Arrival, ledger_path, mark_consumed, new_labelled, read_ledger
from tasks.monitoring.history import append_history, history_row, history_table, read_history
from tasks.monitoring.report import check_verdict, render_html, render_markdown, write_report
from tests.conftest import keyword_reviews, readable_at_80, tiny_params

END = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC: a fixed window end


def check(name, value, threshold, severity="alarm", passed=True, skipped=False, evidence="figures"):
    return {"name": name, "value": value, "threshold": threshold, "severity": severity, "passed": passed,
            "evidence": evidence, "skipped": skipped, "status": "skipped" if skipped else "passed" if passed else "failed"}


ESTIMATE = {"value": 0.8412, "low": 0.8133, "high": 0.8691, "rows": 250, "confidence": 0.95}


def judgement(alarms=("length_ks",), judged=True):
    checks = [check("label_psi", 0.01, 0.2), check("confidence_ks", 0.05, 0.2, "warning"),
              check("length_ks", 0.9, 0.25, passed="length_ks" not in alarms, evidence="median tokens 120 | 14"),
              check("domain_auc", None, 0.75, passed=False, skipped=True, evidence="skipped: no texts <logged>")]
    return {"start": END - 3600, "end": END, "texts": 250, "version": "v0.2.0", "checks": checks, "judged": judged,
            "alarms": list(alarms), "warnings": [], "served_versions": {"v0.2.0": 250}, "labelled_rows": 0,
            "estimate": dict(ESTIMATE) if judged else None,
            "estimate_skipped": "" if judged else "250 texts in the window, fewer than monitor.min_window_texts"}


ARRIVALS = [{"name": "batch-1.csv", "sha256": "ab" * 32, "rows": 12, "new_rows": 12, "used_rows": 10, "bad_rows": 2,
             "bad_samples": ["row 3: label 7 not in data.labels [0, 1]", "row 9: empty or missing text"]}]


@pytest.fixture
def cfg(tmp_path):
    return parse_config(tiny_params(tmp_path / "no-model"))  # these tests read data settings only: no model built


# --- report -----------------------------------------------------------------------------------------------------------

def test_report_markdown_tables_every_check_with_value_bound_severity_and_verdict():
    markdown = render_markdown(judgement(), ARRIVALS)
    assert markdown.startswith("# Monitoring: ALARM: length_ks")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| check")}
    assert rows["length_ks"][:4] == ["0.9", "0.25", "alarm", "ALARM"]
    assert rows["label_psi"][3] == "pass" and rows["confidence_ks"][2] == "warning"
    assert rows["domain_auc"][0] == "-" and rows["domain_auc"][3] == "skipped", "a skipped check never passes"
    assert "median tokens 120 \\| 14" in markdown, "a | in evidence would break the table"
    assert "batch-1.csv" in markdown and "row 3: label 7" in markdown


def test_report_html_is_self_contained_and_escaped():
    page = render_html(judgement(), ARRIVALS)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert not re.search(r"(src|href)\s*=|url\(|https?://|@import", page.replace("http://www.w3.org", "")), \
        "the page must not fetch anything"
    assert "&lt;logged&gt;" in page and "<logged>" not in page


def test_report_of_a_window_with_too_few_texts_says_not_judged():
    quiet = judgement(alarms=(), judged=False)
    assert render_markdown(quiet).startswith("# Monitoring: not judged: 250 texts")
    assert check_verdict(quiet["checks"][3]) == "skipped"


def test_report_written_under_reports_named_by_the_windows_utc_end(tmp_path):
    md, page, markdown = write_report(tmp_path, judgement())
    assert md == tmp_path / ".tunegate/monitoring/reports/20261130T005320Z.md" and page == md.with_suffix(".html")
    assert md.read_text() == markdown and page.read_text().startswith("<!DOCTYPE html>")


# --- history ----------------------------------------------------------------------------------------------------------

def test_history_appends_one_row_per_run_and_reads_the_last_n(tmp_path):
    path = tmp_path / "monitoring" / "history.jsonl"
    for i in range(3):
        row = history_row({**judgement(), "end": END + 3600 * i}, new_rows=i)
        row["figures"]["label_psi"] = np.float64(0.01 * i)  # numpy figures are written as plain numbers
        append_history(path, row)
    with path.open("a") as handle:
        handle.write('{"cut short by a crash"')  # a torn last line is skipped, not fatal
    rows = read_history(path)
    assert [r["new_rows"] for r in rows] == [0, 1, 2] and rows[2]["figures"]["label_psi"] == 0.02
    assert rows[0]["figures"]["domain_auc"] is None and rows[0]["alarms"] == ["length_ks"]
    assert [r["new_rows"] for r in read_history(path, last=2)] == [1, 2]
    assert read_history(tmp_path / "none.jsonl") == []


def test_history_table_names_the_flagged_checks_and_wide_has_one_column_per_check():
    rows = [history_row(judgement()), history_row({**judgement(alarms=()), "warnings": ["confidence_ks"]}),
            history_row(judgement(alarms=(), judged=False))]
    columns, cells = history_table(rows)
    assert columns == ["end (UTC)", "version", "texts", "verdict", "new rows", "est. accuracy", "flagged checks"]
    assert [row[3:] for row in cells] == [["ALARM", "0", "0.84 0.81-0.87", "length_ks 0.9 (alarm)"],
                                         ["warning", "0", "0.84 0.81-0.87", "confidence_ks 0.05 (warning)"],
                                         ["not judged", "0", "-", "-"]]
    columns, cells = history_table(rows, wide=True)
    assert columns[:6] == ["end (UTC)", "version", "texts", "verdict", "new rows", "est. accuracy"]
    assert columns[6:] == ["label_psi", "confidence_ks", "length_ks", "domain_auc"]
    assert cells[0][3] == "ALARM" and cells[2][3] == "not judged"
    assert cells[0][columns.index("length_ks")] == "0.9" and cells[0][columns.index("domain_auc")] == "-"


# --- arrivals ---------------------------------------------------------------------------------------------------------

def labelled_project(tmp_path: Path, frame: pd.DataFrame, name: str = "batch-1.csv") -> Path:
    target = tmp_path / "incoming" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, index=False)
    return tmp_path


def test_arrivals_returns_new_rows_and_reports_bad_ones(tmp_path, cfg):
    frame = keyword_reviews(10)[["text", "label"]]
    frame.loc[2, "label"] = 7
    frame.loc[5, "text"] = None
    root = labelled_project(tmp_path, frame)
    (root / "incoming/.upload.csv").write_text("text,label\nhalf,")  # hidden: a file still being written
    batch, arrivals = new_labelled(root, cfg)
    assert list(batch.columns) == ["text", "label"] and len(batch) == 8
    assert set(batch["label"]) <= {0, 1}
    [arrival] = arrivals
    assert (arrival.name, arrival.rows, arrival.new_rows, arrival.used_rows, arrival.bad_rows) == \
        ("batch-1.csv", 10, 10, 8, 2)
    assert arrival.bad_samples == ["row 3: label 7 not in data.labels [0, 1]", "row 6: empty or missing text"]


def test_arrivals_ledger_marks_files_taken_and_only_appended_rows_come_back(tmp_path, cfg):
    root = labelled_project(tmp_path, keyword_reviews(6)[["text", "label"]])
    _, arrivals = new_labelled(root, cfg)
    mark_consumed(root, arrivals)
    assert read_ledger(root) == {"batch-1.csv": {arrivals[0].sha256: 6}}
    assert ledger_path(root) == root / ".tunegate/monitoring/arrivals.json"
    batch, again = new_labelled(root, cfg)
    assert batch.empty and again == [], "a file taken into the data is not new"
    labelled_project(root, keyword_reviews(9)[["text", "label"]])  # the same batch file, 3 rows appended
    labelled_project(root, keyword_reviews(4, seed=1)[["text", "label"]], name="sub/batch-2.csv")
    batch, arrivals = new_labelled(root, cfg)
    assert [(a.name, a.new_rows) for a in arrivals] == [("batch-1.csv", 3), ("sub/batch-2.csv", 4)]
    assert len(batch) == 7


def test_arrivals_none_without_a_labelled_dir(tmp_path):
    params = tiny_params(tmp_path / "no-model")
    params["monitor"]["labelled_dir"] = None
    batch, arrivals = new_labelled(labelled_project(tmp_path, keyword_reviews(4)), parse_config(params))
    assert batch.empty and arrivals == []


# --- events -----------------------------------------------------------------------------------------------------------

def test_drift_event_payload_carries_the_failed_alarms_window_and_version(tmp_path):
    from flows.monitoring import arrivals_payload, drift_payload

    payload = drift_payload(judgement(), 60, tmp_path / "r.md")
    assert [c["name"] for c in payload["failed"]] == ["length_ks"] and payload["failed"][0]["value"] == 0.9
    assert payload["version"] == "v0.2.0" and payload["window"]["texts"] == 250
    assert payload["figures"]["domain_auc"] is None
    assert drift_payload(judgement(alarms=()), 60, tmp_path / "r.md") is None
    assert drift_payload(judgement(judged=False), 60, tmp_path / "r.md") is None, "an unjudged window never alarms"
    arrival = Arrival("b.csv", "ab" * 32, 600, 600, 590, 10)
    assert arrivals_payload([arrival], 500, "v0.2.0")["rows"] == 590
    assert arrivals_payload([arrival], 600, "v0.2.0") is None


# --- the flow, end to end ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_folder(tmp_path_factory, tiny_model_dir):
    """The tiny random BERT exported as an FP32 served folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.export import export_onnx

    folder = tmp_path_factory.mktemp("served")
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    export_onnx(model, AutoTokenizer.from_pretrained(tiny_model_dir), folder, 64,
                parse_config(tiny_params(tiny_model_dir)).export)
    return folder


OTHER_WORDS = ("quantum ledger invoice turbine enzyme satellite mortgage protocol glacier syntax kernel voltage "
               "harvest tariff compiler neuron").split()


def monitored_project(root: Path, tiny_model_dir: Path, served: Path, name: str, labelled: pd.DataFrame | None):
    """A project without a registry: serve.model is the served folder, artifacts/prepare/train.parquet its data."""
    params = tiny_params(tiny_model_dir)
    params["serve"].update(model=str(served), model_name=name, log_texts=True)
    params["monitor"].update(min_window_texts=60, reference_rows=100, domain_max_texts=100, min_new_rows=20,
                             labelled_dir="incoming" if labelled is not None else None)
    root.mkdir()
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(params, handle)
    (root / "artifacts/prepare").mkdir(parents=True)
    keyword_reviews(200)[["text", "label"]].to_parquet(root / "artifacts/prepare/train.parquet")
    if labelled is not None:
        (root / "incoming").mkdir()
        labelled.to_csv(root / "incoming/batch.csv", index=False)
    return parse_config(params)


def write_log(root: Path, cfg, served_folder: Path, texts: list[str]) -> None:
    from tasks.serving.predlog import PredictionLog
    from tasks.serving.scoring import load_served

    served = load_served(served_folder, cfg.serve.model_name, None, threads=1)
    log = PredictionLog(root / cfg.serve.log_dir, log_texts=True, file_mb=1, max_mb=8, flush_seconds=0.1)
    log.start()
    log.append(served.info.version, texts, served.score(texts, 1), served.info.labels)
    log.close()
    served.close()


def events_about(resource_id: str, since) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(occurred=EventOccurredFilter(since=since),
                                              resource=EventResourceFilter(id=[resource_id])), limit=50)
    return page.events


@pytest.mark.e2e
def test_monitor_flow_on_a_drifted_log_emits_drift_and_publishes_the_report(prefect_api, tmp_path, tiny_model_dir,
                                                                           served_folder):
    from prefect.events.worker import EventsWorker
    from prefect.types._datetime import now

    from flows.monitoring import DATA_EVENT, DRIFT_EVENT, monitor
    from tests.conftest import latest_artifact

    since = now("UTC")
    steady, drifted = tmp_path / "steady", tmp_path / "drifted"
    steady_cfg = monitored_project(steady, tiny_model_dir, served_folder, "steady", None)
    write_log(steady, steady_cfg, served_folder, list(keyword_reviews(120, seed=7)["text"]))
    rng = np.random.default_rng(0)
    shifted = [" ".join(rng.choice(OTHER_WORDS, size=int(rng.integers(40, 60)))) for _ in range(120)]
    drifted_cfg = monitored_project(drifted, tiny_model_dir, served_folder, "drifted",
                                    keyword_reviews(30, seed=3)[["text", "label"]])
    write_log(drifted, drifted_cfg, served_folder, shifted)

    calm = monitor(project=str(steady))
    assert calm["judged"] and calm["alarms"] == [] and calm["events"] == []

    alarmed = monitor(project=str(drifted))
    assert alarmed["judged"] and {"length_ks", "oov_rate"} <= set(alarmed["alarms"])
    assert alarmed["events"] == [DRIFT_EVENT, DATA_EVENT] and alarmed["new_rows"] == 30
    assert latest_artifact("monitoring").data.startswith("# Monitoring: ALARM")
    # The window's label-free accuracy estimate (or why there is none) is in the published report.
    assert "accuracy estimated without labels" in latest_artifact("monitoring").data
    assert alarmed["estimate"] is not None or alarmed["estimate_skipped"]
    assert Path(alarmed["report"]["html"]).is_file()
    history = read_history(drifted / ".tunegate/monitoring/history.jsonl")
    assert [(r["alarms"], r["new_rows"]) for r in history] == [(alarmed["alarms"], 30)]

    EventsWorker.drain_all(timeout=10)
    deadline, found = time.monotonic() + 60, []
    while time.monotonic() < deadline:  # the server persists events in the background
        found = events_about("tunegate.model.drifted", since)
        if {e.event for e in found} >= {DRIFT_EVENT, DATA_EVENT}:
            break
        time.sleep(0.5)
    drift = next(e for e in found if e.event == DRIFT_EVENT)
    assert {c["name"] for c in drift.payload["failed"]} == set(alarmed["alarms"])
    assert drift.payload["version"] == alarmed["version"] and drift.payload["window"]["texts"] == 120
    arrived = next(e for e in found if e.event == DATA_EVENT)
    assert arrived.payload["rows"] == 30 and arrived.payload["files"][0]["name"] == "batch.csv"
    assert events_about("tunegate.model.steady", since) == [], "an unshifted window emits nothing"


def test_monitor_history_command_prints_the_last_runs(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    with (tmp_path / "params.yaml").open("w") as handle:
        YAML().dump(tiny_params(tmp_path / "no-model"), handle)
    assert main(["monitor", "history", "--project", str(tmp_path)]) == 0
    assert "no monitor runs recorded yet" in capsys.readouterr().out
    path = tmp_path / ".tunegate/monitoring/history.jsonl"
    append_history(path, history_row({**judgement(), "version": "v0.1.0"}))
    append_history(path, history_row({**judgement(alarms=()), "version": "v0.2.0"}))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["monitor", "history", "--project", str(tmp_path), "--last", "1", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "v0.2.0" in out and "v0.1.0" not in out and " ok " in out and "length ks" in out
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["monitor", "history", "--project", str(tmp_path)]) == 0
    table = readable_at_80(capsys.readouterr().out)
    assert "flagged checks" in table and "length_ks 0.9" in table and "(alarm)" in table and "v0.1.0" in table
    # the estimate over its interval (two lines of one cell: the words of the row's lines interleave)
    assert "est." in table and "accuracy" in table and "0.84" in table and "0.81-0.87" in table


def test_monitored_model_is_the_served_folder_without_a_registry_and_says_when_there_is_none(tmp_path, monkeypatch):
    from flows.monitoring import Monitored, NothingToMonitor, monitored_model
    from tasks.serving.source import SourceError

    params = tiny_params(tmp_path / "no-model")
    params["serve"]["model"] = "registry:prod"
    with pytest.raises(NothingToMonitor, match="no version is in prod"):
        monitored_model(tmp_path, parse_config(params))
    params["serve"]["model"] = "served"
    with pytest.raises(SourceError, match="not a folder"):
        monitored_model(tmp_path, parse_config(params))
    (tmp_path / "served").mkdir()
    (tmp_path / "served/serving.json").write_text('{"model_file": "model.onnx"}')
    (tmp_path / "served/model.onnx").write_bytes(b"onnx")
    assert monitored_model(tmp_path, parse_config(params)) == Monitored(tmp_path / "served", None)
