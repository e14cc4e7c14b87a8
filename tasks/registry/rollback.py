"""Move a stage back to an earlier version, but only once that version's files are fetched through DVC, a smoke
prediction on them succeeds and this host reproduces its parity certificate: a rollback must not put a version in
production that cannot serve, or that answers here otherwise than it was judged."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tasks.core.io import file_sha256, read_json
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import CommandFailed, git
from tasks.registry.fetch import fetch_release
from tasks.registry.history import ROLLED_BACK_FROM, rolled_back_from
from tasks.registry.tags import (PROD, RegistryError, StageMove, allowed_stages, assign, find_version, stage_moves,
                                  tag_message)
from tasks.runtime.files import RELEASE_FILE

# Fixed, task-neutral texts (any label set): the smoke test asks only that the model serves them sanely.
SMOKE_TEXTS = (
    "This is a short sentence.",
    "The results were described in detail in the second part of the report.",
    "ok",
    "Nothing about this text is meant to be hard to read, but it is longer than the others on purpose, "
    "so that the model sees more than a handful of tokens.",
    "12345 !?",
)
PROBABILITY_TOLERANCE = 1e-4  # |sum of a row's class probabilities - 1| allowed (float32 softmax)
NO_REASON = "no reason given"


class SmokeTestError(RegistryError):
    """A fetched version did not serve: it failed to load, or its predictions were not a probability per label."""


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did: the stage moved from one version to another (or was already there), and pushed where."""

    stage: str
    from_version: str
    to_version: str
    tag: str  # the move made, or the move that already put the stage there
    moved: bool
    folder: Path | None  # the fetched release folder the smoke test ran on (None when nothing moved)
    smoke: str
    parity: str  # the certificate check on this host (tasks.runtime.parity), or why it did not run
    pushed_to: str | None


def previous_version(moves: list[StageMove]) -> str | None:
    """The version the stage held before its current one: walking back over its moves, the first version that is
    neither the current one nor one a later rollback moved away from (two rollbacks never bring back a bad one)."""
    if not moves:
        return None
    abandoned = {moves[-1].version}
    for move in reversed(moves):
        if (left := rolled_back_from(move)) is not None:
            abandoned.add(left)
        if move.version not in abandoned:
            return move.version
    return None


def check_predictions(probs: np.ndarray, labels: list[str], expected_labels: list[str]) -> str:
    """Raise SmokeTestError unless every row is finite and sums to 1 over the release's labels; returns a summary."""
    if [str(x) for x in labels] != [str(x) for x in expected_labels]:
        raise SmokeTestError(f"the model's labels {labels} are not the release's {expected_labels}")
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise SmokeTestError(f"predictions of shape {probs.shape} for {len(labels)} labels")
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).any(axis=1).sum())
        raise SmokeTestError(f"{bad} of {len(probs)} smoke texts got non-finite probabilities")
    error = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if error > PROBABILITY_TOLERANCE:
        raise SmokeTestError(f"class probabilities sum to 1 +- {error:.2e} (allowed {PROBABILITY_TOLERANCE:.0e})")
    return f"passed ({len(probs)} texts, labels {', '.join(map(str, labels))}, probabilities sum to 1 +- {error:.0e})"


def smoke_test(folder: Path) -> str:
    """Load a fetched release folder with the serving code and classify SMOKE_TEXTS; returns the summary."""
    from tasks.runtime.predict import load_served_model, predict_texts

    try:
        model = load_served_model(folder)
        frame = predict_texts(model, list(SMOKE_TEXTS), batch_size=1)  # one per call, as the gate judged it
    except Exception as exc:  # noqa: BLE001 - onnxruntime and tokenizers raise many kinds; all mean "cannot serve"
        raise SmokeTestError(f"{folder} does not serve: {type(exc).__name__}: {exc}") from exc
    probs = frame[[f"p_{name}" for name in model.labels]].to_numpy(dtype=np.float64)
    return check_predictions(probs, model.labels, read_json(folder / RELEASE_FILE)["labels"])


