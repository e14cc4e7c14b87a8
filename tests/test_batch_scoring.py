"""Batch scoring at scale: `tunegate predict --input` streams any file chunk by chunk with the answers of a whole-
table read, refuses bad inputs with evidence, never leaves a half-written output; the batch_scoring flow maps the
same code over files and Parquet row groups on a local Dask cluster."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.batch_scoring import BatchInputError, expand_inputs, onnx_threads, plan_parts
from flows.cli import build_parser
from tasks.core.config import parse_config
from tasks.core.io import DataFormatError, read_table
from tasks.runtime import stream
from tasks.runtime.predict import PredictInputError, load_served_model, predict_texts
from tasks.runtime.stream import predict_file
from tests.conftest import tiny_params

MAX_LENGTH = 32
SMALL = {"chunk_rows": 40, "block_bytes": 8192}  # many chunks from a few hundred rows (the longest: 5 kB)
PREDICTED = ["predicted_label", "predicted_probability", "p_negative", "p_positive"]


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory, tiny_model_dir):
    """The tiny random BERT exported as an FP32 served folder: answers that do not depend on the batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.export import export_onnx

    folder = tmp_path_factory.mktemp("served-fp32")
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    export_onnx(model, AutoTokenizer.from_pretrained(tiny_model_dir), folder, MAX_LENGTH,
                parse_config(tiny_params(tiny_model_dir)).export)
    return folder


@pytest.fixture(scope="module")
def model(served_folder):
    return load_served_model(served_folder)


@pytest.fixture
def reviews(reviews_frame):
    """440 real reviews (short and long, a few with quotes, commas and newlines) with an id and a missing text."""
    frame = reviews_frame[["text", "label", "source"]].reset_index(drop=True)
    frame.insert(0, "id", range(len(frame)))
    frame.loc[7, "text"] = None
    frame.loc[8, "text"] = 'a "quoted",\nmulti-line review'
    return frame


def write(frame: pd.DataFrame, path, row_group_size: int | None = None):
    kind = path.suffix
    if kind == ".csv":
        frame.to_csv(path, index=False)
    elif kind == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size)
    return path


