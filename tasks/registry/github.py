"""GitHub Actions for CI promotion: the job summary, workflow annotations and the pull request comment that carry
the gate's report. Pure functions of the environment GitHub sets (and one HTTP call); `tunegate ci` decides what
to post and when (flows/ci.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

GITHUB_API = "https://api.github.com"  # GitHub Actions sets GITHUB_API_URL (GitHub Enterprise: its own)
COMMENT_LIMIT = 65_000  # GitHub refuses issue comments above 65,536 characters
COMMENT_MARKER = "<!-- tunegate ci pr: gate report -->"  # finds our comments among the PR's


def annotation(level: str, message: str, env: Mapping[str, str]) -> str | None:
    """A workflow command (`::warning::...`) that GitHub shows on the run's page; None outside GitHub Actions."""
    if env.get("GITHUB_ACTIONS") != "true":
        return None
    # Workflow-command escaping: a raw newline would end the command.
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{level} title=tunegate::{escaped}"


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


def post_comment(markdown: str, env: Mapping[str, str], timeout_s: float = 20.0) -> tuple[str, bool]:
    """Post the report on the pull request when GITHUB_TOKEN, GITHUB_REPOSITORY and the PR number are known.

    Returns what happened in one line, and whether GitHub refused or could not be reached (for the caller to warn
    about). Never raises for GitHub's sake: a comment that cannot be posted (a fork's read-only token, an outage)
    must not fail the gate."""
    token, repository, number = env.get("GITHUB_TOKEN"), env.get("GITHUB_REPOSITORY"), pr_number(env)
    missing = [name for name, value in (("GITHUB_TOKEN", token), ("GITHUB_REPOSITORY", repository),
                                        ("the pull request number (GITHUB_EVENT_PATH)", number)) if not value]
    if missing:
        return f"no PR comment: {', '.join(missing)} not set", False
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
        return message, True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"the PR comment was not posted: {url}: {exc}", True
    return f"posted the gate report on pull request #{number}" + (
        f": {posted['html_url']}" if isinstance(posted, dict) and posted.get("html_url") else ""), False
