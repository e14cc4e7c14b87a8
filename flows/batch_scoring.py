"""Prefect flow batch_scoring: `tunegate predict`'s streaming code mapped over the files and Parquet row groups of
a dataset, one task per part, on a Dask cluster (a local one of `workers` processes, or one already running)."""

from __future__ import annotations

import functools
import glob
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, task
from prefect_dask import DaskTaskRunner

from tasks.core.errors import TunegateError
from tasks.core.io import TABLE_SUFFIXES
from tasks.runtime.files import PREDICT_BATCH_SIZE, SERVING_FILE
from tasks.serving.scoring import cores

OUTPUT_SUFFIX = ".predictions.parquet"


class BatchInputError(TunegateError):
    """Inputs that name no table, or parts whose output names would collide."""


class Part(NamedTuple):
    """What one task scores: a file, or one row group of a Parquet file (absolute paths: workers may run elsewhere)."""

    name: str
    path: str
    row_group: int | None


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (every CSV/Parquet/JSONL file under them) and glob patterns -> table files, sorted, unique."""
    found: set[Path] = set()
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not matches or not any(m.exists() for m in matches):
            raise BatchInputError(f"input {item!r} matches nothing")
        for match in matches:
            if match.is_dir():
                found.update(p for p in match.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
            elif match.suffix.lower() in TABLE_SUFFIXES:
                found.add(match)
            elif not glob.has_magic(item):
                raise BatchInputError(f"input {item}: not a {'/'.join(TABLE_SUFFIXES)} file")
    if not found:
        raise BatchInputError(f"inputs {inputs} hold no {'/'.join(TABLE_SUFFIXES)} files")
    return sorted(p.resolve() for p in found)


def row_groups(path: Path) -> int:
    """How many row groups a Parquet file has."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).num_row_groups


def plan_parts(files: list[Path]) -> list[Part]:
    """One part per file, and one per row group of a Parquet file that has several; names unique."""
    parts = []
    for path in files:
        groups = row_groups(path) if path.suffix.lower() == ".parquet" else 1
        if groups > 1:
            parts += [Part(f"{path.stem}.rg{g:05d}", str(path), g) for g in range(groups)]
        else:
            parts.append(Part(path.stem, str(path), None))
    names: dict[str, list[str]] = {}
    for part in parts:
        names.setdefault(part.name, []).append(part.path)
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    if clashes:
        raise BatchInputError(f"inputs with the same name would write the same output ({clashes}): rename them or "
                              "score them in separate runs")
    return parts


def onnx_threads(workers: int) -> int:
    """onnxruntime threads per Dask worker process, so the workers on one host never oversubscribe its cores."""
    return max(1, cores() // max(1, workers))


@functools.lru_cache(maxsize=2)
def worker_model(folder: str, threads: int) -> Any:
    """The served model, loaded once per worker process on one thread pool of `threads` threads."""
    from tasks.runtime.onnx_model import share_one_thread_pool
    from tasks.runtime.predict import load_served_model

    try:
        share_one_thread_pool(threads)
    except RuntimeError:
        pass  # this process already opened a session (scored in process, not on a worker): its pool stays
    return load_served_model(Path(folder))


@task(name="score_part")
def score_part(part: Part, output_dir: str, model: str, text_column: str, batch_size: int, workers: int) -> int:
    """Score one part with the streaming `tunegate predict` code; write OUTPUT_DIR/<part>.predictions.parquet."""
    from tasks.runtime.stream import predict_file

    target = Path(output_dir) / f"{part.name}{OUTPUT_SUFFIX}"
    return predict_file(worker_model(model, onnx_threads(workers)), Path(part.path), target, text_column, batch_size,
                        row_group=part.row_group)


@flow(name="score_parts")
def score_parts(parts: list[Part], output_dir: str, model: str, text_column: str, batch_size: int,
                workers: int) -> dict[str, int]:
    """Map score_part over the parts on this flow's task runner; rows written per part."""
    futures = score_part.map(parts, output_dir, model, text_column, batch_size, workers)
    return {part.name: future.result() for part, future in zip(parts, futures)}


def dask_runner(workers: int, dask_address: str | None) -> DaskTaskRunner:
    """The cluster at dask_address, or a local one of `workers` single-threaded processes (no dashboard)."""
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@flow(name="batch_scoring")
def batch_scoring(inputs: list[str], output_dir: str, model: str = "artifacts/quantize/onnx",
                  batch_size: int = PREDICT_BATCH_SIZE, workers: int = 2, dask_address: str | None = None,
                  text_column: str = "text") -> dict[str, int]:
    """Score every file (Parquet: every row group) of `inputs` on Dask into OUTPUT_DIR/<part>.predictions.parquet;
    returns rows per part. With dask_address, paths must be readable at the same place on every worker."""
    parts = plan_parts(expand_inputs(inputs))
    folder = Path(model).resolve()
    if not (folder / SERVING_FILE).is_file():
        raise BatchInputError(f"{folder} is not an exported model folder (no {SERVING_FILE})")
    runner = dask_runner(workers, dask_address)
    return score_parts.with_options(task_runner=runner)(parts, str(Path(output_dir).resolve()), str(folder),
                                                        text_column, batch_size, workers)