def read_output(path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else read_table(path)


def in_memory(model, source) -> pd.DataFrame:
    """What `tunegate predict` wrote before it streamed: the whole table read, scored and joined in memory."""
    table = read_table(source)
    return pd.concat([table, predict_texts(model, table["text"].fillna("").astype(str).tolist(), 32)], axis=1)


def assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    assert got["id"].tolist() == expected["id"].tolist()
    assert got["text"].fillna("").tolist() == expected["text"].fillna("").tolist()
    assert got["predicted_label"].tolist() == expected["predicted_label"].tolist()
    # chunks are padded per length group: an FP32 model ignores padding up to float noise
    assert np.allclose(got[PREDICTED[1:]].to_numpy(float), expected[PREDICTED[1:]].to_numpy(float), atol=1e-5)


@pytest.mark.parametrize(("source_name", "target_name"), [("in.csv", "out.jsonl"), ("in.parquet", "out.csv"),
                                                          ("in.jsonl", "out.parquet")])
def test_predict_file_streams_in_chunks_with_the_answers_of_a_whole_table_read(model, reviews, tmp_path,
                                                                               source_name, target_name):
    source = write(reviews, tmp_path / source_name, row_group_size=100)
    calls = []
    rows = predict_file(model, source, tmp_path / target_name, "text", 32, progress=lambda *a: calls.append(a), **SMALL)
    assert rows == len(reviews)
    assert len(calls) > 5, "the file was read in several chunks"
    done, total, _ = calls[-1]
    assert done == total, "progress ends at its total"
    assert_same_predictions(read_output(tmp_path / target_name), in_memory(model, source))


@pytest.mark.parametrize("kind", [".csv", ".jsonl"])
def test_predict_file_writes_a_small_file_byte_for_byte_as_a_whole_table_read_does(model, reviews, tmp_path, kind):
    source = write(reviews, tmp_path / f"in{kind}")
    predict_file(model, source, tmp_path / f"streamed{kind}", "text", 32)
    expected = in_memory(model, source)
    if kind == ".csv":
        expected.to_csv(tmp_path / f"whole{kind}", index=False)
    else:
        expected.to_json(tmp_path / f"whole{kind}", orient="records", lines=True, force_ascii=False)
    assert (tmp_path / f"streamed{kind}").read_bytes() == (tmp_path / f"whole{kind}").read_bytes()


@pytest.mark.heavy
def test_predict_file_reads_a_csv_column_whose_values_change_type_after_the_first_block(model, reviews, tmp_path):
    reviews["id"] = reviews["id"].astype(str)
    reviews.loc[len(reviews) - 1, "id"] = "x-last"  # integers for hundreds of rows, then a word
    source = write(reviews, tmp_path / "in.csv")
    assert predict_file(model, source, tmp_path / "out.csv", "text", 32, **SMALL) == len(reviews)
    written = pd.read_csv(tmp_path / "out.csv", dtype={"id": str})
    assert written["id"].tolist() == reviews["id"].tolist()


def test_predict_file_writes_the_header_alone_for_a_file_without_rows(model, tmp_path):
    (tmp_path / "in.csv").write_text("id,text\n")
    assert predict_file(model, tmp_path / "in.csv", tmp_path / "out.csv", "text", 32) == 0
    assert (tmp_path / "out.csv").read_text().splitlines() == ["id,text," + ",".join(PREDICTED)]


@pytest.mark.parametrize("name", ["in.csv", "in.parquet", "in.jsonl"])
def test_predict_file_names_the_columns_when_the_text_column_is_missing(model, tmp_path, name):
    source = write(pd.DataFrame({"review": ["fine", "dull"], "id": [1, 2]}), tmp_path / name)
    with pytest.raises(PredictInputError, match=r"has no column 'text' \(columns: review, id\)"):
        predict_file(model, source, tmp_path / "out.csv", "text", 32)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("name", ["in.parquet", "in.jsonl"])
def test_predict_file_refuses_texts_that_are_not_strings_naming_the_row(model, tmp_path, name):
    frame = pd.DataFrame({"text": ["fine"] * 100 + [None], "id": range(101)}).astype(object)
    frame.loc[60, "text"] = 12345
    source = write(frame, tmp_path / name) if name.endswith("jsonl") else tmp_path / name
    if name.endswith("parquet"):
        pq.write_table(pa.table({"text": pa.array(range(101)), "id": pa.array(range(101))}), source)
    with pytest.raises(PredictInputError, match=r"column 'text' must hold texts, but row (61|1) holds int"):
        predict_file(model, source, tmp_path / "out.csv", "text", 32, **SMALL)
    assert not (tmp_path / "out.csv").exists()


def test_predict_file_refuses_prediction_columns_already_there_and_unknown_formats(model, tmp_path):
    source = write(pd.DataFrame({"text": ["fine"], "p_positive": [0.5]}), tmp_path / "in.csv")
    with pytest.raises(PredictInputError, match=r"already has columns \['p_positive'\]"):
        predict_file(model, source, tmp_path / "out.csv", "text", 32)
    with pytest.raises(PredictInputError, match=r"must end in \.csv, \.jsonl, \.parquet"):
        predict_file(model, source, tmp_path / "out.xlsx", "text", 32)
    (tmp_path / "in.tsv").write_text("text\nfine\n")
    with pytest.raises(DataFormatError, match="unsupported format '.tsv'"):
        predict_file(model, tmp_path / "in.tsv", tmp_path / "out.csv", "text", 32)
    with pytest.raises(DataFormatError, match="does not exist"):
        predict_file(model, tmp_path / "missing.csv", tmp_path / "out.csv", "text", 32)


def test_predict_file_reports_a_broken_jsonl_line_with_where_it_is(model, tmp_path):
    lines = [json.dumps({"text": f"review {i}"}) for i in range(100)]
    lines[70] = '{"text": "cut off'
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"cannot read .*in\.jsonl \(lines from 41\)"):
        predict_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", "text", 32, **SMALL)
    assert not (tmp_path / "out.jsonl").exists()


def test_predict_file_leaves_no_output_and_keeps_the_last_one_when_scoring_fails_midway(model, reviews, tmp_path,
                                                                                       monkeypatch):
    source = write(reviews, tmp_path / "in.csv")
    target = tmp_path / "out" / "in.predictions.csv"
    target.parent.mkdir()
    target.write_text("an earlier, complete output\n")
    calls = []

    def fail_on_the_third_chunk(model, texts, batch_size):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("onnxruntime died")
        return predict_texts(model, texts, batch_size)

    monkeypatch.setattr(stream, "predict_texts", fail_on_the_third_chunk)
    with pytest.raises(RuntimeError, match="onnxruntime died"):
        predict_file(model, source, target, "text", 32, **SMALL)
    assert len(calls) == 3
    assert target.read_text() == "an earlier, complete output\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["in.predictions.csv"], "no temp file left behind"


