"""The CPU record beside dvc.lock (tasks/core/lock_cpu.py) and the CPU in run records: which host's numerics
produced the committed stages, and the run summary's note when they are not this host's."""

import json
from types import SimpleNamespace

import pytest

from flows.cli import main
from tasks.core.dvc_cache import DvcStageCache
from tasks.core.host import cpu_facts, same_numerics
from tasks.core.lock_cpu import (LockCpuRecordError, committed_lock_cpus, foreign_lock_note, lock_cpus_on_disk,
                                 record_lock_cpu)
from tasks.core.paths import ArtifactPaths
from tasks.core.runlog import write_run_record
from tests.conftest import BIN, run, tiny_params

XEON_AMX = {"machine": "x86_64", "model": "Intel(R) Xeon(R) Platinum 8480+", "kind": "avx512_vnni+amx",
            "flags": ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                      "amx_tile", "amx_int8", "amx_bf16"]}
EPYC_AVX2 = {"machine": "x86_64", "model": "AMD EPYC 7B13", "kind": "avx2", "flags": ["avx2", "fma", "f16c"]}


def other_cpu(host: dict) -> dict:
    """A CPU whose numerics differ from `host`'s: an AMX Xeon, or an AVX2 EPYC where this host is the Xeon."""
    return EPYC_AVX2 if same_numerics(host, XEON_AMX) else XEON_AMX


def same_kind_other_model(host: dict) -> dict:
    return {**host, "model": f"{host['model']} (another model of the same kind)"}


def git(root, *args) -> str:
    return run(["git", *args], root).stdout


def git_project(root) -> ArtifactPaths:
    root.mkdir(exist_ok=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "tests@tunegate.invalid")
    git(root, "config", "user.name", "tunegate tests")
    return ArtifactPaths(root)


# ---------------------------------------------------------------- the record

def test_record_lock_cpu_writes_this_hosts_cpu_per_stage_in_pipeline_order(tmp_path):
    paths = ArtifactPaths(tmp_path)
    for stage in ("gate", "train", "validate"):
        record_lock_cpu(paths, stage)
    record = json.loads(paths.lock_cpu.read_text())
    assert list(record["stages"]) == ["validate", "train", "gate"]
    host = cpu_facts()
    assert record["stages"]["train"] == {k: host[k] for k in ("machine", "model", "flags", "kind")}


def test_a_host_of_the_same_numerics_leaves_the_record_byte_identical_another_replaces_the_entry(tmp_path):
    paths = ArtifactPaths(tmp_path)
    record_lock_cpu(paths, "train")
    before = paths.lock_cpu.read_bytes()
    record_lock_cpu(paths, "train", same_kind_other_model(cpu_facts()))
    assert paths.lock_cpu.read_bytes() == before
    foreign = other_cpu(cpu_facts())
    record_lock_cpu(paths, "train", foreign)
    assert lock_cpus_on_disk(paths)["train"] == foreign


def test_a_record_that_is_not_one_is_refused_naming_the_file(tmp_path):
    paths = ArtifactPaths(tmp_path)
    paths.lock_cpu.write_text('{"train": "x"}')
    with pytest.raises(LockCpuRecordError, match="dvc.lock.cpu.json"):
        lock_cpus_on_disk(paths)
    paths.lock_cpu.write_text('{"stages": {"train": "x"}}')
    with pytest.raises(LockCpuRecordError, match="CPU facts"):
        record_lock_cpu(paths, "train")


def test_committed_record_is_read_from_git_head_not_the_work_tree(tmp_path):
    repo = git_project(tmp_path / "repo").root
    paths = ArtifactPaths(repo / "project")  # a project below the repository's top level
    paths.root.mkdir()
    record_lock_cpu(paths, "train", XEON_AMX)
    git(repo, "add", "project/dvc.lock.cpu.json")
    git(repo, "commit", "-q", "-m", "lock from a Xeon")
    record_lock_cpu(paths, "train", EPYC_AVX2)  # a run here rewrote the work tree's record
    assert committed_lock_cpus(paths) == {"train": XEON_AMX}
    assert lock_cpus_on_disk(paths) == {"train": EPYC_AVX2}


def test_without_a_commit_the_work_trees_record_counts(tmp_path):
    paths = git_project(tmp_path / "fresh")
    assert committed_lock_cpus(paths) == {}
    record_lock_cpu(paths, "gate", XEON_AMX)
    assert committed_lock_cpus(paths) == {"gate": XEON_AMX}


