"""`tunegate ci pr` and `tunegate ci main`: what the promotion workflow's two jobs run
(.github/workflows/promote.yml), as one script a person can run locally too. The YAML only sets up;
every decision (exit codes, what is promoted, what is posted) is made and tested here."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths

# The gate's verdicts (tasks.judging.compare holds the same strings; importing it here would load numpy
# and scipy before the pipeline needs them).
PROMOTE, REJECT, INCONCLUSIVE = "PROMOTE", "REJECT", "INCONCLUSIVE"
DEFAULT_REMOTE = "origin"
GITHUB_API = "https://api.github.com"  # GitHub Actions sets GITHUB_API_URL (GitHub Enterprise: its own)
COMMENT_LIMIT = 65_000  # GitHub refuses issue comments above 65,536 characters
COMMENT_MARKER = "<!-- tunegate ci pr: gate report -->"  # finds our comments among the PR's

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class CiError(TunegateError):
    """A CI job cannot go on: the run changed tracked files, the input data is nowhere, promotion failed."""


# --- GitHub Actions plumbing: pure functions of the environment -------------------------------------------


def annotation(level: str, message: str, env: Mapping[str, str]) -> str | None:
    """A workflow command (`::warning::...`) that GitHub shows on the run's page; None outside GitHub Actions."""
    if env.get("GITHUB_ACTIONS") != "true":
        return None
    # Workflow-command escaping: a raw newline would end the command.
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{level} title=tunegate::{escaped}"


def say(level: str, message: str, env: Mapping[str, str] | None = None) -> None:
    """A warning or error line for the job log (and an annotation on GitHub)."""
    env = os.environ if env is None else env
    style = {"warning": "bold yellow", "error": "bold red", "notice": "bold"}[level]
    errors.print(f"{level}: {message}", style=style, markup=False, highlight=False)
    if (line := annotation(level, message, env)) is not None:
        print(line, flush=True)


