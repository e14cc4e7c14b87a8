"""The model card a release carries (README.md): Hugging Face metadata the Hub's parser reads, the gate's figures
with their intervals, the same bytes from the same run, `tunegate card`, and the promotion tag naming it."""

import copy
import hashlib
import json
import shutil
from dataclasses import replace

import pytest
from huggingface_hub import ModelCard

from flows.cli import main
from tasks.core.io import read_json
from tasks.gate import card_inputs
from tasks.judging.card import (CARD_FILE, NO_DISTILL_RECORD, base_model_id, partial_reading, reading_limit,
                                render_card)
from tasks.registry import tags
from tasks.runtime.long_text import describe, normalise
from tests.conftest import BIN, run


def release_of(paths):
    return paths.stage_dir("gate") / "release"


def staged_inputs(staged_pipeline):
    cfg, paths = staged_pipeline
    return card_inputs(paths.stage_dir("gate"), paths, cfg.gate)


def metrics_by_type(metadata: dict) -> dict[str, dict]:
    (model,) = metadata["model-index"]
    (result,) = model["results"]
    return {m["type"]: {**m, "dataset": result["dataset"], "task": result["task"]} for m in result["metrics"]}


def test_card_metadata_parses_and_holds_the_gates_metrics_data_version_and_base_model(staged_pipeline):
    cfg, paths = staged_pipeline
    text = (release_of(paths) / CARD_FILE).read_text()
    metadata = ModelCard(text).data.to_dict()
    decision, stamp = read_json(paths.decision), read_json(paths.train_stamp)
    data = stamp["data"]
    assert metadata["datasets"] == [f"{data['path']}@sha256:{data['sha256']}"]
    assert metadata["base_model"] == base_model_id(stamp["base_model"]) == stamp["base_model"]["path"]
    assert (metadata["pipeline_tag"], metadata["library_name"]) == ("text-classification", "onnx")
    assert "license" not in metadata, "nothing the run records gives a license"
    assert metadata["model-index"][0]["name"] == tags.ARTIFACT
    found = metrics_by_type(metadata)
    for kind, key in (("accuracy", "accuracy"), ("f1", "macro_f1")):
        figure = decision["metrics"][key]
        entry = found[kind]
        assert entry["value"] == figure["value"]
        assert entry["args"]["interval"] == [figure["low"], figure["high"]]
        assert entry["args"]["confidence"] == cfg.gate.confidence and entry["verified"] is False
        assert f"[{figure['low']:.4f}, {figure['high']:.4f}]" in entry["name"]
        assert entry["dataset"]["split"] == "test" and entry["dataset"]["revision"] == f"sha256:{data['sha256']}"
    assert found["f1"]["args"]["average"] == "macro"
    body = ModelCard(text).text
    rule = normalise(read_json(release_of(paths) / "serving.json")["long_text"])
    assert f"Rule: **{describe(rule)}**" in body
    assert f"verdict **{decision['decision']}**" in body and decision["why"] in body
    assert "No recipe search is recorded" in body


def test_card_is_the_same_bytes_from_the_same_inputs_and_changes_with_a_metric(staged_pipeline):
    _, paths = staged_pipeline
    inputs = staged_inputs(staged_pipeline)
    written = (release_of(paths) / CARD_FILE).read_text()
    assert render_card(inputs) == render_card(inputs) == written, "the gate's card is this function of its outputs"
    changed = copy.deepcopy(inputs.decision)
    changed["metrics"]["accuracy"]["value"] += 0.01
    other = render_card(replace(inputs, decision=changed))
    assert other != written
    accuracy = metrics_by_type(ModelCard(other).data.to_dict())["accuracy"]
    assert accuracy["value"] == changed["metrics"]["accuracy"]["value"]


