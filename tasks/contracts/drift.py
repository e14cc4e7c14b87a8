"""Drift: how far the current data moved from a reference version (labels, lengths, vocabulary)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.config import DataConfig, ValidateConfig
from tasks.contracts.report import make_report, plain_check, skipped_check
from tasks.contracts.text import is_missing, is_text
from tasks.core.errors import TunegateError
from tasks.core.data import read_dataset
from tasks.core.io import DataFormatError
from tasks.core.vcs import CommandFailed, dvc_out_paths, git, git_succeeds, show_at, yaml_mapping

SUITE = "drift"
SHARE_FLOOR = 1e-4  # stands in for a zero share, so PSI stays finite when a class appears or vanishes
# The drift checks: statistic -> (machine id, human name, what it needs: label or text data).
CHECKS = {"label_psi": ("drift_label_psi_at_most", "label drift (PSI)", "label"),
          "length_ks": ("drift_length_ks_at_most", "text length drift (KS)", "text"),
          "oov_rate": ("drift_oov_rate_at_most", "new words (OOV rate)", "text")}


class DriftReferenceUnavailable(TunegateError):
    """The reference data version cannot be found or read."""


@dataclass(frozen=True)
class Reference:
    """The reference table, where it came from, and the label values it was labelled with."""

    frame: pd.DataFrame
    described: str
    labels: list[Any] | None = None  # data.labels of the reference version; None: the current ones
    label_names: list[str] | None = None


def last_data_commit(root: Path) -> str:
    """SHA of the last commit that changed data.dvc (the data version the current model was built on)."""
    try:
        sha = git(root, "log", "-1", "--format=%H", "--", "data.dvc")
    except CommandFailed as exc:
        why = exc.output.splitlines()[-1] if exc.output else "git failed"
        raise DriftReferenceUnavailable(f"no git history here ({why}): the reference last_data_commit needs one; "
                                        "set validate.drift_reference to a table path or none") from exc
    if not sha:
        raise DriftReferenceUnavailable("no commit has changed data.dvc yet")
    return sha


def under_outs(data_path: str, outs: list[str]) -> bool:
    """True when data_path is one of `outs` or inside one of them."""
    path = PurePosixPath(data_path)
    return any(path == PurePosixPath(out) or PurePosixPath(out) in path.parents for out in outs)


def workspace_matches(root: Path, rev: str, data_path: str) -> bool:
    """True when data.dvc is as committed at `rev`, tracks data_path, and the files on disk are what it records."""
    committed = show_at(root, rev, "data.dvc")
    tracked = root / "data.dvc"
    if committed is None or not tracked.is_file() or committed != tracked.read_text() \
            or not (root / ".dvc").is_dir() or not under_outs(data_path, dvc_out_paths(committed)):
        return False
    from tasks.core.dvc_data import tracked_data_unchanged

    return tracked_data_unchanged(root)


def labels_at(root: Path, rev: str) -> tuple[list[Any] | None, list[str] | None]:
    """data.labels and data.label_names in params.yaml at git revision `rev` (None where unreadable)."""
    data = yaml_mapping(show_at(root, rev, "params.yaml")).get("data")
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
        return None, None
    names = data.get("label_names")
    return data["labels"], names if isinstance(names, list) else None


def read_data_at(root: Path, data: DataConfig, rev: str) -> pd.DataFrame:
    """The table at data.path as DVC versioned it at git revision `rev` (from the DVC cache or remote)."""
    from dvc.api import DVCFileSystem

    data_path = data.path
    if (not under_outs(data_path, dvc_out_paths(show_at(root, rev, "data.dvc")))
            and not git_succeeds(root, "cat-file", "-e", f"{rev}:./{data_path}")):
        raise _absent_at(data_path, rev)
    fs = None
    try:
        fs = DVCFileSystem(str(root), rev=rev)
        with tempfile.TemporaryDirectory(prefix="tunegate-reference-") as tmp:
            target = Path(tmp) / Path(data_path).name
            fs.get(data_path, str(target), recursive=fs.isdir(data_path))
            return read_dataset(target, data)
    except DataFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - DVC raises many types; all mean "reference not available"
        if isinstance(exc, FileNotFoundError) and fs is not None and _listed_at(fs, data_path) is False:
            raise _absent_at(data_path, rev) from exc
        raise DriftReferenceUnavailable(f"{data_path} at {rev[:12]} is not in the DVC cache or remote: "
                                        f"{type(exc).__name__}: {exc}") from exc


def _absent_at(data_path: str, rev: str) -> DriftReferenceUnavailable:
    return DriftReferenceUnavailable(f"{data_path} did not exist at commit {rev[:12]} (data.path changed since?)")


def _listed_at(fs: Any, data_path: str) -> bool | None:
    """Whether data_path's folder lists it at that revision; None when the listing itself is unavailable
    (a tracked folder whose manifest is in no cache)."""
    parent = str(PurePosixPath(data_path).parent)
    try:
        names = {PurePosixPath(str(entry)).name for entry in fs.ls(parent, detail=False)}
    except Exception:  # noqa: BLE001 - DVC raises many types; all mean "cannot tell"
        return None
    return PurePosixPath(data_path).name in names


def load_reference(root: Path, data: DataConfig, reference: str) -> Reference:
    """The reference table, a description of where it came from, and its version's data.labels."""
    if reference == "last_data_commit":
        rev = last_data_commit(root)
        described = f"{data.path} at {rev[:12]} (last commit that changed data.dvc)"
        labels, names = labels_at(root, rev)
        try:
            if workspace_matches(root, rev, data.path):  # the same bytes are on disk: no need for the DVC cache
                return Reference(read_dataset(root / data.path, data), described, labels, names)
            return Reference(read_data_at(root, data, rev), described, labels, names)
        except DataFormatError as exc:
            raise DriftReferenceUnavailable(f"reference {described}: {exc}") from exc
    try:  # described as configured (relative to the project): reports stay the same on every machine
        return Reference(read_dataset(root / reference, data), reference)
    except DataFormatError as exc:
        raise DriftReferenceUnavailable(f"reference {reference}: {str(exc).replace(f'{root}/', '')}") from exc


