"""Drift: how far the current data moved from a reference version (labels, lengths, vocabulary)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.config import DataConfig, ValidateConfig
from tasks.contracts.report import make_report, plain_check
from tasks.core.errors import TunegateError
from tasks.core.data import read_dataset
from tasks.core.io import DataFormatError

SUITE = "drift"
SHARE_FLOOR = 1e-4  # stands in for a zero share, so PSI stays finite when a class appears or vanishes


class DriftReferenceUnavailable(TunegateError):
    """The reference data version cannot be found or read."""


def last_data_commit(root: Path) -> str:
    """SHA of the last commit that changed data.dvc (the data version the current model was built on)."""
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%H", "--", "data.dvc"], cwd=root,
                              capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DriftReferenceUnavailable(f"cannot read git history in {root}: {exc}") from exc
    if not done.stdout.strip():
        raise DriftReferenceUnavailable("no commit has changed data.dvc yet")
    return done.stdout.strip()


def workspace_matches(root: Path, rev: str) -> bool:
    """True when data.dvc is as committed at `rev` and the files on disk are what it records."""
    done = subprocess.run(["git", "show", f"{rev}:data.dvc"], cwd=root, capture_output=True)
    tracked = root / "data.dvc"
    if done.returncode != 0 or not tracked.is_file() or done.stdout != tracked.read_bytes() \
            or not (root / ".dvc").is_dir():
        return False
    from tasks.core.dvc_cache import tracked_data_unchanged

    return tracked_data_unchanged(root)


def read_data_at(root: Path, data: DataConfig, rev: str) -> pd.DataFrame:
    """The table at data.path as DVC versioned it at git revision `rev` (from the DVC cache or remote)."""
    from dvc.api import DVCFileSystem

    data_path = data.path
    try:
        fs = DVCFileSystem(str(root), rev=rev)
        with tempfile.TemporaryDirectory(prefix="tunegate-reference-") as tmp:
            target = Path(tmp) / Path(data_path).name
            fs.get(data_path, str(target), recursive=fs.isdir(data_path))
            return read_dataset(target, data)
    except DataFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - DVC raises many types; all mean "reference not available"
        raise DriftReferenceUnavailable(f"{data_path} at {rev[:12]} is not in the DVC cache or remote: "
                                        f"{type(exc).__name__}: {exc}") from exc


def load_reference(root: Path, data: DataConfig, reference: str) -> tuple[pd.DataFrame, str]:
    """The reference table and a description of where it came from."""
    if reference == "last_data_commit":
        rev = last_data_commit(root)
        described = f"{data.path} at {rev[:12]} (last commit that changed data.dvc)"
        if workspace_matches(root, rev):  # the same bytes are on disk: no need for the DVC cache
            return read_dataset(root / data.path, data), described
        return read_data_at(root, data, rev), described
    path = root / reference
    try:
        return read_dataset(path, data), str(path)
    except DataFormatError as exc:
        raise DriftReferenceUnavailable(f"reference {path}: {exc}") from exc


def population_stability_index(current: np.ndarray, reference: np.ndarray) -> float:
    """PSI between two share vectors over the same bins: sum (c - r) * ln(c / r)."""
    c, r = np.maximum(current, SHARE_FLOOR), np.maximum(reference, SHARE_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def label_shares(labels: pd.Series, classes: list[Any]) -> np.ndarray:
    counts = labels.value_counts()
    return np.array([counts.get(c, 0) for c in classes], dtype=float) / max(len(labels), 1)


def words(texts: pd.Series) -> pa.Array:
    """Lower-cased word tokens of all texts, flattened (arrow kernels: fast on millions of rows)."""
    array = pa.array(texts.astype(str).tolist(), type=pa.large_string())
    return pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(array), r"[^\w']+"))


def out_of_vocabulary_rate(current: pd.Series, reference: pd.Series) -> float:
    """Share of the current word occurrences that never occur in the reference."""
    current_words = words(current)
    current_words = current_words.filter(pc.not_equal(current_words, ""))
    vocabulary = pc.unique(words(reference))
    if len(current_words) == 0:
        return 0.0
    return 1.0 - pc.mean(pc.is_in(current_words, value_set=vocabulary).cast(pa.float64())).as_py()


def drift_statistics(current: pd.DataFrame, reference: pd.DataFrame, data: DataConfig) -> dict[str, float]:
    """Label PSI (+ chi-square p-value), text-length KS statistic (+ p-value), out-of-vocabulary rate."""
    from scipy import stats

    text, label = data.text_column, data.label_column
    classes = list(data.labels)
    current_shares, reference_shares = label_shares(current[label], classes), label_shares(reference[label], classes)
    expected = np.maximum(reference_shares, SHARE_FLOOR)
    expected = expected / expected.sum() * len(current)
    chi2 = stats.chisquare(current_shares * len(current), expected)
    ks = stats.ks_2samp(current[text].astype(str).str.len(), reference[text].astype(str).str.len())
    return {
        "label_psi": population_stability_index(current_shares, reference_shares),
        "label_chi2_pvalue": float(chi2.pvalue),
        "length_ks": float(ks.statistic),
        "length_ks_pvalue": float(ks.pvalue),
        "oov_rate": out_of_vocabulary_rate(current[text], reference[text]),
    }


def drift_report(current: pd.DataFrame, root: Path, data: DataConfig, cfg: ValidateConfig) -> dict[str, Any]:
    """Drift checks against validate.drift_reference, each bounded in params; severity from params."""
    severity = cfg.drift_severity
    if cfg.drift_reference == "none":
        return make_report(SUITE, len(current), [], [])
    try:
        reference, described = load_reference(root, data, cfg.drift_reference)
    except DriftReferenceUnavailable as exc:
        check = plain_check(SUITE, "drift_reference_available", "warning", False, error=str(exc),
                            reference=cfg.drift_reference)
        return make_report(SUITE, len(current), [], [check])
    missing = {data.text_column, data.label_column} - set(reference.columns)
    if missing:
        check = plain_check(SUITE, "drift_reference_available", "warning", False, reference=described,
                            error=f"reference lacks columns {sorted(missing)}")
        return make_report(SUITE, len(current), [], [check])
    figures = drift_statistics(current, reference, data)
    bounds = {"label_psi": cfg.max_label_psi, "length_ks": cfg.max_length_ks, "oov_rate": cfg.max_oov_rate}
    columns = {"label_psi": data.label_column, "length_ks": data.text_column, "oov_rate": data.text_column}
    checks = [plain_check(SUITE, f"drift_{name}_at_most", severity, figures[name] <= bound, column=columns[name],
                          observed=round(figures[name], 6), max_value=bound, reference=described)
              for name, bound in bounds.items()]
    profile = [{"statistic": name, "value": round(value, 6), "bound": bounds.get(name, "-")}
               for name, value in figures.items()]
    return make_report(SUITE, len(current), [], checks,
                       {f"Drift vs {described} ({len(reference)} rows)": profile})
