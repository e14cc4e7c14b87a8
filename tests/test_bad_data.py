"""Bad input never gets past the data contracts: each case names its problem, shows rows, exits 1,
and neither vetting it nor running the stages on it changes any earlier artifact."""

import shutil

import numpy as np
import pandas as pd
import pytest
from ruamel.yaml import YAML

from flows.cli import main
from tests.conftest import REPO, tiny_params


def frame_case(change):
    """A case built by changing a copy of the real reviews slice."""
    def write(path, reviews):
        change(reviews).to_csv(path, index=False)
    return write


def bytes_case(content: bytes):
    def write(path, reviews):
        path.write_bytes(content)
    return write


def with_rows(reviews, rows, column, values):
    out = reviews.copy()
    out.loc[rows, column] = values
    return out


BAD = {
    "missing_column": (frame_case(lambda r: r.rename(columns={"label": "sentiment"})),
                       "expect_table_columns_to_match_set"),
    "wrong_types": (frame_case(lambda r: r.assign(text=[str(i) if i % 2 else i for i in range(len(r))])),
                    "__text_is_string"),
    "empty_file": (bytes_case(b""), "readable_table"),
    "header_only": (bytes_case(b"text,label,source\n"), "expect_table_row_count_to_be_between"),
    "invalid_utf8": (bytes_case(b"text,label\n\xff\xfe\xfa broken bytes,1\n"), "readable_table"),
    "byte_order_mark": (bytes_case("\ufefftext,label\nfine,1\n".encode()), "byte-order mark"),
    "null_labels": (frame_case(lambda r: with_rows(r, [1, 2], "label", np.nan)),
                    "expect_column_values_to_not_be_null | label"),
    "unknown_labels": (frame_case(lambda r: with_rows(r, [4], "label", 3)),
                       "expect_column_values_to_be_in_set | label"),
    "single_class": (frame_case(lambda r: r.assign(label=1)), "__class_share"),
    "blank_texts": (frame_case(lambda r: with_rows(r, [0, 9], "text", " \t ")),
                    "expect_column_values_to_not_match_regex | text"),
    "huge_single_row": (frame_case(lambda r: with_rows(r, [5], "text", "very long " * 5000)),
                        "expect_column_value_lengths_to_be_between"),
    "duplicates": (frame_case(lambda r: pd.concat([r, r.head(150).assign(text=r.head(150)["text"].str.upper())],
                                                  ignore_index=True)),
                   "__normalised_text"),
    "extreme_imbalance": (frame_case(lambda r: pd.concat([r[r.label == 1], r[r.label == 0].head(5)],
                                                         ignore_index=True)), "__class_share"),
    "malformed_quoting": (bytes_case(b'text,label\n"an unclosed quote,1\nnext row,0\n'), "readable_table"),
    "control_characters": (frame_case(lambda r: with_rows(r, list(range(0, 40, 4)), "text", "bad\x07bytes\x00here")),
                           "expect_column_values_to_not_match_regex | text"),
}




def split_case(change):
    """A pre-split case (data.split_column = split): the real slice split 80/10/10, then changed."""
    def presplit(reviews):
        rt = reviews[reviews["source"] == "rotten_tomatoes"].copy()
        position = rt.groupby("label").cumcount()
        rt["split"] = np.select([position < 160, position < 180], ["train", "dev"], "test")
        return change(rt.reset_index(drop=True))
    return frame_case(presplit)


def leak(frame, edit):
    """Rows of train, edited by `edit`, added again to test."""
    rows = frame[(frame["split"] == "train") & (frame["text"].str.split().str.len() >= 25)].head(4)
    return pd.concat([frame, rows.assign(split="test", text=edit(rows["text"]))], ignore_index=True)


PRESPLIT_BAD = {
    "leakage_across_splits": (split_case(lambda f: leak(f, lambda t: t.str.upper())), "leak_exact"),
    "near_duplicate_leakage": (split_case(lambda f: leak(f, lambda t: t + " indeed")), "leak_near"),
    "unknown_split_names": (split_case(lambda f: f.assign(split=f["split"].replace("dev", "holdout"))),
                            "expect_column_values_to_be_in_set | split"),
}

# Problems of the whole file (unreadable, wrong shape): no single row to quote.
FILE_LEVEL = {"missing_column", "empty_file", "header_only", "invalid_utf8", "byte_order_mark", "malformed_quoting"}


