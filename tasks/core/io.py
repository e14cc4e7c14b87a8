"""File helpers: atomic writes, whole-directory swaps, tables in any supported format."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from tasks.core.errors import TunegateError

TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")


class DataFormatError(TunegateError, ValueError):
    """An input table cannot be read (unknown format, unreadable bytes, no rows)."""


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename), so readers never see half a file."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically (temp file in the same folder + rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success it replaces `path`, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; on success it replaces `final` whole.

    On any error the temp folder is removed and `final` keeps its previous content,
    so a failed stage never leaves a half-written artifact behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging."))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old.{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSONL file, or every such file in a folder (concatenated)."""
    if path.is_dir():
        return pd.concat(read_table_files(path).values(), ignore_index=True)
    if not path.is_file():
        raise DataFormatError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        with path.open("rb") as handle:
            if handle.read(3) == b"\xef\xbb\xbf":
                raise DataFormatError(f"{path} starts with a UTF-8 byte-order mark (BOM), which would become part "
                                      "of the first column's name: save it as UTF-8 without BOM")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, encoding="utf-8")
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8")
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from exc
    raise DataFormatError(f"{path}: unsupported format {suffix!r} (use {', '.join(TABLE_SUFFIXES)})")


def read_table_files(folder: Path) -> dict[Path, pd.DataFrame]:
    """Every CSV/Parquet/JSONL file under folder, read as a table, in sorted path order."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise DataFormatError(f"{folder} holds no {'/'.join(TABLE_SUFFIXES)} files")
    return {file: read_table(file) for file in files}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, or of a folder's files (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