def test_selection_effort_says_one_recipe_plainly_and_reads_a_search_record(staged_pipeline):
    inputs = staged_inputs(staged_pipeline)
    search = {"study": "recipe", "trials": 12, "complete": 9, "pruned": 2, "failed": 1, "metric": "train dev accuracy",
              "best": {"trial": 7, "dev": 0.8512, "params": {"train.learning_rate": 6.1e-05, "train.epochs": 2}},
              "default": {"trial": 0, "dev": 0.8204, "params": {}},
              "spread": {"min": 0.7901, "median": 0.82, "max": 0.8512}, "applied": True, "differs": []}
    body = ModelCard(render_card(replace(inputs, selection=search))).text
    assert "A recipe search (study recipe) tried 12 recipes (9 finished, 2 stopped early, 1 failed)" in body
    assert "trial 7: learning_rate 6.1e-05, epochs 2" in body and "0.8512" in body and "0.7901 to 0.8512" in body
    assert "(trial 0) scored 0.8204" in body and "No recipe search" not in body
    stale = ModelCard(render_card(replace(inputs, selection={**search, "applied": False,
                                                             "differs": ["train.epochs"]}))).text
    assert "not trained with the chosen values of train.epochs" in stale


@pytest.mark.parametrize("rule, words", [
    ({"rule": "head"}, "only its first tokens are read"),
    ({"rule": "head_tail", "head_tokens": 16}, "its first 16 tokens and as many of its last"),
    ({"rule": "window", "stride": 62, "max_windows": 4, "aggregate": "max_confidence"},
     "longer than about 250 tokens is read in part: 4 windows"),
    ({"rule": "window", "stride": 31, "aggregate": "mean_prob"}, "longer than about 2,017 tokens is read in part"),
])
def test_reading_limit_says_what_each_rule_leaves_unread(rule, words):
    assert words in reading_limit(rule, 64) and partial_reading(rule, 64) in reading_limit(rule, 64)


def test_gate_release_holds_the_card_and_tunegate_card_prints_it(staged_pipeline, tmp_path, capsys):
    _, paths = staged_pipeline
    card = release_of(paths) / CARD_FILE
    assert card.is_file()
    assert main(["card", "--project", str(paths.root)]) == 0
    assert capsys.readouterr().out == card.read_text()
    project = tmp_path / "project"
    shutil.copytree(release_of(paths), project / "artifacts" / "gate" / "release")
    (project / "artifacts" / "gate" / "release" / CARD_FILE).unlink()
    assert main(["card", "--project", str(project)]) == 1
    assert "holds no model card (README.md)" in capsys.readouterr().err


def test_promotion_tag_names_the_card_and_tunegate_card_prints_a_registered_versions(registry_project):
    root = registry_project
    card = root / "artifacts" / "gate" / "release" / CARD_FILE
    sha256 = hashlib.sha256(card.read_bytes()).hexdigest()
    promoted = run([str(BIN / "tunegate"), "promote"], root, check=False)
    assert promoted.returncode == 0, promoted.stderr
    for tag in ("tunegate@v0.1.0", "tunegate#prod#1"):
        message = run(["git", "for-each-ref", "--format=%(contents)", f"refs/tags/{tag}"], root).stdout
        assert tags.message_fields(message)["card"] == f"README.md (sha256 {sha256})"
    printed = run([str(BIN / "tunegate"), "card", "v0.1.0"], root)
    assert printed.stdout == card.read_text()
    assert "distill.enabled is false" in printed.stdout, "the registry project ships its teacher"
    unknown = run([str(BIN / "tunegate"), "card", "v9.9.9"], root, check=False)
    assert unknown.returncode == 1 and "no version 'v9.9.9'" in unknown.stderr and "versions: v0.1.0" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert json.loads((root / "artifacts" / "gate" / "decision.json").read_text())["decision"] in printed.stdout


def test_a_student_without_a_distill_record_is_named_without_inventing_its_recipe(staged_pipeline):
    inputs = staged_inputs(staged_pipeline)
    decision = copy.deepcopy(inputs.decision)
    decision["candidate"]["model"] = "student"
    body = ModelCard(render_card(replace(inputs, decision=decision, distill={}))).text
    assert f"- **Shipped:** a student ({NO_DISTILL_RECORD})." in body
    assert f"- **Student:** {NO_DISTILL_RECORD}." in body and "Distillation on dev" not in body
