"""`shadow`: replay a window of the prediction log with a candidate model and compare it with what prod answered."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich import box
from rich.table import Table

from flows.terminal import console


def replay_window(args: argparse.Namespace, now: float) -> tuple[float, float]:
    """(since, until) in UNIX seconds, read as `monitor run` reads its window: --end (default now) and
    --window-minutes before it, or --since instead of a length."""
    from flows.monitoring import window_bounds

    if args.since is None:
        return window_bounds(args.end, args.window_minutes, now)
    from tasks.registry.history import parse_instant

    _, until = window_bounds(args.end, 0.0, now)
    return parse_instant(args.since).timestamp(), until


def resolve_candidate(spec: str, project: Path) -> tuple[Path, str]:
    """(served folder, version) of a candidate named as serve.model is (a folder, relative to `project`, or
    registry:STAGE) or as a registered version (v0.2.0, fetched through DVC like `tunegate rollback` fetches it)."""
    from tasks.core.paths import ArtifactPaths
    from tasks.judging.shadow import ShadowError
    from tasks.runtime.settings import REGISTRY_PREFIX
    from tasks.serving.source import source_for

    folder = Path(spec).expanduser()
    if spec.startswith(REGISTRY_PREFIX) or (folder if folder.is_absolute() else project / folder).exists():
        resolved = source_for(spec, project).resolve()
        return resolved.folder, resolved.version
    from tasks.registry.fetch import fetch_release
    from tasks.registry.tags import RegistryError, find_version

    try:
        version = find_version(project, spec)
    except RegistryError as exc:
        raise ShadowError(f"the candidate {spec!r} is neither a folder nor a registered version: {exc}") from exc
    return fetch_release(ArtifactPaths(project), version), version.version


def cmd_shadow(args: argparse.Namespace) -> int:
    import time

    from tasks.core.config import load_config
    from tasks.core.io import write_json
    from tasks.core.paths import ArtifactPaths
    from tasks.monitoring.reference import scoring_threads
    from tasks.judging.shadow import shadow_evaluate

    root = Path(args.project).resolve()
    cfg = load_config(ArtifactPaths(root).params)
    if args.window_minutes is None and args.since is None:
        args.window_minutes = cfg.monitor.window_minutes
    since, until = replay_window(args, time.time())
    log_dir = Path(args.log) if args.log else root / cfg.serve.log_dir
    folder, version = resolve_candidate(args.candidate, root)
    report = shadow_evaluate(log_dir, folder, cfg, since=since, until=until, prod_version=args.prod_version,
                             threads=scoring_threads(cfg), candidate_version=version)
    if args.out:
        write_json(Path(args.out), report)
    if args.json:
        print(json.dumps(report))
    else:
        print_shadow_report(report)
    return 0


def _span(figure: dict) -> str:
    return f"[{figure['low']:.3f}, {figure['high']:.3f}]"


def _signed_span(figure: dict) -> str:
    return f"{figure['value']:+.3f} [{figure['low']:+.3f}, {figure['high']:+.3f}]"


def shadow_table(report: dict) -> Table:
    """One row for all replayed texts, then one per slice: rows, disagreement with its interval, and the two
    estimated accuracies with their difference."""
    table = Table(title=f"disagreement; estimated accuracy ({report['confidence']:.0%} intervals)",
                  box=box.SIMPLE_HEAD, pad_edge=False)  # 7 columns in 80: no padding outside the first and last
    table.add_column("slice", overflow="fold")  # a label set's own names may be long
    for column in ("rows", "disagree", "interval", "prod", "cand", "cand-prod"):
        table.add_column(column, justify="right", no_wrap=True)
    estimated = report["estimated_accuracy"]
    table.add_row("all", str(report["disagreement"]["rows"]), f"{report['disagreement']['value']:.3f}",
                  _span(report["disagreement"]), f"{estimated['prod']['value']:.3f}",
                  f"{estimated['candidate']['value']:.3f}", f"{report['estimated_difference']['value']:+.3f}")
    for item in report["slices"]:
        name = "label" if item["column"] == "prod_label" else item["column"]
        table.add_row(f"{name} {item['value']}", str(item["rows"]), f"{item['disagreement']['value']:.3f}",
                      _span(item["disagreement"]), f"{item['prod_estimated_accuracy']:.3f}",
                      f"{item['candidate_estimated_accuracy']:.3f}", f"{item['estimated_difference']['value']:+.3f}")
    return table


def _say(text: str) -> None:
    """A line of plain text (paths and labels are not markup), wrapped at the terminal's width."""
    console.print(text, markup=False, highlight=False)


