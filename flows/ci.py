"""`tunegate ci pr` and `tunegate ci main`: what the promotion workflow's two jobs run
(.github/workflows/promote.yml), as one script a person can run locally too. The YAML only sets up;
every decision (exit codes, what is promoted, what is posted) is made and tested here."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import dirty_files, git_output
from tasks.registry.github import annotation, append_step_summary, post_comment

# The gate's verdicts (tasks.judging.compare holds the same strings; importing it here would load numpy
# and scipy before the pipeline needs them).
PROMOTE, REJECT, INCONCLUSIVE = "PROMOTE", "REJECT", "INCONCLUSIVE"
DEFAULT_REMOTE = "origin"

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class CiError(TunegateError):
    """A CI job cannot go on: the run changed tracked files, the input data is nowhere, promotion failed."""


def say(level: str, message: str, env: Mapping[str, str] | None = None) -> None:
    """A warning or error line for the job log (and an annotation on GitHub)."""
    env = os.environ if env is None else env
    style = {"warning": "bold yellow", "error": "bold red", "notice": "bold"}[level]
    errors.print(f"{level}: {message}", style=style, markup=False, highlight=False)
    if (line := annotation(level, message, env)) is not None:
        print(line, flush=True)


def post_pr_comment(markdown: str, env: Mapping[str, str], timeout_s: float = 20.0) -> str:
    """Post the report on the pull request (tasks.registry.github); a comment GitHub refused is a warning in the log,
    never a failure: the job summary carries the report anyway. Returns what happened in one line."""
    message, refused = post_comment(markdown, env, timeout_s)
    if refused:
        say("warning", message, env)
    return message


# --- the project: git, DVC, the pipeline ------------------------------------------------------------------


def head_commit(root: Path) -> str:
    return (git_output(root, "rev-parse", "HEAD") or "unknown").strip()


def prepare_workspace(root: Path, env: Mapping[str, str]) -> None:
    """dvc pull, warning when it cannot (the flow rebuilds stage outputs); the packaged data when that is what
    data.dvc records and the remote lacks it."""
    from tasks.core.dvc_data import DataUnavailable, dvc_pull, restore_default_data

    why = dvc_pull(root)
    if why is not None:
        say("warning", f"dvc pull failed ({why}): the pipeline rebuilds the stage outputs it could not fetch "
                       "(retraining: slower, and the model's hashes must then match dvc.lock bit for bit)", env)
    try:
        restored = restore_default_data(root)
    except DataUnavailable as exc:
        raise CiError(str(exc)) from exc
    if restored:
        say("notice", "data/ restored from the packaged default data (`tunegate data default`): it is what "
                      "data.dvc records", env)


def run_pipeline(root: Path, debug: bool) -> int:
    """The Prefect flow through `tunegate run`'s own entry (same lock, server and summary); its exit code."""
    from flows.run_command import cmd_run

    return cmd_run(argparse.Namespace(project=str(root), set=None, debug=debug))


def gate_verdict(paths: ArtifactPaths) -> tuple[dict, str]:
    """(decision.json, report.md) of the gate run that just finished."""
    from tasks.core.io import read_json

    report = paths.decision.with_name("report.md")
    return read_json(paths.decision), report.read_text(encoding="utf-8") if report.is_file() else ""


def _already_registered(root: Path, decision: dict) -> str | None:
    """Why there is nothing new to promote, or None (imported late: the registry loads numpy)."""
    from tasks.registry.promote import already_registered

    return already_registered(root, decision)


def pr_exit_code(decision: str, registered: bool = False) -> int:
    """A pull request's check is red only when the gate REJECTs a model merging would promote (INCONCLUSIVE is not a
    failure: it is said loudly; a registered version's model, e.g. main's after a rollback, is never promoted)."""
    return 1 if decision == REJECT and not registered else 0


def headline(job: str, root: Path, outcome: str) -> str:
    return f"## tunegate ci {job}: {outcome}\n\nCommit `{head_commit(root)[:12]}`.\n"


def stale_lock_advice(changed: list[str]) -> str:
    return (f"this run changed tracked files ({', '.join(changed)}): the committed dvc.lock is not what this code "
            "reproduces, so the gate did not judge what the commit records. On the branch, run `tunegate run`, "
            "commit dvc.lock (and `dvc push` its outputs), and merge that")


# --- the two jobs -----------------------------------------------------------------------------------------