def population_stability_index(current: np.ndarray, reference: np.ndarray) -> float:
    """PSI between two share vectors over the same bins: sum (c - r) * ln(c / r)."""
    c, r = np.maximum(current, SHARE_FLOOR), np.maximum(reference, SHARE_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def label_shares(labels: pd.Series, classes: list[Any]) -> np.ndarray:
    counts = labels.value_counts()
    return np.array([counts.get(c, 0) for c in classes], dtype=float) / max(len(labels), 1)


def words(texts: pd.Series) -> pa.Array:
    """Lower-cased word tokens of all texts, flattened (arrow kernels: fast on millions of rows)."""
    array = pa.array(texts.tolist(), type=pa.large_string())
    return pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(array), r"[^\w']+"))


def out_of_vocabulary_rate(current: pd.Series, reference: pd.Series) -> float:
    """Share of the current word occurrences that never occur in the reference (texts: strings only)."""
    current_words = words(current)
    current_words = current_words.filter(pc.not_equal(current_words, ""))
    vocabulary = pc.unique(words(reference))
    if len(current_words) == 0:
        return 0.0
    return 1.0 - pc.mean(pc.is_in(current_words, value_set=vocabulary).cast(pa.float64())).as_py()


def label_statistics(current: pd.Series, reference: pd.Series, classes: list[Any]) -> dict[str, float]:
    """Label PSI and chi-square p-value; both series hold only values of `classes`, at least one row each."""
    from scipy import stats

    current_shares, reference_shares = label_shares(current, classes), label_shares(reference, classes)
    expected = np.maximum(reference_shares, SHARE_FLOOR)
    expected = expected / expected.sum() * len(current)
    chi2 = stats.chisquare(current_shares * len(current), expected)
    return {"label_psi": population_stability_index(current_shares, reference_shares),
            "label_chi2_pvalue": float(chi2.pvalue)}


def text_statistics(current: pd.Series, reference: pd.Series) -> dict[str, float]:
    """Text-length KS statistic (+ p-value) and out-of-vocabulary rate; both series: strings, at least one each."""
    from scipy import stats

    ks = stats.ks_2samp(current.str.len(), reference.str.len())
    return {"length_ks": float(ks.statistic), "length_ks_pvalue": float(ks.pvalue),
            "oov_rate": out_of_vocabulary_rate(current, reference)}


def _string_texts(texts: pd.Series) -> pd.Series:
    """The texts that are strings (missing values and other types dropped)."""
    return texts[is_text(texts)].astype(object)


