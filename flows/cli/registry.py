"""The commands that read what the registry and its releases hold: `verify` (a release's parity certificate on this
host), `history` (every registration and stage move), `models` (one row per version) and `card` (a release's model
card)."""

from __future__ import annotations

import argparse
import sys
from datetime import timezone
from pathlib import Path

from rich import box
from rich.table import Table

from flows.terminal import console


def verify_folder_of(root: Path, model: str, gate_release: Path) -> tuple[Path, str | None]:
    """The folder `tunegate verify` checks without FOLDER: serve.model's (a registry stage's release is fetched);
    the gate's release instead when serve.model's folder has no certificate and the release holds the same model
    file. Returns it with a note saying why when it is the release."""
    from tasks.core.io import file_sha256, read_json
    from tasks.runtime.files import PARITY_FILE, RELEASE_FILE
    from tasks.serving.source import served_model_file, source_for

    folder = source_for(model, root).resolve().folder
    if (folder / PARITY_FILE).is_file() or not (gate_release / PARITY_FILE).is_file():
        return folder, None
    released = gate_release / RELEASE_FILE
    if released.is_file() and file_sha256(served_model_file(folder)) == read_json(released).get("sha256"):
        return gate_release, (f"serve.model {model} carries no certificate; checking the gate's release "
                              f"{gate_release.relative_to(root)}, which holds the same model file")
    return folder, None


def cmd_verify(args: argparse.Namespace) -> int:
    # onnxruntime and tokenizers only (gto and dvc when serve.model is registry:STAGE): no torch, no transformers.
    from tasks.runtime.parity import WIDTH, summary_lines, verify_folder
    from tasks.runtime.settings import load_serve_settings

    root = Path(args.project).resolve()
    params = root / "params.yaml"
    settings = load_serve_settings(params if params.is_file() else None, {})  # serve's thresholds, as serve reads them
    if args.folder is not None:
        folder = Path(args.folder)
    else:
        folder, note = verify_folder_of(root, settings.model, root / "artifacts" / "gate" / "release")
        if note:
            import textwrap

            console.print(textwrap.fill(note, width=WIDTH), markup=False, highlight=False, soft_wrap=True)
    report = verify_folder(folder, settings.min_parity_agreement)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0 if report.passed else 1


def print_models(root: Path) -> None:
    from tasks.registry import tags
    from tasks.registry.history import model_rows

    table = Table(title=f"{tags.ARTIFACT} versions", box=box.SIMPLE_HEAD)
    for column in ("version", "commit", "registered (UTC)", "by", "gate", "stages"):  # 80 columns: `by` wraps
        table.add_column(column, no_wrap=column not in ("by", "stages"), overflow="fold")
    for row in model_rows(tags.versions(root), tags.stage_moves(root)):
        registered = row.registered.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")  # `history` has seconds
        table.add_row(row.version, row.commit, registered, row.by, row.gate, ", ".join(row.stages))
    console.print(table)


def cmd_models(args: argparse.Namespace) -> int:
    print_models(Path(args.project).resolve())
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from tasks.registry import tags
    from tasks.registry.history import describe_holder, events, iso, parse_instant

    root = Path(args.project).resolve()
    if args.short:
        print_models(root)
        return 0
    if args.at is not None:
        at, stage = parse_instant(args.at), args.stage or tags.PROD
        console.print(describe_holder(tags.in_stage(root, stage, at), stage, at),
                      soft_wrap=True, markup=False, highlight=False)
        return 0
    # Within 80 columns: the event names its version ("registered v0.1.0", "prod <- v0.1.0") and the gate's verdict
    # is `tunegate models`'s; --wide gives each a column of its own.
    table = Table(title=f"{tags.ARTIFACT} registry history", box=box.SIMPLE_HEAD)
    columns = ("when (UTC)", "event", "version", "who", "why", "gate") if args.wide else (
        "when (UTC)", "event", "who", "why")
    for column in columns:
        table.add_column(column, no_wrap=column in ("when (UTC)", "event", "version", "gate"), overflow="fold",
                         ratio=2 if column == "why" else None)
    for e in events(tags.versions(root), tags.stage_moves(root, args.stage)):
        if args.wide:
            table.add_row(iso(e.at), e.event, e.version, e.who, e.why, e.gate)
        else:
            event = f"{e.event} {e.version}" if e.event == "registered" else e.event
            table.add_row(iso(e.at), event, e.who, e.why)
    console.print(table)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from tasks.core.paths import ArtifactPaths
    from tasks.registry.fetch import release_card

    # As written: Markdown with YAML front matter, for a file or a pager (rich would wrap and restyle it).
    sys.stdout.write(release_card(ArtifactPaths(Path(args.project).resolve()), args.version))
    return 0


