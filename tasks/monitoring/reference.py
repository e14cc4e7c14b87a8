"""The reference a live window is judged against: a seeded sample of the prod version's training split, scored
by the prod release one text at a time (as live requests are), cached per version."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from tasks.core.config import DataConfig, PipelineConfig
from tasks.core.errors import TunegateError
from tasks.core.io import atomic_file, file_sha256, read_json, write_json
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import show_at, yaml_mapping
from tasks.monitoring.drift import shares, unknown_rate, vocabulary_of
from tasks.monitoring.performance import gate_figures_at
from tasks.registry.fetch import fetch_release
from tasks.registry.tags import PROD, RegistryError, find_version, in_stage
from tasks.runtime.files import RELEASE_FILE, SERVING_FILE
from tasks.serving.scoring import cores

TRAIN_PATH = "artifacts/prepare/train.parquet"  # the training split the version was trained on (a DVC out)
CACHE_FORMAT = 1  # bump when the cached fields change: older caches are then recomputed


class ReferenceUnavailable(TunegateError):
    """The reference cannot be built: nothing in the stage, or the version's training data is not readable."""


@dataclass(frozen=True, eq=False)
class Reference:
    """The prod version's training sample as the service would have seen it (shares/probabilities in label_names
    order)."""
    version: str
    commit: str
    texts: list[str]
    labels: list[str]  # true label names of the sampled rows
    tokens: np.ndarray  # [rows] int: tokens per text, served tokenizer, untruncated, special tokens included
    unknown_rate: float  # unknown tokens per token over the sample
    vocabulary: frozenset[str]  # lower-cased words of the whole training split (tasks.contracts.drift.words)
    label_names: list[str]  # the served model's classes
    predicted_shares: np.ndarray  # [classes] share of each predicted class (prod model, batch 1)
    confidences: np.ndarray  # [rows] top-class probability (prod model, batch 1)
    gate_figures: dict[str, Any] | None = field(default=None)  # performance.gate_figures of the release, if known