def blockers_of(table: pd.DataFrame, data: DataConfig, *, values: bool = True) -> dict[str, str]:
    """Why label or text drift cannot be measured on `table` (the raw contract reports the defects): no rows,
    a missing column, and with `values`, labels outside data.labels or texts that are not strings."""
    if len(table) == 0:
        return {"label": "the data has no rows", "text": "the data has no rows"}
    blockers = {need: f"column {column!r} is missing"
                for need, column in (("label", data.label_column), ("text", data.text_column))
                if column not in table.columns}
    if not values:
        return blockers
    if "label" not in blockers:
        labels = table[data.label_column]
        if pd.api.types.is_object_dtype(labels):  # may hold nested (unhashable) values
            allowed = set(data.labels)
            valid = labels.map(lambda v: pd.api.types.is_scalar(v) and not is_missing(v) and v in allowed)
        else:
            valid = labels.isin(list(data.labels))
        if not valid.all():
            blockers["label"] = f"{int((~valid).sum())} label(s) missing or not in data.labels"
    if "text" not in blockers:
        strings = len(_string_texts(table[data.text_column]))
        if strings < len(table):
            blockers["text"] = f"{len(table) - strings} text(s) missing or not strings"
    return blockers


def reference_labels(reference: Reference, data: DataConfig) -> tuple[pd.Series | None, str | None]:
    """The reference's labels as current data.labels values (relabelled data compares by class), or why not.

    Classes match by name (data.label_names at the reference version), else by position in data.labels.
    """
    values = reference.frame[data.label_column]
    current = list(data.labels)
    if reference.labels is None or list(reference.labels) == current:
        mapping = {v: v for v in current}
    elif reference.label_names is not None and len(reference.label_names) == len(reference.labels) \
            and set(reference.label_names) == set(data.label_names):
        by_name = dict(zip(data.label_names, current))
        mapping = {v: by_name[n] for v, n in zip(reference.labels, reference.label_names)}
    elif len(reference.labels) == len(current):
        mapping = dict(zip(reference.labels, current))
    else:
        return None, f"data.labels changed from {reference.labels} to {current} since the reference"
    mapped = values.map(lambda v: mapping.get(v) if pd.api.types.is_scalar(v) and not is_missing(v) else None)
    unknown = values[mapped.isna()]
    if len(unknown):
        examples = ", ".join(repr(v) for v in list(dict.fromkeys(unknown.map(str)))[:5])
        return None, (f"{len(unknown)} reference label(s) are not in data.labels {current} (e.g. {examples}): "
                      "the reference is not labelled like this data")
    return mapped, None


def drift_report(current: pd.DataFrame, root: Path, data: DataConfig, cfg: ValidateConfig) -> dict[str, Any]:
    """Drift checks against validate.drift_reference, each bounded in params; severity from params.

    A check whose inputs are unusable (a missing column, invalid labels, non-string texts, on either side)
    is reported as skipped with the reason; it never raises for bad data.
    """
    if cfg.drift_reference == "none":
        return make_report(SUITE, len(current), [], [])
    try:
        reference = load_reference(root, data, cfg.drift_reference)
    except DriftReferenceUnavailable as exc:
        check = plain_check(SUITE, "drift_reference_available", "warning", False, name="drift reference available",
                            error=str(exc), reference=cfg.drift_reference)
        return make_report(SUITE, len(current), [], [check])
    blockers = blockers_of(current, data)
    # The reference's labels are mapped to this data's classes below, and its non-string texts left out.
    for need, reason in blockers_of(reference.frame, data, values=False).items():
        blockers.setdefault(need, f"the reference: {reason}")
    figures: dict[str, float] = {}
    if "label" not in blockers:
        labels, reason = reference_labels(reference, data)
        if labels is None:
            blockers["label"] = reason
        else:
            figures.update(label_statistics(current[data.label_column], labels, list(data.labels)))
    if "text" not in blockers:
        reference_texts = _string_texts(reference.frame[data.text_column])
        if len(reference_texts) == 0:
            blockers["text"] = "the reference has no string texts"
        else:
            figures.update(text_statistics(_string_texts(current[data.text_column]), reference_texts))
    bounds = {"label_psi": cfg.max_label_psi, "length_ks": cfg.max_length_ks, "oov_rate": cfg.max_oov_rate}
    columns = {"label": data.label_column, "text": data.text_column}
    checks = []
    for statistic, (expectation, name, need) in CHECKS.items():
        if need in blockers:
            checks.append(skipped_check(SUITE, expectation, name, blockers[need], column=columns[need],
                                        reference=reference.described))
        else:
            checks.append(plain_check(SUITE, expectation, cfg.drift_severity, figures[statistic] <= bounds[statistic],
                                      name=name, column=columns[need], observed=round(figures[statistic], 6),
                                      max_value=bounds[statistic], reference=reference.described))
    profile = [{"statistic": name, "value": round(value, 6), "bound": bounds.get(name, "-")}
               for name, value in figures.items()]
    return make_report(SUITE, len(current), [], checks,
                       {f"Drift vs {reference.described} ({len(reference.frame)} rows)": profile} if profile else {})