def add_commands(sub: argparse._SubParsersAction, repository: argparse.ArgumentParser) -> None:
    """verify, history, models, card; `repository` is the --project parent (a git repository)."""
    verify = sub.add_parser("verify", help="re-score a release's parity certificate on this host; exit 1 unless it "
                                           "answers as the judging host did",
                            description="The gate writes a parity certificate (parity.json) into its release: test "
                                        "texts (short and long) with the probabilities the judging host computed, "
                                        "one text per model call, that host's CPU features and the tolerance "
                                        "(gate.parity_max_prob_delta). verify scores the same texts the same way "
                                        "here and passes when labels agree on at least serve.min_parity_agreement "
                                        "of them and no probability moved by more than the tolerance; it prints "
                                        "both hosts' CPU features and the first differing texts. `tunegate serve` "
                                        "runs the same check at start and at every reload, `tunegate rollback` "
                                        "before it moves the stage. Exits 0 on a pass, 1 on a failure or a folder "
                                        "without a certificate.")
    verify.add_argument("folder", nargs="?", default=None, metavar="FOLDER",
                        help="a release folder (default: serve.model's folder, or the registry stage's release it "
                             "names; artifacts/gate/release when serve.model's folder has no certificate and the "
                             "release holds the same model file)")
    verify.add_argument("--project", default=".", help="project root: its params.yaml's serve section gives "
                                                      "serve.min_parity_agreement (default: current folder)")
    verify.set_defaults(func=cmd_verify)

    history = sub.add_parser("history", parents=[repository],
                             help="every registration and stage move; --at TIME: what was in prod then",
                             description="Print every registered version and stage move, oldest first: when (UTC), "
                                         "event, version, who (the tag's tagger), why (the reason recorded, else "
                                         "the tag message's first line) and the gate's verdict. --at TIME answers "
                                         "which version the stage held at that instant instead.")
    history.add_argument("--at", metavar="TIME",
                         help="ISO 8601 time, e.g. 2026-11-29T13:05:00Z or 2026-11-29T14:05+01:00; no offset means "
                              "UTC; a date means its 00:00 UTC; a future time gives the current version")
    history.add_argument("--stage", help="only this stage's moves (with --at: the stage asked about, default prod)")
    history.add_argument("--short", action="store_true", help="one row per version instead (as `tunegate models`)")
    history.add_argument("--wide", action="store_true",
                         help="the version and the gate's verdict in columns of their own (wider than 80 columns)")
    history.set_defaults(func=cmd_history)

    models = sub.add_parser("models", parents=[repository], help="registered versions and the stages that hold them",
                            description="One row per registered version: commit, when and by whom it was "
                                        "registered, the gate's verdict, and the stages at that version now.")
    models.set_defaults(func=cmd_models)

    card = sub.add_parser("card", parents=[repository], help="print the model card (README.md) of a version's release",
                          description="Print the model card the gate writes into its release (README.md: Hugging "
                                      "Face metadata with the test metrics and their intervals, the data version and "
                                      "the base model; then the model, its recipe, the reading rule, compression "
                                      "costs, slices, the verdict and its limits). VERSION: a registered version's "
                                      "release, fetched through DVC at its commit as rollback fetches it; without "
                                      "it, artifacts/gate/release. Exits 1 for an unknown version (naming the "
                                      "registered ones) or a release without a card.")
    card.add_argument("version", nargs="?", default=None, metavar="VERSION",
                      help="a registered version, e.g. v0.1.0 (default: the gate's release, artifacts/gate/release)")
    card.set_defaults(func=cmd_card)
