"""Data contracts at scale: the raw-data contract + prepare's split + the split contract on synthetic tables.

Rows are synthesised from the real reviews the default params use (prepare.sources): each row is
a real sentence with its words shuffled (seeded; realistic lengths and vocabulary, distinct
texts), and 1% of rows are a near duplicate of another row (one word appended), so the
near-duplicate search has real work to do. Each size runs in a fresh process, so its peak RSS
is its own. Timed: the contracts on a table already in memory (Great Expectations imported
first; its import time is reported apart). The token-length contract (a tokenizer pass over
every row) is timed separately, at the smallest size.

Prints a table, then one JSON line: {"sizes": [{"rows", "seconds", "peak_rss_mib", ...}, ...], ...}

    python benchmarks/data_contracts.py [--sizes 100000 300000 1000000] [--project .]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import default_data_source  # noqa: E402

TARGET_SECONDS, TARGET_RSS_MIB = 30.0, 4096.0
NEAR_DUPLICATE_SHARE = 0.01


def synthesise(rows: int, cfg: PipelineConfig, seed: int = 0) -> pd.DataFrame:
    """`rows` labelled reviews built from the real ones (see the module docstring)."""
    real = pd.read_csv(default_data_source())
    if cfg.prepare.sources:
        real = real[real[cfg.data.source_column].isin(cfg.prepare.sources)]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(real), rows)
    words = [text.split() for text in real[cfg.data.text_column]]
    texts = []
    for i in pick:
        shuffled = list(words[i])
        rng.shuffle(shuffled)
        texts.append(" ".join(shuffled))
    copies = rng.choice(rows, int(rows * NEAR_DUPLICATE_SHARE), replace=False)
    for position, original in zip(copies[::2], copies[1::2]):
        texts[position] = texts[original] + " indeed"
    return pd.DataFrame({cfg.data.text_column: pd.array(texts, dtype="str"),
                         cfg.data.label_column: real[cfg.data.label_column].to_numpy()[pick],
                         cfg.data.source_column or "source": real[cfg.data.source_column].to_numpy()[pick]})


def measure(rows: int, project: Path, with_tokens: bool) -> dict:
    """One size, in this process: synthesise, then time each contract step."""
    from tasks.core.base_model import resolve_base_model
    from tasks.prepare import make_splits, to_canonical
    from tasks.contracts.splits import split_contract, token_counts
    from tasks.contracts.raw import check_table

    cfg = load_config(project / "params.yaml")
    frame = synthesise(rows, cfg)
    started = time.perf_counter()
    import great_expectations  # noqa: F401 - a fixed cost, reported apart
    figures: dict = {"rows": rows, "gx_import_seconds": round(time.perf_counter() - started, 2)}

    started = time.perf_counter()
    raw = check_table(frame, project, cfg)
    figures["raw_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    split_rows, keys, pairs, dropped = make_splits(to_canonical(frame, cfg.data, cfg.prepare.sources), cfg)
    figures["split_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    contract = split_contract(split_rows, keys, pairs, cfg, project, tokenizer_dir=None)
    figures["split_contract_seconds"] = round(time.perf_counter() - started, 2)
    figures["seconds"] = round(figures["raw_seconds"] + figures["split_seconds"] + figures["split_contract_seconds"], 2)
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["near_duplicate_pairs"] = int(len(pairs))
    figures["contracts_pass"] = bool(raw["success"] and contract["success"])
    if with_tokens:
        tokenizer_dir, _ = resolve_base_model(cfg.train.base_model, project)
        started = time.perf_counter()
        token_counts(split_rows["text"].tolist(), tokenizer_dir)
        figures["token_contract_seconds"] = round(time.perf_counter() - started, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--project", default=".", help="project root (its params.yaml and expectations/)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: measure one size
    parser.add_argument("--tokens", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/data_contracts.json", help="where to keep the JSON")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    if args.one:
        print(json.dumps(measure(args.one, project, args.tokens)))
        return

    results = []
    for rows in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(rows), "--project", str(project)]
        done = subprocess.run(cmd + (["--tokens"] if rows == min(args.sizes) else []), capture_output=True,
                              text=True, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})
        if done.returncode != 0:
            sys.exit(f"{rows} rows failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{rows:>9} rows: {results[-1]['seconds']:6.1f} s  {results[-1]['peak_rss_mib']:7.0f} MiB", flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Data contracts (raw + split + split contract), table in memory; one process per size")
    columns = ("rows", "raw_seconds", "split_seconds", "split_contract_seconds", "seconds", "peak_rss_mib",
               "near_duplicate_pairs", "contracts_pass")
    for column in (*columns, "x time vs smallest"):
        table.add_column(column, justify="right")
    for figures in results:
        ratio = figures["seconds"] / results[0]["seconds"]
        table.add_row(*(str(figures[c]) for c in columns), f"{ratio:.1f}x for {figures['rows'] / results[0]['rows']:.0f}x rows")
    Console(width=200).print(table)
    largest = results[-1]
    print(f"targets at {largest['rows']} rows: < {TARGET_SECONDS:.0f} s ({largest['seconds']} s), "
          f"< {TARGET_RSS_MIB:.0f} MiB ({largest['peak_rss_mib']} MiB); GX import {largest['gx_import_seconds']} s "
          f"apart; token-length contract at {results[0]['rows']} rows: {results[0].get('token_contract_seconds')} s")
    summary = {"sizes": [{k: f[k] for k in ("rows", "seconds", "peak_rss_mib")} for f in results],
               "details": results, "target_seconds": TARGET_SECONDS, "target_peak_rss_mib": TARGET_RSS_MIB}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