def print_shadow_report(report: dict) -> None:
    from tasks.monitoring.report import iso

    window = report["window"]
    start = "the log's start" if window["since"] is None else iso(window["since"])
    end = "its end" if window["until"] is None else iso(window["until"])
    rows, candidate = report["rows"], report["candidate"]
    _say(f"shadow replay: {rows['replayed']} texts prod {report['prod_version']} answered, {start} to {end}")
    _say(f"candidate: {candidate['folder']} ({candidate['version']})")
    skipped = rows["skipped"]
    _say(f"skipped: {skipped['other_version']} of another version, {skipped['no_text']} without their text "
        f"(of {rows['read']} in the window)")
    console.print(shadow_table(report))
    estimated = report["estimated_accuracy"]
    _say(f"estimated accuracy (from each model's probabilities, no labels): prod {estimated['prod']['value']:.3f} "
        f"{_span(estimated['prod'])}, candidate {estimated['candidate']['value']:.3f} {_span(estimated['candidate'])}")
    difference = report["estimated_difference"]
    _say(f"candidate - prod, paired: {_signed_span(difference)} over {difference['disagreements']} texts labelled "
        "otherwise")
    latency = report["latency_ms_b1"]
    _say(f"candidate latency, one text per call: p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms "
        f"({latency['rows']} texts)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """shadow."""
    shadow = sub.add_parser(
        "shadow", help="replay the prediction log's texts with a candidate and compare it with prod",
        description="Score the texts prod answered in a window of the prediction log (logged with serve.log_texts: "
                    "true) with a candidate model, one text per model call as the service scores them, and report: "
                    "how often the candidate labels a text otherwise than prod did (Wilson interval), overall, by "
                    "length in tokens (gate.length_buckets) and by prod's label; the accuracy each model is "
                    "expected to have from its own probabilities (no labels needed; sound as far as they are "
                    "calibrated) and the paired difference candidate - prod, with gate.confidence intervals; and "
                    "the candidate's latency at batch 1 on up to gate.latency_rows of the texts. Records of "
                    "another version or without their text are counted and skipped.")
    shadow.add_argument("--candidate", required=True, metavar="FOLDER_OR_VERSION",
                        help="a served folder (artifacts/export/onnx, a gate release), registry:STAGE, or a "
                             "registered version (v0.2.0, fetched through DVC)")
    shadow.add_argument("--log", default=None, metavar="DIR",
                        help="the prediction log folder (default: serve.log_dir)")
    shadow.add_argument("--prod-version", default=None, metavar="VERSION",
                        help="replay only the texts this version answered (default: the one version whose texts "
                             "the window holds; an error when there are several)")
    length = shadow.add_mutually_exclusive_group()
    length.add_argument("--window-minutes", type=float, default=None, metavar="M",
                        help="window length (default: monitor.window_minutes)")
    length.add_argument("--since", default=None, metavar="TIME",
                        help="window start instead of a length, ISO 8601 (UTC without an offset)")
    shadow.add_argument("--end", default=None, metavar="TIME",
                        help="window end, ISO 8601 (UTC without an offset; default: now)")
    shadow.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a table")
    shadow.add_argument("--out", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    shadow.add_argument("--project", default=".", help="project root (default: current folder)")
    shadow.set_defaults(func=cmd_shadow)
