"""Champion vs challenger: both models' predictions on the test rows both were judged on, compared in pairs
against a non-inferiority margin."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.contracts.text import normalise_texts
from tasks.core.config import GateConfig
from tasks.core.errors import TunegateError
from tasks.core.io import file_sha256, read_json
from tasks.judging.stats import mcnemar_exact, paired_difference, rows_to_resolve
from tasks.runtime.files import RELEASE_FILE, SERVING_FILE, TEST_ROWS_FILE

PROMOTE, REJECT, INCONCLUSIVE = "PROMOTE", "REJECT", "INCONCLUSIVE"
COMPARED = ("accuracy", "macro_f1")  # the candidate must be non-inferior on both
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


class ChampionError(TunegateError):
    """gate.champion names a folder that is not a served model, or one with other labels than the candidate."""


def row_keys(texts: list[str]) -> list[str]:
    """A key per text that survives reformatting (normalised text, hashed): how two test splits are matched."""
    return [hashlib.sha256(t.encode()).hexdigest()[:16] for t in normalise_texts(texts).to_pylist()]


@dataclass(frozen=True)
class Champion:
    """The production model's served folder, as the gate found it."""

    folder: Path
    setting: str  # where it came from: gate.champion as written in params.yaml, or the registry's stage move
    sha256: str
    release: dict[str, Any] | None  # its release.json (a gate's release folder), None for another served folder
    test_keys: frozenset[str] | None  # keys of the test rows its own gate judged, None when not recorded
    version: str | None = None  # its registry version, when it came from the registry

    def identity(self) -> dict[str, Any]:
        release = self.release or {}
        return {"path": self.setting, "sha256": self.sha256, "version": self.version or release.get("version"),
                "train_run": release.get("train_run"), "test_rows_recorded": self.test_keys is not None}


def champion_folder(setting: str, root: Path) -> Path:
    """The folder gate.champion names (relative to the project root), refused inside this project's artifacts/."""
    folder = Path(setting) if Path(setting).is_absolute() else root / setting
    if folder.resolve().is_relative_to((root / "artifacts").resolve()):
        raise ChampionError(f"gate.champion {setting!r} is inside this project's artifacts/, which the pipeline "
                            "rewrites (the champion would become the candidate): copy the release folder elsewhere")
    return folder


def find_champion(folder: Path, setting: str, labels: list[str], version: str | None = None) -> Champion:
    """The champion in `folder` (named by `setting`), checked to be a served model with the candidate's labels."""
    if not (folder / SERVING_FILE).is_file():
        raise ChampionError(f"champion {setting!r}: {folder} is not a served model folder (no {SERVING_FILE}); "
                            "point gate.champion at a past run's artifacts/gate/release, or set it to null")
    serving = read_json(folder / SERVING_FILE)
    if serving["labels"] != labels:
        raise ChampionError(f"champion {setting!r} predicts labels {serving['labels']}, the candidate {labels}: "
                            "the two cannot be compared")
    release = read_json(folder / RELEASE_FILE) if (folder / RELEASE_FILE).is_file() else None
    keys = read_json(folder / TEST_ROWS_FILE)["keys"] if (folder / TEST_ROWS_FILE).is_file() else None
    return Champion(folder, setting, file_sha256(folder / serving["model_file"]), release,
                    frozenset(keys) if keys is not None else None, version)


def shared_rows(candidate_keys: list[str], champion: Champion) -> np.ndarray:
    """Indices of the candidate's test rows the champion's gate also judged (all of them when it recorded none)."""
    if champion.test_keys is None:
        return np.arange(len(candidate_keys))
    return np.flatnonzero([key in champion.test_keys for key in candidate_keys])


def compare_predictions(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray, n_classes: int,
                        cfg: GateConfig, seed: int) -> dict[str, Any]:
    """Paired comparison on the same rows: differences (candidate - champion) with intervals, McNemar's exact
    test, the rows needed to resolve the margin, and the outcome (PROMOTE / REJECT / INCONCLUSIVE) with why."""
    rows = len(y_true)
    candidate_right, champion_right = candidate == y_true, champion == y_true
    differences = (paired_difference(y_true, candidate, champion, n_classes, cfg.bootstrap_samples, cfg.confidence,
                                     seed) if rows else {})
    disagreement = float((candidate_right != champion_right).mean()) if rows else 0.0
    accuracy_difference = differences["accuracy"]["value"] if rows else 0.0
    needed = rows_to_resolve(disagreement, accuracy_difference, cfg.margin, cfg.confidence)
    comparison = {"rows": rows, "margin": cfg.margin, "differences": differences,
                  "mcnemar": mcnemar_exact(candidate_right, champion_right), "disagreement": disagreement,
                  "rows_needed": needed}
    return {**comparison, **_outcome(comparison, cfg)}


def non_inferiority(differences: dict[str, dict[str, float]], margin: float) -> tuple[str, list[str]]:
    """The gate's rule on candidate - champion differences ({value, low, high} per COMPARED metric): REJECT when an
    upper end is below -margin, PROMOTE when every lower end is above it, INCONCLUSIVE otherwise; with the metrics
    that decided (REJECT, PROMOTE) or stayed open (INCONCLUSIVE)."""
    worse = [name for name in COMPARED if differences[name]["high"] < -margin]
    if worse:
        return REJECT, worse
    unresolved = [name for name in COMPARED if differences[name]["low"] <= -margin]
    return (PROMOTE, list(COMPARED)) if not unresolved else (INCONCLUSIVE, unresolved)


def _outcome(comparison: dict[str, Any], cfg: GateConfig) -> dict[str, Any]:
    """Non-inferiority: PROMOTE when every lower bound is above -margin, REJECT when an upper bound is below it,
    INCONCLUSIVE otherwise and when fewer than gate.min_compare_rows rows were compared."""
    rows, margin = comparison["rows"], cfg.margin
    if rows < cfg.min_compare_rows:
        return {"outcome": INCONCLUSIVE,
                "why": f"only {rows} test rows were judged by both models (gate.min_compare_rows: "
                       f"{cfg.min_compare_rows})"}
    spans = {name: comparison["differences"][name] for name in COMPARED}
    outcome, deciding = non_inferiority(spans, margin)
    if outcome == REJECT:
        return {"outcome": REJECT, "why": "; ".join(
            f"{METRIC_NAMES[name]} is worse than the champion's beyond the margin: difference "
            f"{_span(spans[name])}, entirely below -{margin:g}" for name in deciding)}
    if outcome == PROMOTE:
        return {"outcome": PROMOTE, "why": "non-inferior: " + "; ".join(
            f"{METRIC_NAMES[name]} difference {_span(d)}, lower end above -{margin:g}"
            for name, d in spans.items())}
    needed = comparison["rows_needed"]
    short = (f"; at this disagreement rate ({comparison['disagreement']:.1%}) about {needed} rows would resolve "
             f"the margin, the test split has {rows}" if needed is not None and needed > rows else "")
    return {"outcome": INCONCLUSIVE, "why": "; ".join(
        f"{METRIC_NAMES[name]} difference {_span(spans[name])} straddles -{margin:g}"
        for name in deciding) + short}


def _span(figure: dict[str, float]) -> str:
    return f"{figure['value']:+.4f} [{figure['low']:+.4f}, {figure['high']:+.4f}]"