def test_predict_file_scores_one_row_group_of_a_parquet_file(model, reviews, tmp_path):
    source = write(reviews, tmp_path / "in.parquet", row_group_size=200)
    assert predict_file(model, source, tmp_path / "rg1.parquet", "text", 32, row_group=1) == 200
    assert pd.read_parquet(tmp_path / "rg1.parquet")["id"].tolist() == list(range(200, 400))
    with pytest.raises(DataFormatError, match="has 3 row groups, not a group 3"):
        predict_file(model, source, tmp_path / "rg3.parquet", "text", 32, row_group=3)


def test_batch_parts_are_files_and_row_groups_of_multi_group_parquet_files(reviews, tmp_path):
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    write(reviews.head(10), data / "a.csv")
    write(reviews.head(10), data / "nested" / "b.jsonl")
    write(reviews.head(250), data / "c.parquet", row_group_size=100)
    write(reviews.head(10), data / "d.parquet")
    (data / "notes.txt").write_text("not a table")
    parts = plan_parts(expand_inputs([str(data)]))
    assert [(p.name, p.row_group) for p in parts] == [("a", None), ("c.rg00000", 0), ("c.rg00001", 1),
                                                      ("c.rg00002", 2), ("d", None), ("b", None)]
    assert all(p.path.startswith("/") for p in parts), "absolute: workers may run in another folder"
    globbed = expand_inputs([str(data / "*.csv"), str(data / "**" / "*.jsonl")])
    assert [p.name for p in plan_parts(globbed)] == ["a", "b"]


def test_batch_inputs_that_match_nothing_or_collide_are_refused(reviews, tmp_path):
    with pytest.raises(BatchInputError, match="matches nothing"):
        expand_inputs([str(tmp_path / "missing.csv")])
    with pytest.raises(BatchInputError, match="matches nothing"):
        expand_inputs([str(tmp_path / "*.csv")])
    (tmp_path / "x").mkdir()
    write(reviews.head(3), tmp_path / "x" / "same.csv")
    write(reviews.head(3), tmp_path / "same.jsonl")
    with pytest.raises(BatchInputError, match="same name would write the same output"):
        plan_parts(expand_inputs([str(tmp_path)]))


def test_batch_workers_split_the_cores_between_them(monkeypatch):
    monkeypatch.setattr("flows.batch_scoring.cores", lambda: 16)  # the CPUs this process may use
    assert (onnx_threads(2), onnx_threads(4), onnx_threads(32)) == (8, 4, 1)


def test_batch_score_command_takes_inputs_an_output_dir_and_a_cluster():
    args = build_parser().parse_args(["batch-score", "data", "more/*.parquet", "--output-dir", "out", "--workers", "4",
                                      "--dask-address", "tcp://scheduler:8786"])
    assert (args.inputs, args.output_dir, args.workers, args.dask_address) == (
        ["data", "more/*.parquet"], "out", 4, "tcp://scheduler:8786")
    assert args.model == "artifacts/quantize/onnx" and args.func.__name__ == "cmd_batch_score"


@pytest.mark.e2e
def test_batch_scoring_flow_on_a_local_two_worker_dask_cluster_gives_predict_files_answers(
        prefect_api, model, served_folder, reviews, tmp_path):
    from flows.batch_scoring import batch_scoring

    data = tmp_path / "data"
    data.mkdir()
    write(reviews.iloc[:100], data / "first.csv")
    write(reviews.iloc[100:200], data / "second.jsonl")
    write(reviews.iloc[200:], data / "third.parquet", row_group_size=100)  # 240 rows: 3 row groups
    out = tmp_path / "out"
    rows = batch_scoring([str(data)], str(out), model=str(served_folder), batch_size=16, workers=2)
    assert rows == {"first": 100, "third.rg00000": 100, "third.rg00001": 100, "third.rg00002": 40, "second": 100}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.predictions.parquet" for name in rows)
    for source, names in (("first.csv", ["first"]), ("second.jsonl", ["second"]),
                          ("third.parquet", ["third.rg00000", "third.rg00001", "third.rg00002"])):
        predict_file(model, data / source, tmp_path / "expected.parquet", "text", 16)
        got = pd.concat([pd.read_parquet(out / f"{n}.predictions.parquet") for n in names], ignore_index=True)
        assert_same_predictions(got, pd.read_parquet(tmp_path / "expected.parquet"))


@pytest.mark.e2e
def test_batch_scoring_benchmark_smoke_run_prints_its_json(served_folder, tmp_path):
    from tests.test_benchmarks import run_benchmark

    result = run_benchmark("batch_scoring.py", "--rows", "300", "--model", str(served_folder), "--out",
                           str(tmp_path / "r.json"), cwd=tmp_path)
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert result["rows"] == result["rows_written"] == 300 and result["target_mb"] == 1024
    assert result["peak_rss_mb"] > 0 and result["texts_per_s"] > 0 and result["within_target"] is True
