"""New labelled rows become a new data version on a git branch: the file written beside (or into) the data, `dvc add`,
a commit; after the pipeline, dvc.lock committed on the same branch, then pushed where the team sees it. The
retraining flow (flows/retrain.py) runs these steps in order; each is a plain function, tested on its own."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.config import DataConfig, PipelineConfig
from tasks.core.errors import TunegateError
from tasks.core.io import atomic_file
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import dirty_files, dvc, git, tracked_paths

if TYPE_CHECKING:
    import pandas as pd

    from tasks.monitoring.arrivals import Arrival

# What the source column (data.source_column) says for rows that arrived as labelled batches: they carry only
# the text and label columns. prepare.sources must name it for them to be trained on (the summary says so).
ARRIVED_SOURCE = "arrived"
ARRIVED_SPLIT = "train"  # data that arrives split (data.split_column): new labelled rows are training rows
STAMP = "%Y%m%dT%H%M%SZ"  # UTC; sorts by time; valid in branch and file names
_OLD_STAMP = re.compile(r"\.\d{8}T\d{6}Z$")  # a stamp an earlier retraining put in a file name


class RetrainRefused(TunegateError):
    """The retraining cannot start here: tracked files are uncommitted, or the data is not where DVC tracks it."""


@dataclass(frozen=True)
class DataVersion:
    """A new data version committed on a branch: the file written, the rows added, the commit."""

    branch: str
    file: str  # relative to the project
    rows_added: int
    commit: str
    data_path: str  # data.path after the change (changed when data.path names one file)
    files: list[str] = field(default_factory=list)  # the labelled files taken (relative to monitor.labelled_dir)


# --- pure rules --------------------------------------------------------------------------------------------------


def branch_name(prefix: str, now: datetime) -> str:
    """The branch of one retraining: the configured prefix and the UTC time, e.g. retrain/20260101T030000Z."""
    return f"{prefix}{now.astimezone(timezone.utc).strftime(STAMP)}"


def version_file(data_path: Path, is_dir: bool, now: datetime) -> Path:
    """Where a new data version's file goes: a new part inside a data folder (read with the others), or beside a
    single data file a new file holding all its rows plus the new ones (the old file is never rewritten)."""
    stamp = now.astimezone(timezone.utc).strftime(STAMP)
    if is_dir:
        return data_path / f"arrived.{stamp}.csv"
    stem = _OLD_STAMP.sub("", data_path.stem)
    return data_path.with_name(f"{stem}.{stamp}{data_path.suffix}")


def fill_columns(new: pd.DataFrame, columns: list[str], data: DataConfig) -> pd.DataFrame:
    """New labelled rows (text and label only) shaped like the data's table: its source column says
    ARRIVED_SOURCE, its split column ARRIVED_SPLIT, any other column is left empty."""
    shaped = new.copy()
    for column in columns:
        if column in shaped:
            continue
        if column == data.source_column:
            shaped[column] = ARRIVED_SOURCE
        elif column == data.split_column:
            shaped[column] = ARRIVED_SPLIT
        else:
            shaped[column] = None
    return shaped[columns + [c for c in shaped.columns if c not in columns]]


def unused_rows_warning(cfg: PipelineConfig, rows: int) -> str | None:
    """Why new rows would be versioned but not trained on (prepare.sources leaves their source out), or None."""
    sources = cfg.prepare.sources
    if not rows or not sources or cfg.data.source_column is None or ARRIVED_SOURCE in sources:
        return None
    return (f"the {rows} new rows have {cfg.data.source_column} {ARRIVED_SOURCE!r}, which prepare.sources "
            f"({sources}) leaves out: they are in the new data version but not trained on. Add {ARRIVED_SOURCE!r} "
            "to prepare.sources to train on them")


# --- git and DVC -------------------------------------------------------------------------------------------------


def tracking_out(root: Path, data_path: Path, dvc_file: str = "data.dvc") -> str:
    """The out of `dvc_file` that holds data.path (e.g. "data"); RetrainRefused when none does."""
    outs = tracked_paths(root, dvc_file)
    for out in outs:
        if data_path.resolve().is_relative_to((root / out).resolve()):
            return out
    raise RetrainRefused(f"data.path {data_path.relative_to(root)} is not under what {dvc_file} tracks "
                         f"({', '.join(outs) or 'nothing'}): a new data version cannot be recorded. "
                         "Track the data folder with `dvc add` first")


def check_clean(root: Path) -> None:
    """Refuse to start when tracked files differ from HEAD: the retraining commits, and must commit only its own."""
    if dirty := dirty_files(root):
        raise RetrainRefused(f"tracked files differ from the commit ({', '.join(dirty)}): a retraining commits a new "
                             "data version and dvc.lock, and would take these changes along. Commit or restore them")


def check_labelled_outside_data(root: Path, cfg: PipelineConfig) -> None:
    """Refuse a labelled_dir inside a data folder that the pipeline reads: its rows would be trained on twice."""
    data_path = root / cfg.data.path
    if cfg.monitor.labelled_dir is None or not data_path.is_dir():
        return
    if (root / cfg.monitor.labelled_dir).resolve().is_relative_to(data_path.resolve()):
        raise RetrainRefused(f"monitor.labelled_dir ({cfg.monitor.labelled_dir}) is inside data.path "
                             f"({cfg.data.path}), which the pipeline reads whole: new rows would be read there and "
                             "again from the data version. Move monitor.labelled_dir outside it")


def write_version(root: Path, cfg: PipelineConfig, new: pd.DataFrame, now: datetime) -> tuple[Path, str]:
    """Write the new data version's file (atomically); returns it and data.path as it must read after."""
    from tasks.core.io import read_table, read_table_files

    data_path = root / cfg.data.path
    target = version_file(data_path, data_path.is_dir(), now)
    if data_path.is_dir():
        first = next(iter(read_table_files(data_path).values()))
        table = fill_columns(new, list(first.columns), cfg.data)
    else:
        import pandas as pd

        old = read_table(data_path)
        added = fill_columns(new, list(old.columns), cfg.data)
        # The label column keeps the data's type (a JSONL batch may give 1.0 for the data's 1).
        added[cfg.data.label_column] = added[cfg.data.label_column].astype(old[cfg.data.label_column].dtype)
        table = pd.concat([old, added], ignore_index=True)
    with atomic_file(target) as tmp:
        suffix = target.suffix.lower()
        if suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        elif suffix == ".jsonl":
            table.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            table.to_csv(tmp, index=False)
    data_after = cfg.data.path if data_path.is_dir() else target.relative_to(root).as_posix()
    return target, data_after