def sample_rows(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows of `frame`, seeded, in their original order."""
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    picked = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
    return frame.iloc[picked].reset_index(drop=True)


def scoring_threads(cfg: PipelineConfig) -> int:
    """onnxruntime threads for the monitor's scoring: serve.threads, unset meaning the cores (one process)."""
    return cfg.serve.threads or cores()




def build_reference(served: Any, train: pd.DataFrame, data: DataConfig, rows: int, seed: int, *, version: str,
                    commit: str, gate_figures: dict[str, Any] | None = None) -> Reference:
    """Sample `train` (the data's text and label columns), score the sample with a ServedModel at batch 1."""
    names = dict(zip(data.labels, data.label_names))
    is_text = train[data.text_column].map(lambda t: isinstance(t, str))
    usable = train[train[data.label_column].isin(list(names)) & is_text]
    if usable.empty:
        raise ReferenceUnavailable(f"the training split of {version} has no text with a label in data.labels")
    sample = sample_rows(usable, rows, seed)
    texts = list(sample[data.text_column])
    scores = served.score(texts, 1)  # batch 1: padding-free, as single-text requests are scored
    label_names = list(served.info.labels)
    return Reference(
        version=version, commit=commit, texts=texts, labels=[names[v] for v in sample[data.label_column]],
        tokens=np.array([s.tokens for s in scores], dtype=np.int64),
        unknown_rate=unknown_rate([s.unknown_tokens for s in scores], [s.tokens for s in scores]),
        vocabulary=vocabulary_of(usable[data.text_column]), label_names=label_names,
        predicted_shares=shares([s.label for s in scores], label_names),
        confidences=np.array([max(s.probabilities) for s in scores], dtype=float), gate_figures=gate_figures)


def reference_from_folder(release_folder: Path, train_parquet: Path, cfg: PipelineConfig, *,
                          version: str | None = None, commit: str = "",
                          gate_figures: dict[str, Any] | None = None) -> Reference:
    """The reference of a served folder and its training split on disk (no registry; tests, plain projects)."""
    from tasks.serving.scoring import load_served

    served = load_served(Path(release_folder), cfg.serve.model_name, version, threads=scoring_threads(cfg))
    try:
        return build_reference(served, pd.read_parquet(train_parquet), cfg.data, cfg.monitor.reference_rows,
                               cfg.seed, version=served.info.version, commit=commit, gate_figures=gate_figures)
    finally:
        served.close()


# --- the registry's version, through DVC, cached --------------------------------------------------------------------

def cache_paths(paths: ArtifactPaths, version: str) -> tuple[Path, Path]:
    """The cached reference of a version: JSON (texts, labels, figures) and NPZ (per-row arrays)."""
    folder = paths.work_dir / "monitoring"  # (not with_suffix: a version's dots would be taken for one)
    return folder / f"reference-{version}.json", folder / f"reference-{version}.npz"


def cache_key(version: str, commit: str, model_sha256: str, cfg: PipelineConfig) -> dict[str, Any]:
    """What a cached reference was computed from: a change in any of them recomputes it."""
    return {"format": CACHE_FORMAT, "version": version, "commit": commit, "model_sha256": model_sha256,
            "rows": cfg.monitor.reference_rows, "seed": cfg.seed}


def save_reference(reference: Reference, key: dict[str, Any], json_path: Path, npz_path: Path) -> None:
    """Write the arrays first and the JSON last (atomically each): a JSON on disk means a complete cache."""
    with atomic_file(npz_path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, tokens=reference.tokens, confidences=reference.confidences,
                 predicted_shares=reference.predicted_shares)
    write_json(json_path, {"key": key, "texts": reference.texts, "labels": reference.labels,
                           "unknown_rate": reference.unknown_rate, "vocabulary": sorted(reference.vocabulary),
                           "label_names": reference.label_names, "gate_figures": reference.gate_figures,
                           "npz_sha256": file_sha256(npz_path)})


def load_cached(key: dict[str, Any], json_path: Path, npz_path: Path) -> Reference | None:
    """The cached reference when it was computed from `key` and is intact, else None."""
    try:
        stored = read_json(json_path)
        if stored.get("key") != key or file_sha256(npz_path) != stored["npz_sha256"]:
            return None
        with np.load(npz_path) as arrays:
            tokens, confidences, predicted = (arrays[k] for k in ("tokens", "confidences", "predicted_shares"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Reference(version=key["version"], commit=key["commit"], texts=stored["texts"], labels=stored["labels"],
                     tokens=tokens, unknown_rate=float(stored["unknown_rate"]),
                     vocabulary=frozenset(stored["vocabulary"]), label_names=stored["label_names"],
                     predicted_shares=predicted, confidences=confidences, gate_figures=stored["gate_figures"])


def data_config_at(root: Path, commit: str, current: DataConfig) -> DataConfig:
    """params.yaml's data section at `commit` (its columns and labels named the training split then); the current
    one when that commit's is missing or invalid."""
    raw = yaml_mapping(show_at(root, commit, "params.yaml")).get("data")
    try:
        return DataConfig.model_validate(raw) if isinstance(raw, dict) else current
    except ValidationError:
        return current


def read_train_at(fs: Any, version: str, commit: str) -> pd.DataFrame:
    """The version's training split, read through a DVCFileSystem opened at its commit."""
    with tempfile.TemporaryDirectory(prefix="tunegate-monitor-") as tmp:
        target = Path(tmp) / "train.parquet"
        try:
            fs.get(TRAIN_PATH, str(target))
        except Exception as exc:  # noqa: BLE001 - DVC raises many kinds for a missing file; all mean "unreadable"
            raise ReferenceUnavailable(f"cannot read {version}'s {TRAIN_PATH} (commit {commit[:12]}) from the DVC "
                                       f"cache or remote: {type(exc).__name__}: {exc}") from exc
        return pd.read_parquet(target)


def load_reference(project: Path, cfg: PipelineConfig, stage: str = PROD) -> Reference:
    """The reference of the version `stage` holds: its release (fetched through DVC), its training split at its
    commit, sampled to monitor.reference_rows (seeded) and scored; cached under .tunegate/monitoring/."""
    from dvc.api import DVCFileSystem

    paths = ArtifactPaths(Path(project))
    move = in_stage(paths.root, stage)
    if move is None:
        raise ReferenceUnavailable(f"no version is in {stage}: promote one first (tunegate promote)")
    try:
        version = find_version(paths.root, move.version)
        folder = fetch_release(paths, version)
    except RegistryError as exc:
        raise ReferenceUnavailable(f"{stage}'s version {move.version}: {exc}") from exc
    key = cache_key(version.version, version.commit, read_json(folder / RELEASE_FILE)["sha256"], cfg)
    json_path, npz_path = cache_paths(paths, version.version)
    cached = load_cached(key, json_path, npz_path)
    if cached is not None:
        return cached
    fs = DVCFileSystem(str(paths.root), rev=version.commit)
    train = read_train_at(fs, version.version, version.commit)
    data = data_config_at(paths.root, version.commit, cfg.data)
    from tasks.serving.scoring import load_served

    if not (folder / SERVING_FILE).is_file():
        raise ReferenceUnavailable(f"{version.version}'s release folder {folder} holds no {SERVING_FILE}")
    served = load_served(folder, cfg.serve.model_name, version.version, threads=scoring_threads(cfg))
    try:
        reference = build_reference(served, train, data, cfg.monitor.reference_rows, cfg.seed,
                                    version=version.version, commit=version.commit,
                                    gate_figures=gate_figures_at(fs, cfg.gate))
    finally:
        served.close()
    save_reference(reference, key, json_path, npz_path)
    return reference