def write_params(root, tiny_model_dir, presplit: bool) -> None:
    params = tiny_params(tiny_model_dir)
    if presplit:
        params["data"]["split_column"] = "split"
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(params, handle)


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, monkeypatch):
    """A project folder with params.yaml and the suites; the tests run `tunegate validate` in it."""
    shutil.copytree(REPO / "expectations", tmp_path / "expectations")
    write_params(tmp_path, tiny_model_dir, presplit=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path


ALL_BAD = {**BAD, **PRESPLIT_BAD}


@pytest.mark.parametrize("case", sorted(ALL_BAD))
def test_bad_dataset_is_refused_with_its_problem_named(case, workdir, tiny_model_dir, reviews_frame, capsys):
    write, problem = ALL_BAD[case]
    write_params(workdir, tiny_model_dir, presplit=case in PRESPLIT_BAD)
    path = workdir / "incoming" / "reviews.csv"
    path.parent.mkdir()
    write(path, reviews_frame)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    check, _, column = problem.partition(" | ")
    failing = [line for line in out.splitlines() if check in line and "FAIL" in line and column in line]
    assert failing or (check in out and "FAILED" in out), out
    if case not in FILE_LEVEL:
        assert "{'row': " in out, "row-level problems quote example rows"
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before, "vetting must write nothing"


def test_good_data_with_embedded_newlines_passes(workdir, reviews_frame, capsys):
    path = workdir / "reviews.csv"
    with_rows(reviews_frame, [3], "text", 'a review "quoted",\nover two lines').to_csv(path, index=False)
    assert main(["validate", str(path)]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_mojibake_is_a_warning_that_does_not_stop(workdir, reviews_frame, capsys):
    path = workdir / "reviews.csv"
    with_rows(reviews_frame, list(range(0, 40, 4)), "text", "itâ€™s a fine film").to_csv(path, index=False)
    assert main(["validate", str(path), "--report-dir", str(workdir / "report")]) == 0
    out = capsys.readouterr().out
    assert "PASSED with 1 warning(s)" in out and "warn" in out
    html = (workdir / "report" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "itâ€™s a fine film" in html


@pytest.fixture(scope="module")
def good_projects(tmp_path_factory, tiny_model_dir, reviews_frame):
    """Two projects (plain and pre-split data) whose validate and prepare stages ran on good data."""
    from tasks.core.config import load_config
    from tasks.core.paths import ArtifactPaths
    from tasks.core.stage import load_stage

    projects = {}
    for presplit in (False, True):
        root = tmp_path_factory.mktemp("presplit" if presplit else "plain")
        shutil.copytree(REPO / "expectations", root / "expectations")
        write_params(root, tiny_model_dir, presplit)
        (root / "data").mkdir()
        good = split_case(lambda f: f) if presplit else frame_case(lambda f: f)
        good(root / "data" / "movie_reviews.csv", reviews_frame)
        for stage in ("validate", "prepare"):
            load_stage(stage).fn(load_config(root / "params.yaml"), ArtifactPaths(root))
        projects[presplit] = root
    return projects


def artifact_bytes(root):
    """Every file of the stages' outputs (failure reports live apart, in artifacts/_failed)."""
    return {p.relative_to(root): p.read_bytes() for p in (root / "artifacts").rglob("*")
            if p.is_file() and "_failed" not in p.parts}


@pytest.mark.parametrize("case", sorted(ALL_BAD))
def test_stages_on_bad_data_change_no_earlier_artifact(case, good_projects, reviews_frame, monkeypatch, capsys):
    write, _ = ALL_BAD[case]
    root = good_projects[case in PRESPLIT_BAD]
    data = root / "data" / "movie_reviews.csv"
    good = data.read_bytes()
    monkeypatch.chdir(root)
    try:
        write(data, reviews_frame)
        before = artifact_bytes(root)
        codes = [main(["stage", "validate"])]
        if codes[0] == 0:  # raw data fine: the split contract must catch it
            assert case in PRESPLIT_BAD, capsys.readouterr()
            codes.append(main(["stage", "prepare"]))
            before = {k: v for k, v in before.items() if k.parts[1] != "validate"}  # revalidated: new report
        assert codes[-1] == 1
        after = artifact_bytes(root)
        assert {k: v for k, v in after.items() if k in before or k.parts[1] != "validate"} == before
        failed_stage = ["validate", "prepare"][len(codes) - 1]
        assert (root / "artifacts" / "_failed" / failed_stage / "report.md").is_file()
    finally:
        data.write_bytes(good)