def add_data_version(root: Path, cfg: PipelineConfig, new: pd.DataFrame, arrivals: list[Arrival],
                     now: datetime) -> DataVersion:
    """On a new branch: write the new rows as a new data version, `dvc add` it, commit data.dvc (and params.yaml
    when data.path moved to the new file), then record the labelled files as taken in the arrivals ledger."""
    from tasks.core.config import write_overrides
    from tasks.monitoring.arrivals import mark_consumed

    out = tracking_out(root, root / cfg.data.path)
    branch = branch_name(cfg.orchestration.retrain_branch, now)
    git(root, "checkout", "-q", "-b", branch)
    target, data_after = write_version(root, cfg, new, now)
    changes = [f"data.path={data_after}"] if data_after != cfg.data.path else []
    if cfg.prepare.sources and cfg.data.source_column is not None and ARRIVED_SOURCE not in cfg.prepare.sources:
        # The team collected these rows to be trained on: the source filter takes them in, recorded in params.yaml
        # in the same commit as the data version (so the branch says exactly what the retraining read).
        changes.append(f"prepare.sources=[{', '.join([*cfg.prepare.sources, ARRIVED_SOURCE])}]")
    if changes:
        write_overrides(root / "params.yaml", changes)
    dvc(root, "add", "-q", out)
    git(root, "add", "--", f"{out}.dvc", "params.yaml")
    files = [a.name for a in arrivals]
    git(root, "commit", "-q", "-m", f"retrain: data version with {len(new)} new labelled rows\n\n"
                                    f"File {target.relative_to(root).as_posix()}; labelled files: {', '.join(files)}")
    commit = git(root, "rev-parse", "HEAD")
    # After the commit: a run that failed before it leaves the files counted as new, to be taken next time.
    mark_consumed(root, arrivals)
    return DataVersion(branch, target.relative_to(root).as_posix(), len(new), commit, data_after, files)


def commit_model(root: Path, branch: str | None, prefix: str, now: datetime) -> tuple[str | None, str | None]:
    """Commit what the pipeline changed in tracked files (dvc.lock, params.yaml overrides) on the retraining's
    branch (made now when there is none yet); (branch, commit), or (branch, None) when nothing changed."""
    # A project's first run leaves dvc.lock untracked, which dirty_files (tracked changes) does not see.
    lock_untracked = (root / "dvc.lock").is_file() and not git(root, "ls-files", "--", "dvc.lock")
    if not dirty_files(root) and not lock_untracked:
        return branch, None
    if branch is None:
        branch = branch_name(prefix, now)
        git(root, "checkout", "-q", "-b", branch)
    git(root, "add", "-u")
    # The CPU record travels with dvc.lock (tasks/core/lock_cpu.py); a project's first run leaves both untracked.
    lock_cpu = ArtifactPaths(root).lock_cpu
    git(root, "add", "--", "dvc.lock", *([lock_cpu.name] if lock_cpu.is_file() else []))
    git(root, "commit", "-q", "-m", "retrain: dvc.lock of the retrained model")
    return branch, git(root, "rev-parse", "HEAD")


def push_branch(root: Path, remote: str, branch: str) -> None:
    """Send the data (DVC remote) and the branch (git remote) where the team sees them: orchestration.retrain_push."""
    dvc(root, "push", "-q")
    git(root, "push", "-q", "-u", remote, branch)