def pr_number(env: Mapping[str, str]) -> int | None:
    """The pull request's number from the event payload GitHub writes to GITHUB_EVENT_PATH; None without one."""
    event_path = env.get("GITHUB_EVENT_PATH")
    if not event_path:
        return None
    try:
        event = json.loads(Path(event_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    number = (event.get("pull_request") or {}).get("number") if isinstance(event, dict) else None
    return number if isinstance(number, int) else None


def append_step_summary(markdown: str, env: Mapping[str, str]) -> Path | None:
    """Append to the job summary file (GITHUB_STEP_SUMMARY) when there is one; returns it.

    Appended, not replaced: the file belongs to the runner and earlier steps may have written to it."""
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with Path(target).open("a", encoding="utf-8") as handle:
        handle.write(markdown.rstrip("\n") + "\n\n")
    return Path(target)


def comment_body(markdown: str) -> str:
    """The PR comment: our marker, then the report, cut to what GitHub accepts."""
    body = f"{COMMENT_MARKER}\n{markdown}"
    if len(body) <= COMMENT_LIMIT:
        return body
    return body[:COMMENT_LIMIT - 200] + "\n\n… (cut: the whole report is in the job summary)\n"


def post_pr_comment(markdown: str, env: Mapping[str, str], timeout_s: float = 20.0) -> str:
    """Post the report on the pull request when GITHUB_TOKEN, GITHUB_REPOSITORY and the PR number are known.

    Returns what happened in one line. Never raises for GitHub's sake: a comment that cannot be posted (a fork's
    read-only token, an outage) must not fail the gate; the job summary carries the report anyway."""
    token, repository, number = env.get("GITHUB_TOKEN"), env.get("GITHUB_REPOSITORY"), pr_number(env)
    missing = [name for name, value in (("GITHUB_TOKEN", token), ("GITHUB_REPOSITORY", repository),
                                        ("the pull request number (GITHUB_EVENT_PATH)", number)) if not value]
    if missing:
        return f"no PR comment: {', '.join(missing)} not set"
    url = f"{env.get('GITHUB_API_URL') or GITHUB_API}".rstrip("/") + f"/repos/{repository}/issues/{number}/comments"
    request = urllib.request.Request(
        url, method="POST", data=json.dumps({"body": comment_body(markdown)}).encode("utf-8"),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                 "X-GitHub-Api-Version": "2022-11-28", "Content-Type": "application/json",
                 "User-Agent": "tunegate-ci"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            posted = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        message = f"the PR comment was not posted: {url} answered {exc.code} {exc.reason}"
        if exc.code in (403, 404):
            message += " (a pull request from a fork gets a read-only token; the job summary has the report)"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        message = f"the PR comment was not posted: {url}: {exc}"
    else:
        return f"posted the gate report on pull request #{number}" + (
            f": {posted['html_url']}" if isinstance(posted, dict) and posted.get("html_url") else "")
    say("warning", message, env)
    return message


# --- the project: git, DVC, the pipeline ------------------------------------------------------------------


def _dirty_files(root: Path) -> list[str]:
    """Tracked files that differ from HEAD (promote's check, imported late: it loads numpy)."""
    from tasks.registry.promote import dirty_files

    return dirty_files(root)


def head_commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def dvc_pull(root: Path) -> str | None:
    """`dvc pull`: the data and every stage output dvc.lock records, from the DVC remote. None when it worked,
    else why not (the last lines DVC printed): a warning, since the pipeline rebuilds what is missing."""
    # The venv's own DVC (python -m dvc), whatever PATH holds.
    done = subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=root, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or f"dvc pull exited {done.returncode}"


def tracked_data(root: Path, dvc_file: str = "data.dvc") -> list[str]:
    """The paths `dvc_file` tracks ([] without one)."""
    from dvc.utils.serialize import load_yaml

    if not (root / dvc_file).is_file():
        return []
    return [out["path"] for out in (load_yaml(str(root / dvc_file)) or {}).get("outs", [])]


def restore_default_data(root: Path, dvc_file: str = "data.dvc") -> bool:
    """When the data data.dvc tracks is absent (not in the DVC remote, or no remote) and it is exactly the packaged
    default data (`tunegate data default`), put that copy in place: True when it did. A project with data of its
    own needs a DVC remote (there is no other copy of it); raises CiError when the default is not that data."""
    from tasks.core.data import materialise_default_data
    from tasks.core.dvc_data import data_differences

    outs = tracked_data(root, dvc_file)
    if len(outs) != 1 or (root / outs[0]).exists():
        return False
    folder = root / outs[0]
    materialise_default_data(folder)
    differences = data_differences(root, dvc_file)
    if differences:
        shutil.rmtree(folder)  # not the data data.dvc records: leave nothing that looks like it
        raise CiError(f"{outs[0]}/ is not in the DVC remote (dvc pull could not fetch it) and is not the packaged "
                      f"default data ({'; '.join(differences)}): the pipeline cannot run without it. Configure the "
                      "DVC remote for CI (README, \"CI promotion\") and `dvc push` the data to it.")
    return True


def prepare_workspace(root: Path, env: Mapping[str, str]) -> None:
    """dvc pull, warning when it cannot (the flow rebuilds stage outputs); the packaged data when that is what
    data.dvc records and the remote lacks it."""
    why = dvc_pull(root)
    if why is not None:
        say("warning", f"dvc pull failed ({why}): the pipeline rebuilds the stage outputs it could not fetch "
                       "(retraining: slower, and the model's hashes must then match dvc.lock bit for bit)", env)
    if restore_default_data(root):
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


def already_registered(root: Path, decision: dict) -> str | None:
    """Why there is nothing new to promote (the model the gate judged is a registered version's), or None.

    A merge that leaves the model alone (docs, a refactor) reproduces the same bytes; after a promotion the gate
    re-judges them against prod (itself), which changes dvc.lock's gate entry. That is no reason to fail, and
    no reason to register the same bytes again, nor to undo a rollback by re-promoting what was rolled back."""
    from tasks.registry.tags import PROD, in_stage

    sha256 = (decision.get("candidate") or {}).get("sha256")
    from tasks.registry.tags import version_of_model

    registered = version_of_model(root, sha256) if sha256 else None
    version = registered.version if registered else None
    if version is None:
        return None
    prod = in_stage(root, PROD)
    if prod is not None and prod.version == version:
        return f"prod already holds this model ({version})"
    return (f"this model is already registered as {version}, but prod holds {prod.version if prod else 'nothing'} "
            f"(rolled back?): CI promotes new models only; `tunegate rollback --to {version}` moves prod to it")


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
    changed = _dirty_files(root)
    note = ""
    if known := already_registered(root, verdict):
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
    if dirty := _dirty_files(root):
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
    if known := already_registered(root, verdict):
        say("notice", f"{known}: nothing promoted (gate: {decision})", env)
        append_step_summary(headline("main", root, "nothing new to promote") + f"\n{known}.\n\n" + report, env)
        return 0
    if changed := _dirty_files(root):
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
