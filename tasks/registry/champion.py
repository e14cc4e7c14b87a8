"""The gate's champion from the registry: the version the prod stage holds, fetched through DVC."""

from __future__ import annotations

from pathlib import Path

from tasks.core.io import read_json
from tasks.core.paths import ArtifactPaths
from tasks.registry.fetch import fetch_release
from tasks.registry.tags import PROD, StageMove, find_version, in_stage, version_of_model


def prod_release(paths: ArtifactPaths) -> tuple[StageMove, Path] | None:
    """The prod stage's current move and its release folder (fetched through DVC); None when prod holds nothing."""
    move = in_stage(paths.root, PROD)
    if move is None:
        return None
    return move, fetch_release(paths, find_version(paths.root, move.version))


def champion_moved(paths: ArtifactPaths, champion_setting: str | None) -> str | None:
    """Why the last gate decision no longer holds because prod moved (None when it still holds, when the gate's
    champion is a folder named in params, or when the gate never ran): DVC cannot see a git tag move."""
    if champion_setting is not None or not paths.decision.is_file():
        return None
    decision = read_json(paths.decision)
    comparison = decision.get("comparison")
    judged_against = comparison["champion"].get("version") if comparison else None
    move = in_stage(paths.root, PROD)
    now = move.version if move else None
    serving = version_of_model(paths.root, decision["candidate"]["sha256"])
    if judged_against == now or (move and serving and serving.version == now):
        return None  # the same champion, or the candidate is itself what prod serves: nothing to judge again
    return (f"prod is now {now or 'empty'}, the last gate decision compared with "
            f"{judged_against or 'no production model'}")

