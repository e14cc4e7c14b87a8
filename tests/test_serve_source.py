"""Where `tunegate serve` gets its model, and how it follows it: a folder's version is its model file's hash, a
registry source names its stage, and a reload swaps in a changed version or keeps the old one serving."""

import asyncio
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from tasks.core.errors import TunegateError
from tasks.serving.reload import ReloadError, reload_if_changed
from tasks.serving.scoring import ModelHolder, load_served
from tasks.serving.source import FolderSource, RegistrySource, SourceError, source_for

TEXTS = ["a gripping, beautiful film", "dull and far too long"]


def served_folder(root: Path, model_bytes: bytes = b"model v1") -> Path:
    """A folder shaped like a served one (serving.json naming its model file); enough for resolving."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "serving.json").write_text(json.dumps({"model_file": "model.onnx", "max_length": 16,
                                                   "labels": ["negative", "positive"]}))
    (root / "model.onnx").write_bytes(model_bytes)
    return root


# --- FolderSource -----------------------------------------------------------------------------------------------

def test_folder_source_version_is_the_model_files_hash_and_stable(tmp_path):
    folder = served_folder(tmp_path / "model")
    source = FolderSource(folder)
    first = source.resolve()
    assert first.version == "sha256:" + hashlib.sha256(b"model v1").hexdigest()[:12]
    assert first.folder == folder
    assert source.resolve() == first and FolderSource(folder).resolve() == first
    assert source.description == f"folder {folder}"


def test_folder_source_version_changes_when_the_model_file_changes(tmp_path):
    folder = served_folder(tmp_path / "model")
    source = FolderSource(folder)
    before = source.resolve().version
    (folder / "model.onnx").write_bytes(b"model v2, retrained")
    after = source.resolve().version
    assert after != before and after == "sha256:" + hashlib.sha256(b"model v2, retrained").hexdigest()[:12]
    # A whole folder swapped in place (what export's staged write does) is a new version too.
    shutil.rmtree(folder)
    served_folder(folder, b"model v3")
    assert source.resolve().version == "sha256:" + hashlib.sha256(b"model v3").hexdigest()[:12]


def test_folder_source_follows_the_model_file_serving_json_names(tmp_path):
    folder = served_folder(tmp_path / "model")
    (folder / "model.optimized.onnx").write_bytes(b"optimized")
    (folder / "serving.json").write_text(json.dumps({"model_file": "model.optimized.onnx"}))
    assert FolderSource(folder).resolve().version == "sha256:" + hashlib.sha256(b"optimized").hexdigest()[:12]


@pytest.mark.parametrize("breakage, match", [
    ("missing folder", "is not a folder"),
    ("no serving.json", "no serving.json"),
    ("serving.json unreadable", "cannot be read"),
    ("model file missing", "names the model file 'model.onnx', which is not there"),
])
def test_folder_source_refuses_a_folder_that_is_not_served(tmp_path, breakage, match):
    folder = served_folder(tmp_path / "model")
    if breakage == "missing folder":
        shutil.rmtree(folder)
    elif breakage == "no serving.json":
        (folder / "serving.json").unlink()
    elif breakage == "serving.json unreadable":
        (folder / "serving.json").write_text("{not json")
    else:
        (folder / "model.onnx").unlink()
    with pytest.raises(SourceError, match=match) as raised:
        FolderSource(folder).resolve()
    assert isinstance(raised.value, TunegateError) and str(folder) in str(raised.value)


# --- source_for -------------------------------------------------------------------------------------------------

def test_source_for_reads_registry_stages_and_folders(tmp_path):
    registry = source_for("registry:prod", tmp_path)
    assert isinstance(registry, RegistrySource) and registry.stage == "prod" and registry.project == tmp_path
    assert registry.description == "registry prod"
    assert source_for("registry:staging", tmp_path).stage == "staging"
    relative = source_for("artifacts/quantize/onnx", tmp_path)
    assert isinstance(relative, FolderSource) and relative.folder == tmp_path / "artifacts/quantize/onnx"
    absolute = source_for(str(tmp_path / "elsewhere"), Path("/somewhere/else"))
    assert isinstance(absolute, FolderSource) and absolute.folder == tmp_path / "elsewhere"


def test_source_for_refuses_a_registry_source_without_a_stage(tmp_path):
    with pytest.raises(SourceError, match="names no stage"):
        source_for("registry:", tmp_path)


def test_registry_source_outside_a_registry_says_to_promote_first(tmp_path):
    with pytest.raises(SourceError, match="tunegate promote"):
        RegistrySource(tmp_path, "prod").resolve()


def test_registry_source_without_gto_and_dvc_names_the_full_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tasks.registry.tags", None)  # what a serving-only install sees
    with pytest.raises(SourceError, match="needs the full install") as raised:
        RegistrySource(tmp_path, "prod").resolve()
    assert "registry:prod" in str(raised.value)


# --- reload_if_changed (tiny real models) -----------------------------------------------------------------------

def reload(source, holder):
    return asyncio.run(reload_if_changed(source, holder, name="tunegate", threads=1, drain_timeout_s=5))


@pytest.fixture
def served(staged_pipeline, tmp_path):
    """A served tiny INT8 folder and the holder serving it (closed at the end)."""
    _, paths = staged_pipeline
    folder = shutil.copytree(paths.int8_dir, tmp_path / "served")
    source = FolderSource(folder)
    holder = ModelHolder(load_served(folder, "tunegate", source.resolve().version, threads=1))
    yield source, holder, paths
    holder.current.close()


def replace_folder(target: Path, source: Path) -> None:
    shutil.rmtree(target)
    shutil.copytree(source, target)


def test_reload_of_an_unchanged_source_changes_nothing(served):
    source, holder, _ = served
    before = holder.current
    assert reload(source, holder) is None
    assert holder.current is before


def test_reload_of_a_changed_folder_swaps_to_the_new_version(served):
    source, holder, paths = served
    old_version = holder.current.info.version
    replace_folder(source.folder, paths.onnx_dir)  # the FP32 export: another model file
    new_version = reload(source, holder)
    assert new_version == source.resolve().version != old_version
    assert holder.current.info.version == new_version
    with holder.acquire() as model:
        scores = model.score(TEXTS, max_batch_size=2)
    assert [s.label for s in scores] and all(abs(sum(s.probabilities) - 1) < 1e-5 for s in scores)
    assert reload(source, holder) is None  # followed: nothing more to do


def test_reload_of_a_broken_folder_raises_and_keeps_the_old_version_serving(served):
    source, holder, _ = served
    old = holder.current
    expected = old.score(TEXTS, max_batch_size=2)
    (source.folder / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ReloadError, match="still serving " + old.info.version) as raised:
        reload(source, holder)
    assert isinstance(raised.value, TunegateError)
    assert holder.current is old
    with holder.acquire() as model:
        assert [s.label for s in model.score(TEXTS, max_batch_size=2)] == [s.label for s in expected]


def test_reload_of_a_folder_that_disappeared_raises_and_keeps_the_old_version(served):
    source, holder, _ = served
    old = holder.current
    shutil.rmtree(source.folder)
    with pytest.raises(ReloadError, match="cannot resolve folder"):
        reload(source, holder)
    assert holder.current is old


def test_concurrent_reloads_load_a_changed_version_once(served):
    source, holder, paths = served
    replace_folder(source.folder, paths.onnx_dir)

    async def both():
        return await asyncio.gather(*(reload_if_changed(source, holder, name="tunegate", threads=1,
                                                        drain_timeout_s=5) for _ in range(2)))

    results = asyncio.run(both())
    assert sorted(results, key=str) == [None, source.resolve().version]  # the second saw it already served
