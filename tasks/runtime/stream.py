"""`tunegate predict --input` in bounded memory: CSV, Parquet (a whole file or one row group) and JSONL read in
chunks of rows, each chunk scored with predict_texts and written out (CSV, JSONL or Parquet) before the next."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.core.io import TABLE_SUFFIXES, DataFormatError, atomic_file
# predict.py does not import this module: the gate runs predict_texts, and streaming files cannot change its output
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.runtime.predict import PredictInputError, predict_texts

# One pyarrow CSV block (bytes): ~8k short reviews; memory stays a few blocks whatever the file's size. pyarrow
# cannot read a row longer than a block (validate.max_text_chars is 20,000 characters: 1 MiB leaves room).
CSV_BLOCK_BYTES = 1 << 20
# Rows per chunk of Parquet record batches and JSONL lines. Each chunk is scored on its own, sorted by length:
# larger chunks pad less, smaller ones hold less in memory (a chunk of 8192 reviews is a few MB).
CHUNK_ROWS = 8192
# Columns pandas wrote for a DataFrame's index: not data (read_table's pandas.read_parquet drops them too).
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")


class CsvTypeDrift(DataFormatError):
    """A CSV column's values stopped fitting the type pyarrow inferred from the first block (read again as text)."""


@dataclass
class TableChunks:
    """An open table: its columns (None for JSONL until a chunk is read), a progress total in `unit`s, and the
    chunks as (rows, progress so far) pairs."""

    columns: list[str] | None
    total: int
    unit: str
    chunks: Iterator[tuple[pd.DataFrame, int]]


def table_format(path: Path) -> str:
    """The table format a path's suffix names (csv, parquet or jsonl); DataFormatError for any other."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataFormatError(f"{path}: unsupported format {suffix!r} (use {', '.join(TABLE_SUFFIXES)})")
    return suffix[1:]


def refuse_bom(path: Path) -> None:
    """A UTF-8 byte-order mark would become part of the first column's name (as read_table says)."""
    with path.open("rb") as handle:
        if handle.read(3) == b"\xef\xbb\xbf":
            raise DataFormatError(f"{path} starts with a UTF-8 byte-order mark (BOM), which would become part of the "
                                  "first column's name: save it as UTF-8 without BOM")


@contextmanager
def open_table(path: Path, text_column: str, *, row_group: int | None = None, csv_as_text: bool = False,
               chunk_rows: int = CHUNK_ROWS, block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[TableChunks]:
    """Open a CSV/Parquet/JSONL file (or one row group of a Parquet file) for reading chunk by chunk.

    The text column is always read as text; `csv_as_text` reads every CSV column as text (after CsvTypeDrift).
    """
    if not path.is_file():
        raise DataFormatError(f"{path} does not exist")
    kind = table_format(path)
    if row_group is not None and kind != "parquet":
        raise DataFormatError(f"{path}: only Parquet files have row groups")
    if kind == "csv":
        with _csv_chunks(path, text_column, csv_as_text, block_bytes) as table:
            yield table
    elif kind == "parquet":
        yield _parquet_chunks(path, row_group, chunk_rows)
    else:
        with _jsonl_chunks(path, text_column, chunk_rows) as table:
            yield table


def _csv_options(block_bytes: int, column_types: dict[str, pa.DataType]) -> dict:
    # Like pandas.read_csv (what `tunegate predict` read before): quoted newlines allowed, empty and NA-like
    # strings are missing values, and no date or time parsing (pandas keeps them as text).
    return {"read_options": pacsv.ReadOptions(block_size=block_bytes),
            "parse_options": pacsv.ParseOptions(newlines_in_values=True),
            "convert_options": pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True,
                                                    timestamp_parsers=[])}


_TEMPORAL = (pa.types.is_date, pa.types.is_time, pa.types.is_timestamp)


