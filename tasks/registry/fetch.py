"""A registered version's release folder, fetched through DVC at the version's commit (local cache first, then
the DVC remote): never whatever sits in artifacts/."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tasks.core.io import file_sha256, read_json
from tasks.core.paths import ArtifactPaths
from tasks.judging.card import CARD_FILE
from tasks.registry.tags import RELEASE_PATH, RegistryError, Version, find_version
from tasks.runtime.files import RELEASE_FILE, SERVING_FILE


def fetched_dir(paths: ArtifactPaths, version: str) -> Path:
    """Where a version's release folder is kept once fetched (scratch: git- and DVC-ignored)."""
    return paths.work_dir / "registry" / version


def release_intact(folder: Path) -> bool:
    """The folder holds a release whose model file has the hash its release.json records."""
    if not (folder / RELEASE_FILE).is_file() or not (folder / SERVING_FILE).is_file():
        return False
    model = folder / read_json(folder / SERVING_FILE)["model_file"]
    return model.is_file() and file_sha256(model) == read_json(folder / RELEASE_FILE)["sha256"]


def fetch_release(paths: ArtifactPaths, version: Version) -> Path:
    """The release folder of `version` (from DVC at its commit), checked against its recorded hash."""
    target = fetched_dir(paths, version.version)
    if release_intact(target):
        return target
    from dvc.api import DVCFileSystem

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version.version}.") as tmp:
        staging = Path(tmp) / "release"
        try:
            DVCFileSystem(str(paths.root), rev=version.commit).get(RELEASE_PATH, str(staging), recursive=True)
        except Exception as exc:  # noqa: BLE001 - DVC raises many kinds for a missing file; all mean "not fetched"
            raise RegistryError(f"cannot fetch {version.version}'s {RELEASE_PATH} (commit {version.commit[:12]}) from "
                                f"the DVC cache or remote: {type(exc).__name__}: {exc}") from exc
        if not release_intact(staging):
            raise RegistryError(f"{version.version}'s fetched {RELEASE_PATH} does not match the model hash its "
                                f"{RELEASE_FILE} records")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def release_card(paths: ArtifactPaths, version: str | None) -> str:
    """The model card of a registered version's release (fetched as above), or of artifacts/gate/release when
    `version` is None. RegistryError for an unknown version (naming the registered ones) or a release without one."""
    if version is None:
        folder, where = paths.root / RELEASE_PATH, RELEASE_PATH
        if not folder.is_dir():
            raise RegistryError(f"no release at {RELEASE_PATH}: run the pipeline (`tunegate run` or `dvc repro`), "
                                "or name a registered version")
        rerun = "rerun the gate (`dvc repro gate`)"
    else:
        folder, where = fetch_release(paths, find_version(paths.root, version)), f"{version}'s release"
        rerun = "it was released before the gate wrote model cards"
    card = folder / CARD_FILE
    if not card.is_file():
        raise RegistryError(f"{where} holds no model card ({CARD_FILE}): {rerun}")
    return card.read_text(encoding="utf-8")
