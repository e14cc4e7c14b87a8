"""CI promotion: the workflow only sets up and calls `tunegate ci pr` / `tunegate ci main`, whose behaviour is
specified here: the PR check is red on REJECT, the report reaches the job summary and the PR, main promotes
only a PROMOTE and pushes its tags, and a stale dvc.lock stops main."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from flows.ci import post_pr_comment, pr_exit_code
from tasks.core.dvc_data import DataUnavailable, restore_default_data
from tasks.registry.github import COMMENT_MARKER, annotation, append_step_summary, pr_number
from tests.conftest import BIN, REPO, run

WORKFLOW = REPO / ".github" / "workflows" / "promote.yml"


@pytest.fixture
def github_api():
    """A local stand-in for the GitHub REST API that records every request and answers `reply` (201 by default)."""
    api = SimpleNamespace(requests=[], reply=201)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            api.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                 "json": json.loads(body)})
            payload = json.dumps({"html_url": f"https://github.invalid{self.path}/1"}).encode()
            self.send_response(api.reply)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next poll: a short poll ends each test at once, not half a second on.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield api
    server.shutdown()
    server.server_close()


def pull_request_env(tmp_path: Path, api_url: str, number: int = 7) -> dict[str, str]:
    """What GitHub Actions sets for a pull_request job (the event payload written to a file)."""
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"action": "synchronize", "number": number, "pull_request": {"number": number}}))
    return {"GITHUB_TOKEN": "t0ken", "GITHUB_REPOSITORY": "octo/films", "GITHUB_EVENT_PATH": str(event),
            "GITHUB_API_URL": api_url, "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}


# --- the workflow file ----------------------------------------------------------------------------------------


def test_workflow_gates_pull_requests_and_promotes_main_in_the_production_environment():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request", "push"} and triggers["push"]["branches"] == ["main"]
    gate, promote = workflow["jobs"]["gate"], workflow["jobs"]["promote"]
    assert "pull_request" in gate["if"] and "push" in promote["if"] and "refs/heads/main" in promote["if"]
    assert promote["environment"] == "production"
    assert promote["permissions"]["contents"] == "write" and gate["permissions"]["pull-requests"] == "write"
    for job, command in ((gate, ".venv/bin/tunegate ci pr"), (promote, ".venv/bin/tunegate ci main")):
        checkout = job["steps"][0]
        assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0
        assert {"run": "make setup"} in job["steps"]
        runs = [step["run"] for step in job["steps"] if "run" in step]
        # The job's one decision-making step is the script, last; everything before it is set-up.
        assert runs[-1].startswith(command) and not any("tunegate ci" in r for r in runs[:-1])
    assert any("git config user.name" in step.get("run", "") for step in promote["steps"])
    assert gate["steps"][-1]["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert (REPO / ".github" / "workflows" / "ci.yml").is_file()  # the test run stays its own workflow


# --- GitHub plumbing ------------------------------------------------------------------------------------------


def test_pr_comment_posts_the_report_on_the_pull_request(github_api, tmp_path):
    env = pull_request_env(tmp_path, github_api.url, number=42)
    said = post_pr_comment("# Gate: PROMOTE\n\nWhy: first run.", env)
    (request,) = github_api.requests
    assert request["path"] == "/repos/octo/films/issues/42/comments"
    assert request["authorization"] == "Bearer t0ken"
    assert request["json"]["body"].startswith(COMMENT_MARKER) and "# Gate: PROMOTE" in request["json"]["body"]
    assert said.startswith("posted the gate report on pull request #42")


def test_pr_comment_github_refuses_is_a_warning_not_a_failure(github_api, tmp_path):
    github_api.reply = 403  # a pull request from a fork: the token is read-only
    said = post_pr_comment("# Gate: REJECT", pull_request_env(tmp_path, github_api.url))
    assert "not posted" in said and "403" in said and "fork" in said
    unreachable = post_pr_comment("# Gate: REJECT", pull_request_env(tmp_path, "http://127.0.0.1:9"))
    assert "not posted" in unreachable


def test_pr_comment_needs_a_token_a_repository_and_a_pull_request(github_api, tmp_path):
    env = pull_request_env(tmp_path, github_api.url)
    assert "GITHUB_TOKEN" in post_pr_comment("report", {**env, "GITHUB_TOKEN": ""})
    Path(env["GITHUB_EVENT_PATH"]).write_text(json.dumps({"ref": "refs/heads/main"}))  # a push event
    assert pr_number(env) is None and "pull request number" in post_pr_comment("report", env)
    assert github_api.requests == []


def test_step_summary_is_appended_to_and_only_when_github_names_one(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    append_step_summary("# Gate: PROMOTE", {"GITHUB_STEP_SUMMARY": str(summary)})
    assert summary.read_text().startswith("earlier step\n") and "# Gate: PROMOTE" in summary.read_text()
    assert append_step_summary("# Gate: PROMOTE", {}) is None


def test_exit_code_is_red_only_for_reject_and_annotations_only_on_github():
    assert [pr_exit_code(d) for d in ("PROMOTE", "INCONCLUSIVE", "REJECT")] == [0, 0, 1]
    assert pr_exit_code("REJECT", registered=True) == 0  # merging it promotes nothing (e.g. main after a rollback)
    assert annotation("warning", "two\nlines 100%", {}) is None
    assert annotation("warning", "two\nlines 100%", {"GITHUB_ACTIONS": "true"}) == \
        "::warning title=tunegate::two%0Alines 100%25"


@pytest.mark.e2e  # three `dvc` commands on a real DVC project (3 s or more): out of the quick loop
def test_missing_data_is_restored_only_when_it_is_the_packaged_default(tmp_path):
    from tasks.core.data import materialise_default_data
    from tasks.core.dvc_data import data_differences

    root = tmp_path / "clone"
    (root / "data").mkdir(parents=True)
    run([str(BIN / "dvc"), "init", "-q", "--no-scm"], root)
    (root / "data" / "own.csv").write_text("text,label\nmine,1\n")
    run([str(BIN / "dvc"), "add", "-q", "data"], root)
    shutil.rmtree(root / "data")  # a fresh clone without a DVC remote: data.dvc, no data
    with pytest.raises(DataUnavailable, match="not the packaged default data"):
        restore_default_data(root)
    assert not (root / "data").exists()  # nothing left that could pass for the user's data

    materialise_default_data(root / "data")
    run([str(BIN / "dvc"), "add", "-q", "data"], root)
    shutil.rmtree(root / "data")
    assert restore_default_data(root) and data_differences(root) == []
    assert not restore_default_data(root)  # present: left alone


# --- both jobs on a real project --------------------------------------------------------------------------


def remote_tags(root: Path) -> set[str]:
    """The tags the `origin` remote holds (annotated tags once, not also as their peeled `^{}` refs)."""
    listed = run(["git", "ls-remote", "--tags", "--refs", "origin"], root).stdout.split()
    return {ref.removeprefix("refs/tags/") for ref in listed if ref.startswith("refs/tags/")}


@pytest.mark.slow
def test_ci_gates_a_pull_request_promotes_on_main_once_and_never_a_reject(registry_project, prefect_api, github_api,
                                                                          tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from tasks.core.config import write_overrides

    root = registry_project
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], tmp_path)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], root)
    run(["git", "push", "-q", "origin", "HEAD"], root)
    env = pull_request_env(tmp_path, github_api.url)
    for name, value in {**env, "PREFECT_API_URL": PREFECT_API_URL.value()}.items():  # one Prefect API for all
        monkeypatch.setenv(name, value)
    summary = Path(env["GITHUB_STEP_SUMMARY"])
    tunegate = str(BIN / "tunegate")

    # The pull request with the first model: PROMOTE (first run); the report in the summary and on the PR.
    pr = run([tunegate, "ci", "pr"], root, check=False)
    assert pr.returncode == 0, pr.stdout + pr.stderr
    assert "## tunegate ci pr: PROMOTE" in summary.read_text() and "# Gate: PROMOTE" in summary.read_text()
    (comment,) = github_api.requests
    assert comment["path"] == "/repos/octo/films/issues/7/comments" and "# Gate: PROMOTE" in comment["json"]["body"]

    # Merged: main promotes it and pushes both tags.
    main = run([tunegate, "ci", "main"], root, check=False)
    assert main.returncode == 0, main.stdout + main.stderr
    assert "promoted v0.1.0" in main.stdout
    first_tags = {"tunegate@v0.1.0", "tunegate#prod#1"}
    assert remote_tags(root) == first_tags
    assert "## tunegate ci main: promoted v0.1.0 to prod" in summary.read_text()

    # A merge that leaves the model alone: the gate re-judges it against prod (itself); nothing new to promote.
    (root / "NOTES.md").write_text("docs only\n")
    run(["git", "add", "NOTES.md"], root)
    run(["git", "commit", "-q", "-m", "docs"], root)
    docs_pr = run([tunegate, "ci", "pr"], root, check=False)
    assert docs_pr.returncode == 0 and "prod already holds this model (v0.1.0): merging this promotes nothing" in \
        docs_pr.stdout
    run(["git", "checkout", "-q", "--", "dvc.lock"], root)  # the main job starts from a fresh checkout
    same = run([tunegate, "ci", "main"], root, check=False)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "prod already holds this model (v0.1.0)" in same.stderr and remote_tags(root) == first_tags

    # A worse model merged without its dvc.lock: main's run retrains, changes dvc.lock, and is refused.
    write_overrides(root / "params.yaml", ["prepare.max_train_rows=100"])  # 100 rows: chance accuracy
    run(["git", "commit", "-q", "-am", "fewer training rows"], root)
    stale = run([tunegate, "ci", "main"], root, check=False)
    assert stale.returncode == 1 and "dvc.lock" in stale.stderr and "tunegate run" in stale.stderr
    assert "Nothing promoted" in stale.stderr and remote_tags(root) == first_tags

    # Done as the message says (run, commit dvc.lock): the PR check is red, and main promotes nothing.
    run([tunegate, "run"], root)
    run(["git", "commit", "-q", "-am", "dvc.lock of the worse model"], root)
    rejected = run([tunegate, "ci", "pr"], root, check=False)
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "REJECT" in rejected.stderr and "# Gate: REJECT" in github_api.requests[-1]["json"]["body"]
    main = run([tunegate, "ci", "main"], root, check=False)
    assert main.returncode == 0, main.stdout + main.stderr
    assert "REJECT" in main.stderr and "nothing promoted" in main.stderr
    assert remote_tags(root) == first_tags and set(run(["git", "tag"], root).stdout.split()) == first_tags