def ci_pr(root: Path, debug: bool = False, env: Mapping[str, str] | None = None) -> int:
    """The pull-request job: pull, run the flow (gated against prod), publish the report; 1 when it REJECTs."""
    env = os.environ if env is None else env
    paths = ArtifactPaths(root)
    prepare_workspace(root, env)
    code = run_pipeline(root, debug)
    if code != 0:
        append_step_summary(headline("pr", root, "the pipeline failed") +
                            "\nNo gate verdict: the stage that failed and why are in the job log.", env)
        return code
    verdict, report = gate_verdict(paths)
    decision, why = verdict["decision"], verdict.get("why", "")
    changed = dirty_files(root)
    note = ""
    if known := _already_registered(root, verdict):
        console.print(f"{known}: merging this promotes nothing", markup=False, highlight=False)
        note = f"\n> {known}: merging this promotes nothing.\n"
    elif changed:
        advice = stale_lock_advice(changed)
        say("warning", f"{advice}; `tunegate ci main` will refuse to promote until then", env)
        note = f"\n> **Warning**: {advice}; `tunegate ci main` will refuse to promote until then.\n"
    markdown = headline("pr", root, decision) + note + "\n" + report
    if append_step_summary(markdown, env):
        console.print("gate report appended to the job summary")
    console.print(post_pr_comment(markdown, env), markup=False, highlight=False)
    if known:
        console.print(f"gate: {decision} ({why}); informational: this pull request leaves the model alone",
                      markup=False, highlight=False)
    elif decision == INCONCLUSIVE:
        say("warning", f"the gate is INCONCLUSIVE: {why}. The check stays green, but `tunegate ci main` will not "
                       "promote this model: more test rows, or a decision by hand (`tunegate promote --force "
                       "--reason ...`).", env)
    elif decision == REJECT:
        say("error", f"the gate REJECTs this model: {why}", env)
    else:
        console.print(f"[bold green]gate: {decision}[/] ({escape(why)})")
    return pr_exit_code(decision, registered=known is not None)


def ci_main(root: Path, remote: str = DEFAULT_REMOTE, debug: bool = False,
            env: Mapping[str, str] | None = None) -> int:
    """The job on main after a merge: pull, run the flow; a PROMOTE is promoted and its tags pushed to `remote`."""
    env = os.environ if env is None else env
    paths = ArtifactPaths(root)
    # Checked first: a dirty checkout would cost a whole pipeline run before promote refused it.
    if dirty := dirty_files(root):
        raise CiError(f"tracked files differ from the checked-out commit ({', '.join(dirty)}): `tunegate ci main` "
                      "promotes what a commit records; commit or restore them first")
    prepare_workspace(root, env)
    code = run_pipeline(root, debug)
    if code != 0:
        append_step_summary(headline("main", root, "the pipeline failed") + "\nNothing promoted.", env)
        return code
    verdict, report = gate_verdict(paths)
    decision, why = verdict["decision"], verdict.get("why", "")
    # Before the dvc.lock check: re-judging a registered model against prod rewrites the gate's entry.
    if known := _already_registered(root, verdict):
        say("notice", f"{known}: nothing promoted (gate: {decision})", env)
        append_step_summary(headline("main", root, "nothing new to promote") + f"\n{known}.\n\n" + report, env)
        return 0
    if changed := dirty_files(root):
        advice = stale_lock_advice(changed)
        append_step_summary(headline("main", root, f"{decision}, not promoted") + f"\n{advice}.\n\n" + report, env)
        raise CiError(f"{advice}. Nothing promoted.")
    if decision != PROMOTE:
        say("notice" if decision == REJECT else "warning", f"gate: {decision} ({why}): nothing promoted", env)
        append_step_summary(headline("main", root, f"{decision}, nothing promoted") + "\n" + report, env)
        return 0
    from tasks.registry.promote import promote

    try:
        done = promote(root, push=remote)
    except TunegateError as exc:  # a refusal, or a failed push: its message says how to finish; the job fails
        append_step_summary(headline("main", root, f"{decision}, promotion failed") + f"\n{exc}\n\n" + report, env)
        raise
    for note in done.notes:
        console.print(f"  note: {note}", markup=False, highlight=False)
    tags = ", ".join(done.tags)
    console.print(f"[bold green]promoted[/] {escape(done.version)} (commit {done.commit[:12]}) to {done.stage}; "
                  f"tags {escape(tags)} pushed to {escape(remote)}", highlight=False)
    append_step_summary(headline("main", root, f"promoted {done.version} to {done.stage}") +
                        f"\nTags pushed to `{remote}`: {tags}.\n\n" + report, env)
    return 0
