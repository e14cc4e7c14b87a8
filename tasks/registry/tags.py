"""The model registry: GTO's annotated git tags on this repository. `tunegate@vX.Y.Z` registers a version (a
commit whose dvc.lock records the gate's release folder); `tunegate#STAGE#N` moves a stage to a version."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from tasks.core.errors import TunegateError

ARTIFACT = "tunegate"  # the model's name in dvc.yaml `artifacts:` and in every tag
RELEASE_PATH = "artifacts/gate/release"  # the served folder the gate judged: what a version ships
PROD = "prod"
FIRST_VERSION = "v0.1.0"
MODEL_FIELD = "model sha256"  # the registration message's field naming the model file's hash
Bump = Literal["major", "minor", "patch"]
SEMVER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


class RegistryError(TunegateError):
    """The registry cannot do what was asked (unknown version or stage, nothing in prod, tags that disagree)."""


@dataclass(frozen=True)
class Version:
    """A registered version: the commit it names and why it was registered."""

    version: str
    commit: str
    at: datetime
    author: str
    message: str
    tag: str


@dataclass(frozen=True)
class StageMove:
    """One assignment of a stage to a version (a promotion or a rollback)."""

    stage: str
    version: str
    commit: str
    at: datetime
    author: str
    message: str
    tag: str
    number: int  # N of tunegate#STAGE#N: orders moves made within the same second


def _gto():
    import gto.api

    return gto.api


def _events(root: Path) -> list[dict]:
    """GTO's history of the artifact (registrations and assignments), oldest first; [] before the first tag and
    outside a git repository (a project without git has no registry)."""
    from gto.exceptions import GTOException
    from scmrepo.exceptions import SCMError

    try:
        return list(_gto().history(str(root), ARTIFACT, ascending=True))
    except SCMError as exc:
        if "not a git repository" in str(exc):
            return []
        raise RegistryError(f"cannot read the registry's tags: {exc}") from exc
    except GTOException as exc:
        if "not found" in str(exc).lower():
            return []
        raise RegistryError(f"cannot read the registry's tags: {exc}") from exc


def versions(root: Path) -> list[Version]:
    """Every registered version, oldest first."""
    return [Version(e["version"], e["commit"], e["timestamp"], e["author"], e["message"] or "", e["ref"])
            for e in _events(root) if e["event"] == "registration"]


def stage_moves(root: Path, stage: str | None = None) -> list[StageMove]:
    """Every stage assignment (of `stage`, or all), in the order they were made."""
    moves = [StageMove(e["stage"], e["version"], e["commit"], e["timestamp"], e["author"], e["message"] or "",
                       e["ref"], int(e["ref"].rsplit("#", 1)[1]))
             for e in _events(root) if e["event"] == "assignment" and (stage is None or e["stage"] == stage)]
    return sorted(moves, key=lambda m: (m.stage, m.number) if stage is None else m.number)


def in_stage(root: Path, stage: str = PROD, at: datetime | None = None) -> StageMove | None:
    """The move that put `stage`'s current version there (as of `at`, when given); None if it never had one."""
    moves = [m for m in stage_moves(root, stage) if at is None or m.at <= at]
    return moves[-1] if moves else None


def find_version(root: Path, version: str) -> Version:
    for registered in versions(root):
        if registered.version == version:
            return registered
    known = ", ".join(v.version for v in versions(root)) or "none yet"
    raise RegistryError(f"no version {version!r} of {ARTIFACT} is registered (versions: {known})")


def version_of_commit(root: Path, commit: str) -> Version | None:
    """The version registered for `commit`, if any (a rerun of a promotion reuses it)."""
    return next((v for v in versions(root) if v.commit == commit), None)


def version_of_model(root: Path, model_sha256: str) -> Version | None:
    """The version whose registration records this model hash (`tunegate promote` writes it), if any."""
    return next((v for v in versions(root) if message_fields(v.message).get(MODEL_FIELD) == model_sha256), None)


def next_version(root: Path, bump: Bump) -> str:
    """The latest version bumped (v0.1.0 for the first one)."""
    numbered = [tuple(map(int, m.groups())) for v in versions(root) if (m := SEMVER.match(v.version))]
    if not numbered:
        return FIRST_VERSION
    major, minor, patch = max(numbered)
    return {"major": f"v{major + 1}.0.0", "minor": f"v{major}.{minor + 1}.0", "patch": f"v{major}.{minor}.{patch + 1}"}[bump]


def allowed_stages(root: Path) -> list[str]:
    """Stages the repository's .gto allows (prod when it names none)."""
    return list(_gto().get_stages(str(root), allowed=True)) or [PROD]


def register(root: Path, commit: str, version: str, message: str) -> str:
    """Create the annotated tag registering `version` at `commit`; returns the tag."""
    return _gto().register(str(root), ARTIFACT, commit, version=version, message=message).tag


def assign(root: Path, version: str, stage: str, message: str) -> str:
    """Create the annotated tag moving `stage` to `version`; returns the tag."""
    if stage not in allowed_stages(root):
        raise RegistryError(f"stage {stage!r} is not allowed here (.gto allows: {', '.join(allowed_stages(root))})")
    return _gto().assign(str(root), ARTIFACT, stage, version=version, message=message, force=True).tag


def tag_message(title: str, fields: dict[str, str]) -> str:
    """An annotated tag's message: a title line, then `key: value` lines (what `git show TAG` prints)."""
    return "\n".join([title, "", *(f"{key}: {value}" for key, value in fields.items())])


def message_fields(message: str) -> dict[str, str]:
    """The `key: value` lines of a tag message written by tag_message (the title is under "title")."""
    lines = message.splitlines()
    fields = {"title": lines[0] if lines else ""}
    for line in lines[1:]:
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields
