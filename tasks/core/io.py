"""File helpers: atomic writes, whole-directory swaps, tables in any supported format."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tasks.core.errors import TunegateError

if TYPE_CHECKING:  # pandas is imported where tables are read: the serving install (atomic writes, JSON) has none
    import pandas as pd

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
    """Yield a temp path beside `path` to write; on success it replaces `path` (fsynced, mode as the umask
    allows), on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)  # the bytes reach the disk before the name points at them
        os.chmod(tmp, _file_mode(tmp, current_umask()))  # mkstemp makes it 0600: readable only by us
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; on success it replaces `final` whole.

    On any error the temp folder is removed and `final` keeps its previous content,
    so a failed stage never leaves a half-written artifact behind. Before the swap every
    staged file is fsynced and given the mode the umask allows; a swap cut short by a crash
    is undone by the next call (see recover_swap).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{STAGING}.{os.getpid()}."))
    _in_use.add(tmp)
    try:
        try:
            yield tmp
            seal_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _swap(tmp, final)
    finally:
        _in_use.discard(tmp)


STAGING, OLD = "staging", "old"  # leftovers beside a stage folder: .NAME.staging.PID.XXXX, .NAME.old.PID
_in_use: set[Path] = set()  # this process's staging folders of staged_dir calls still running


def _swap(tmp: Path, final: Path) -> None:
    """Two renames: final -> .NAME.old.PID, tmp -> final. A crash between them leaves the old output
    under its .old name, which recover_swap puts back; an error between them puts it back at once."""
    old = final.parent / f".{final.name}.{OLD}.{os.getpid()}"
    moved = final.exists()
    if moved:
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if moved:
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(final.parent)  # both renames on disk before the old output goes
    shutil.rmtree(old, ignore_errors=True)


class Leftover(NamedTuple):
    """A folder an earlier staged_dir left beside `final`: its kind (staging/old) and the owner's pid."""

    path: Path
    kind: str
    pid: int | None


def leftovers(final: Path) -> list[Leftover]:
    """Staging and old folders of `final` left by staged_dir calls (this process's included)."""
    found = []
    for kind in (STAGING, OLD):
        prefix = f".{final.name}.{kind}."
        for path in final.parent.glob(f"{glob.escape(prefix)}*"):
            pid = path.name[len(prefix):].split(".")[0]
            found.append(Leftover(path, kind, int(pid) if pid.isdigit() else None))
    return sorted(found)


def _busy(pid: int | None) -> bool:
    """Whether another live process owns the leftover (it may be mid-swap); None = an older naming: not."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, run by another user
    return True


def recover_swap(final: Path) -> Path | None:
    """Undo what an interrupted staged_dir left beside `final`; returns the leftover restored as `final`, if any.

    A crash between the swap's two renames leaves no `final` and the last good output under
    .NAME.old.PID: it is renamed back. Other leftovers of processes no longer running (staging
    folders, old folders a crash kept after the swap) are deleted, and so are this process's,
    except the staging folders of its staged_dir calls still running.
    """
    found = [item for item in leftovers(final) if not _busy(item.pid)]
    olds = sorted((item.path for item in found if item.kind == OLD), key=lambda p: p.lstat().st_ctime)
    restored = None
    if olds and not final.exists():
        restored = olds.pop()  # the newest: the output the interrupted swap was replacing
        os.replace(restored, final)
        _fsync(final.parent)
    for item in found:
        if item.path in olds or (item.kind == STAGING and item.path not in _in_use):
            shutil.rmtree(item.path, ignore_errors=True)
    return restored


def recover_swaps(parent: Path) -> list[Path]:
    """recover_swap for every folder under `parent` that has leftovers (e.g. artifacts/, before a run asks
    DVC what is up to date: a restored output then counts as present); returns the folders restored."""
    names = {match.group(1) for path in parent.glob(".*") if path.is_dir()
             and (match := re.match(rf"^\.(.+?)\.(?:{STAGING}|{OLD})\.", path.name))}
    return [parent / name for name in sorted(names) if recover_swap(parent / name) is not None]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(path: Path, umask: int) -> int:
    """What open() would have given: 0666 minus the umask (0777 for folders and executables)."""
    executable = path.is_dir() or path.stat().st_mode & 0o111
    return (0o777 if executable else 0o666) & ~umask


def seal_tree(folder: Path) -> None:
    """Make a staged folder ready to swap in: every file and folder fsynced, modes as the umask allows.

    mkdtemp/mkstemp (ours, and those inside transformers and onnx) make 0700/0600 entries that a
    serving process or CI job running as another user could not read.
    """
    umask = current_umask()
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            file = Path(dirpath) / name
            if not file.is_symlink():
                os.chmod(file, _file_mode(file, umask))
                _fsync(file)
        os.chmod(dirpath, _file_mode(Path(dirpath), umask))
        _fsync(Path(dirpath))


def _fsync(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (network, FUSE) refuse fsync on a folder; its entries are then theirs to keep.
        if not (path.is_dir() and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSONL file, or every such file in a folder (concatenated)."""
    import pandas as pd

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