def _csv_reader(path: Path, text_column: str, as_text: bool,
                block_bytes: int) -> tuple[pa.NativeFile, pacsv.CSVStreamingReader]:
    """A streaming reader whose text column (every column with `as_text`) and date-like columns are strings."""
    def open_with(types: dict[str, pa.DataType]) -> tuple[pa.NativeFile, pacsv.CSVStreamingReader]:
        source = pa.OSFile(str(path), "rb")
        try:
            return source, pacsv.open_csv(source, **_csv_options(block_bytes, types))
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            source.close()
            raise DataFormatError(f"cannot read {path}: {exc}") from exc

    source, reader = open_with({text_column: pa.string()})
    text_too = [f.name for f in reader.schema if as_text or any(test(f.type) for test in _TEMPORAL)]
    if not text_too:
        return source, reader
    source.close()  # types come from the first block: opened again with those columns as text
    return open_with({text_column: pa.string(), **{name: pa.string() for name in text_too}})


@contextmanager
def _csv_chunks(path: Path, text_column: str, as_text: bool, block_bytes: int) -> Iterator[TableChunks]:
    refuse_bom(path)
    source, reader = _csv_reader(path, text_column, as_text, block_bytes)

    def chunks() -> Iterator[tuple[pd.DataFrame, int]]:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                if not as_text and "conversion error" in str(exc):
                    raise CsvTypeDrift(f"{path}: {exc}") from exc
                if "straddles" in str(exc):
                    raise DataFormatError(f"cannot read {path}: a row is longer than one CSV block ({block_bytes} "
                                          "bytes), or a quote is never closed") from exc
                raise DataFormatError(f"cannot read {path}: {exc}") from exc
            yield batch.to_pandas(), source.tell()

    try:
        yield TableChunks(reader.schema.names, path.stat().st_size, "bytes", chunks())
    finally:
        source.close()


def data_columns(schema: pa.Schema) -> list[str]:
    """A Parquet file's columns without those pandas wrote for its index."""
    return [name for name in schema.names if not _PANDAS_INDEX.match(name)]


def _parquet_chunks(path: Path, row_group: int | None, chunk_rows: int) -> TableChunks:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from exc
    groups = None if row_group is None else [row_group]
    if row_group is not None and not 0 <= row_group < parquet.num_row_groups:
        raise DataFormatError(f"{path} has {parquet.num_row_groups} row groups, not a group {row_group}")
    total = parquet.metadata.num_rows if row_group is None else parquet.metadata.row_group(row_group).num_rows
    columns = data_columns(parquet.schema_arrow)

    def chunks() -> Iterator[tuple[pd.DataFrame, int]]:
        done = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=columns):
            done += batch.num_rows
            yield batch.to_pandas(), done

    return TableChunks(columns, total, "rows", chunks())


@contextmanager
def _jsonl_chunks(path: Path, text_column: str, chunk_rows: int) -> Iterator[TableChunks]:
    refuse_bom(path)
    handle = path.open("rb")

    def chunks() -> Iterator[tuple[pd.DataFrame, int]]:
        first_line = 1
        while True:
            lines, read = [], 0
            for line in handle:  # a binary handle keeps tell() working while iterated
                read += 1
                if line.strip():
                    lines.append(line)
                if len(lines) == chunk_rows:
                    break
            if not lines:
                return
            yield _jsonl_frame(path, b"".join(lines), text_column, first_line), handle.tell()
            first_line += read

    try:
        yield TableChunks(None, path.stat().st_size, "bytes", chunks())
    finally:
        handle.close()


def _jsonl_frame(path: Path, data: bytes, text_column: str, first_line: int) -> pd.DataFrame:
    """Parse JSONL lines as pandas.read_json does (what `tunegate predict` read before), texts left as they are."""
    try:
        # dtype object for the text column: pandas would turn texts that look like numbers into numbers
        return pd.read_json(io.BytesIO(data), lines=True, encoding="utf-8", dtype={text_column: object})
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"cannot read {path} (lines from {first_line}): {exc}") from exc