def parity_check(root: Path, folder: Path, subject: str) -> str:
    """Re-score a fetched release's parity certificate on this host under the project's serve.min_parity_agreement
    and serve.parity_action (what `tunegate serve` would do with it here): ParityError when refused, else the line
    the tag records. A release without a certificate (made before them) passes, saying so."""
    from tasks.runtime.parity import check_served, classifier_scorer, enforce
    from tasks.runtime.predict import load_served_model
    from tasks.runtime.settings import load_serve_settings

    settings = load_serve_settings(root / "params.yaml", {})
    model = load_served_model(folder)
    outcome = check_served(folder, file_sha256(folder / model.model_file), classifier_scorer(model),
                           settings.min_parity_agreement, settings.parity_action)
    enforce(outcome, subject)
    return outcome.one_line()


def push_tag(root: Path, remote: str, tag: str) -> None:
    """`git push REMOTE TAG`; a refusal says the move is made locally and how to finish."""
    try:
        git(root, "push", remote, f"refs/tags/{tag}")
    except CommandFailed as exc:
        raise RegistryError(f"git push {remote} {tag} failed: {exc.output}\n"
                            f"The tag exists here (the stage moved locally): push it with `git push {remote} {tag}`"
                            ) from exc


def target_version(moves: list[StageMove], stage: str, to: str | None) -> str:
    """The version to roll back to: --to, else the one before the current (errors name what is missing)."""
    if not moves:
        raise RegistryError(f"nothing is in {stage}: there is nothing to roll back (promote a version first)")
    if to is not None:
        return to
    previous = previous_version(moves)
    if previous is None:
        held = ", ".join(dict.fromkeys(m.version for m in moves))
        raise RegistryError(f"{stage} has no earlier version to roll back to (it has held {held}; versions rolled "
                            f"back from are skipped): name one with --to VERSION")
    return previous


def rollback(root: Path, stage: str = PROD, to: str | None = None, reason: str | None = None,
             remote: str | None = None) -> RollbackResult:
    """Move `stage` back to `to` (default: its previous version) after fetching and smoke-testing that version."""
    from tasks.registry.promote import registry_lock

    if stage not in (allowed := allowed_stages(root)):
        raise RegistryError(f"stage {stage!r} is not allowed here (.gto allows: {', '.join(allowed)})")
    with registry_lock(root, "tunegate rollback"):  # a promotion cannot move the stage between our read and our tag
        moves = stage_moves(root, stage)
        version = find_version(root, target_version(moves, stage, to))
        current = moves[-1]
        if version.version == current.version:  # a rerun after a refused push lands here: push, move nothing
            result = RollbackResult(stage, current.version, version.version, current.tag, False, None,
                                    f"not run ({stage} already holds {version.version})",
                                    f"not run ({stage} already holds {version.version})", None)
        else:
            folder = fetch_release(ArtifactPaths(root), version)  # through DVC at the version's commit
            smoke = smoke_test(folder)
            # Before the tag: a version this host cannot reproduce must not become what prod serves.
            parity = parity_check(root, folder, f"rollback of {stage} to {version.version}")
            # One line per field: message_fields (history's "why") reads the message line by line.
            fields = {ROLLED_BACK_FROM: current.version, "reason": " ".join((reason or "").split()) or NO_REASON, "smoke test": smoke,
                      "parity": parity, "model sha256": read_json(folder / RELEASE_FILE)["sha256"]}
            tag = assign(root, version.version, stage,
                         tag_message(f"rollback: {stage} <- {version.version} (from {current.version})", fields))
            result = RollbackResult(stage, current.version, version.version, tag, True, folder, smoke, parity, None)
    if remote is None:
        return result
    push_tag(root, remote, result.tag)
    return replace(result, pushed_to=remote)
