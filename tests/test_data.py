"""Input data: the packaged default copied byte for byte; user tables in CSV, Parquet or JSONL."""

import pandas as pd
import pytest

from tasks.core.config import DataConfig
from tasks.core.data import DefaultDataConflict, default_data_source, materialise_default_data, read_dataset
from tasks.core.io import DataFormatError, file_sha256, read_table


def test_default_data_copied_byte_for_byte_and_idempotent(tmp_path):
    target, copied = materialise_default_data(tmp_path / "data")
    assert copied and target.read_bytes() == default_data_source().read_bytes()
    again, copied_again = materialise_default_data(tmp_path / "data")
    assert again == target and not copied_again


def test_default_data_never_overwrites_a_different_file_without_force(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "movie_reviews.csv").write_text("text,label\nmine,1\n")
    with pytest.raises(DefaultDataConflict):
        materialise_default_data(data)
    assert (data / "movie_reviews.csv").read_text() == "text,label\nmine,1\n"
    materialise_default_data(data, force=True)
    assert file_sha256(data / "movie_reviews.csv") == file_sha256(default_data_source())


def test_default_data_matches_the_committed_data_dvc():
    """data.dvc in the repo records the md5 of the packaged CSV: DVC sees the copy as unchanged."""
    import hashlib
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    file_md5 = hashlib.md5(default_data_source().read_bytes()).hexdigest()
    # DVC's directory hash is the md5 of the JSON listing of (md5, relpath) entries.
    listing = json.dumps([{"md5": file_md5, "relpath": "movie_reviews.csv"}], sort_keys=True).encode()
    assert hashlib.md5(listing).hexdigest() + ".dir" in (repo / "data.dvc").read_text()


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_read_table_supports_each_format(tmp_path, suffix):
    frame = pd.DataFrame({"text": ["great film", "dull"], "label": [1, 0]})
    path = tmp_path / f"reviews{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path, index=False),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[suffix]()
    read = read_table(path)
    assert list(read["text"]) == ["great film", "dull"] and list(read["label"]) == [1, 0]


def test_read_table_reads_every_table_in_a_folder(tmp_path):
    pd.DataFrame({"text": ["a"], "label": [0]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"text": ["b"], "label": [1]}).to_parquet(tmp_path / "two.parquet", index=False)
    assert sorted(read_table(tmp_path)["text"]) == ["a", "b"]


@pytest.mark.parametrize("name,content", [("empty.csv", b""), ("bytes.csv", b"text,label\n\xff\xfe bad,1\n"),
                                          ("reviews.txt", b"text\n")])
def test_read_table_names_unreadable_input(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataFormatError, match=name):
        read_table(tmp_path / name)


DATA = DataConfig(path="data", text_column="text", label_column="label", labels=[0, 1], label_names=["a", "b"],
                  source_column=None, split_column=None)


def test_read_dataset_names_a_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "great film", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"line 2 is a JSON list, not an object"):
        read_dataset(path, DATA)


def test_read_dataset_refuses_a_folder_whose_files_differ_in_the_configured_columns(tmp_path):
    pd.DataFrame({"text": ["a"], "label": [0]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"review": ["b"], "sentiment": [1]}).to_parquet(tmp_path / "two.parquet", index=False)
    with pytest.raises(DataFormatError, match=r"one.csv has text, label .*two.parquet has none of them"):
        read_dataset(tmp_path, DATA)
    pd.DataFrame({"text": ["b"], "label": [1], "extra": [2]}).to_parquet(tmp_path / "two.parquet", index=False)
    assert sorted(read_dataset(tmp_path, DATA)["text"]) == ["a", "b"], "other columns may differ"


def test_read_dataset_reads_nested_parquet_values_as_they_are(tmp_path):
    pd.DataFrame({"text": [["a", "b"]], "label": [{"x": 1}]}).to_parquet(tmp_path / "nested.parquet")
    frame = read_dataset(tmp_path / "nested.parquet", DATA)
    assert list(frame["text"][0]) == ["a", "b"], "the contract, not the reader, refuses non-string texts"