# ---------------------------------------------------------------- the run summary's note

def test_no_note_when_the_lock_came_from_cpus_of_this_hosts_numerics_or_from_nowhere():
    host = cpu_facts()
    assert foreign_lock_note({"train": host, "gate": same_kind_other_model(host)}, host) == []
    assert foreign_lock_note({}, host) == []


def test_note_names_the_committing_cpu_once_and_this_host():
    host = cpu_facts()
    foreign = other_cpu(host)
    lines = foreign_lock_note({"validate": host, "train": foreign, "gate": foreign}, host)
    assert lines == [
        f"dvc.lock was committed from {foreign['kind']}, {foreign['model']}; this host is {host['kind']}, "
        f"{host['model']}:",
        "training on another instruction set gives other bytes from train on; the verdict is re-earned here and "
        "the shipped model's parity certificate is re-checked where it is served."]


# ---------------------------------------------------------------- run records and the flow's dvc.lock record

def test_run_records_name_this_hosts_cpu(tmp_path):
    record = json.loads(write_run_record(ArtifactPaths(tmp_path), "train", {"seconds": 1.0}).read_text())
    assert record["cpu"] == cpu_facts() and record["cpu"]["kind"] and "flags" in record["cpu"]


def dvc_project(root) -> ArtifactPaths:
    """A git + DVC project with one stage whose output is a file the test writes (no pipeline)."""
    paths = git_project(root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    (root / "dvc.yaml").write_text("stages:\n  copy:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n"
                                   "    outs: [out.txt]\n")
    (root / "in.txt").write_text("in\n")
    return paths


@pytest.mark.heavy
def test_the_flow_records_this_hosts_cpu_only_when_a_stages_dvc_lock_entry_changes(tmp_path):
    paths = dvc_project(tmp_path / "project")
    cache = DvcStageCache(paths.root)
    (paths.root / "out.txt").write_text("first\n")
    assert cache.record("copy", cache.dep_hashes("copy"), {}) == []
    assert lock_cpus_on_disk(paths)["copy"]["flags"] == cpu_facts()["flags"]
    foreign = other_cpu(cpu_facts())
    record_lock_cpu(paths, "copy", foreign)  # as if the entry had come from another CPU
    assert cache.record("copy", cache.dep_hashes("copy"), {}) == []  # the same bytes: the entry is unchanged
    assert lock_cpus_on_disk(paths)["copy"] == foreign
    (paths.root / "out.txt").write_text("other bytes\n")
    assert cache.record("copy", cache.dep_hashes("copy"), {}) == []
    assert same_numerics(lock_cpus_on_disk(paths)["copy"], cpu_facts())


def test_tunegate_stage_records_its_cpu_when_dvc_repro_runs_it_and_not_alone(tmp_path, tiny_model_dir, monkeypatch):
    from ruamel.yaml import YAML

    YAML().dump(tiny_params(tiny_model_dir), tmp_path / "params.yaml")
    paths = ArtifactPaths(tmp_path)
    ran = SimpleNamespace(fn=lambda cfg, paths: SimpleNamespace(key_figure="ran"))
    monkeypatch.setattr("tasks.core.stage.load_stage", lambda name: ran)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert main(["stage", "prepare"]) == 0
    assert not paths.lock_cpu.exists(), "alone, `tunegate stage` records nothing in dvc.lock"
    monkeypatch.setenv("DVC_STAGE", "prepare")  # as `dvc repro` runs it
    assert main(["stage", "prepare"]) == 0
    assert list(lock_cpus_on_disk(paths)) == ["prepare"]
    assert same_numerics(lock_cpus_on_disk(paths)["prepare"], cpu_facts())


def test_a_retraining_commits_the_cpu_record_with_dvc_lock(tmp_path):
    from datetime import UTC, datetime

    from tasks.monitoring.data_version import commit_model

    paths = git_project(tmp_path / "project")
    (paths.root / "params.yaml").write_text("seed: 1\n")
    git(paths.root, "add", "params.yaml")
    git(paths.root, "commit", "-q", "-m", "project")
    (paths.root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # a first run: both files new
    record_lock_cpu(paths, "train")
    branch, commit = commit_model(paths.root, None, "retrain", datetime(2026, 12, 6, tzinfo=UTC))
    assert branch and commit
    committed = git(paths.root, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(committed) == ["dvc.lock", "dvc.lock.cpu.json"]