class TableWriter:
    """Rows appended chunk by chunk to a CSV (header once), JSONL or Parquet file (schema of the first chunk)."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self.started = False
        self._handle: io.TextIOBase | None = None
        self._parquet: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            self._write_parquet(frame)
            return
        if self._handle is None:
            # newline="": pandas writes its own line ends (as to_csv/to_json on a path do)
            self._handle = self.path.open("w", encoding="utf-8", newline="")
        if self.kind == "csv":
            frame.to_csv(self._handle, index=False, header=not self.started)
        elif len(frame):  # to_json of no rows writes a bare newline
            frame.to_json(self._handle, orient="records", lines=True, force_ascii=False)
        self.started = True

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        if self._parquet is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        else:
            try:
                table = pa.Table.from_pandas(frame, schema=self._parquet.schema, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise DataFormatError(f"{self.path}: a later chunk's columns do not fit the first chunk's types "
                                      f"({self._parquet.schema.to_string(show_schema_metadata=False)}): {exc}") from exc
        self._parquet.write_table(table)
        self.started = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._parquet is not None:
            self._parquet.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prediction_columns(labels: list[str]) -> list[str]:
    """The columns predict_texts adds, in order."""
    return ["predicted_label", "predicted_probability", *(f"p_{name}" for name in labels)]


def check_columns(source: Path, columns: list[str], text_column: str, labels: list[str]) -> None:
    """The text column is there and no column would be overwritten by a prediction column."""
    if text_column not in columns:
        raise PredictInputError(f"{source} has no column {text_column!r} (columns: {', '.join(map(str, columns))})")
    clashes = sorted(set(prediction_columns(labels)) & set(map(str, columns)))
    if clashes:
        raise PredictInputError(f"{source} already has columns {clashes}: rename them before predicting")


def texts_of(column: pd.Series, source: Path, first_row: int) -> list[str]:
    """The column's values as texts (missing ones as ""); PredictInputError naming the first value that is no text."""
    values = column.tolist()
    for i, value in enumerate(values):
        if not isinstance(value, str) and not _missing(value):
            raise PredictInputError(f"{source}: column {column.name!r} must hold texts, but row {first_row + i + 1} "
                                    f"holds {type(value).__name__} {value!r} (column type {column.dtype})")
    return [value if isinstance(value, str) else "" for value in values]


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


Progress = Callable[[int, int, str], None]  # (done, total, unit: "bytes" or "rows")


def predict_file(model: OnnxClassifier, source: Path, target: Path, text_column: str, batch_size: int, *,
                 row_group: int | None = None, progress: Progress | None = None, chunk_rows: int = CHUNK_ROWS,
                 block_bytes: int = CSV_BLOCK_BYTES) -> int:
    """Classify every row of a CSV/Parquet/JSONL file (or one Parquet row group) chunk by chunk in bounded memory;
    write it with predictions added (CSV, JSONL or Parquet) atomically; return the rows written."""
    kind = target.suffix.lower()
    if kind not in OUTPUT_SUFFIXES:
        raise PredictInputError(f"output {target} must end in {', '.join(OUTPUT_SUFFIXES)}")
    reading = {"row_group": row_group, "chunk_rows": chunk_rows, "block_bytes": block_bytes}
    try:
        return _predict_chunks(model, source, target, text_column, batch_size, progress, **reading)
    except CsvTypeDrift:
        # a column's later values did not fit the type read from the first block: start again, every column as text
        return _predict_chunks(model, source, target, text_column, batch_size, progress, csv_as_text=True, **reading)


def _predict_chunks(model: OnnxClassifier, source: Path, target: Path, text_column: str, batch_size: int,
                    progress: Progress | None, **reading: Any) -> int:
    rows = 0
    with open_table(source, text_column, **reading) as table:
        if table.columns is not None:
            check_columns(source, table.columns, text_column, model.labels)
        with atomic_file(target) as tmp, TableWriter(tmp, target.suffix.lower()[1:]) as writer:
            for frame, done in table.chunks:
                if rows == 0:
                    check_columns(source, list(frame.columns), text_column, model.labels)
                predictions = predict_texts(model, texts_of(frame[text_column], source, rows), batch_size)
                writer.write(pd.concat([frame.reset_index(drop=True), predictions], axis=1))
                rows += len(frame)
                if progress:
                    progress(done, table.total, table.unit)
            if not writer.started:  # no rows: the header alone, as pandas writes an empty table
                check_columns(source, table.columns or [], text_column, model.labels)
                writer.write(pd.DataFrame(columns=[*table.columns, *prediction_columns(model.labels)]))
    return rows
