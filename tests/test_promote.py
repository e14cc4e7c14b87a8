"""tunegate promote: only what the gate approved (or an override with a recorded reason), from a clean tree that
dvc.lock records, judged against the current prod, bytes in the DVC remote before any tag, one move at a time."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tasks.registry import tags
from tasks.registry.promote import (PromotionRefused, RegistryBusy, artifact_mismatches, card_field,
                                    decision_refusal, dirty_files, promotion_fields, registry_lock, rerun_command,
                                    stale_comparison, stale_stages)
from tests.conftest import BIN, run

SHA = "a" * 64


def decision(verdict: str = "PROMOTE", champion: dict | None = None) -> dict:
    """A decision.json as the gate writes it (only the keys promote reads)."""
    return {"decision": verdict, "why": "every check holds", "candidate": {"sha256": SHA, "train_run": "run1"},
            "comparison": None if champion is None else {"champion": champion}}


# --- the gate's verdict ------------------------------------------------------------------------------------------

def test_decision_refusal_allows_promote_and_a_forced_reject_with_a_reason():
    assert decision_refusal(decision("PROMOTE"), force=False, reason=None) is None
    assert decision_refusal(decision("REJECT"), force=True, reason="hotfix for a legal takedown") is None


@pytest.mark.parametrize("verdict, force, reason, match", [
    ("REJECT", False, None, "the gate decided REJECT"),
    ("INCONCLUSIVE", False, None, "the gate decided INCONCLUSIVE"),
    ("REJECT", True, None, "--force needs --reason"),
    ("REJECT", True, "   ", "--force needs --reason"),
])
def test_decision_refusal_names_the_verdict_or_the_missing_reason(verdict, force, reason, match):
    assert match in decision_refusal(decision(verdict), force, reason)


# --- the artifact is the one judged ------------------------------------------------------------------------------

def test_artifact_mismatches_empty_for_the_judged_release():
    assert artifact_mismatches(decision(), {"sha256": SHA, "decision": "PROMOTE"}, SHA) == []


def test_artifact_mismatches_name_a_changed_model_and_a_release_json_from_another_run():
    problems = artifact_mismatches(decision(), {"sha256": "b" * 64, "decision": "REJECT"}, "c" * 64)
    assert len(problems) == 3
    assert "sha256 cccccccccccc" in problems[0] and "judged aaaaaaaaaaaa" in problems[0]
    assert "release.json records sha256 bbbbbbbbbbbb" in problems[1]
    assert "decision REJECT" in problems[2]


# --- the stale-champion rule -------------------------------------------------------------------------------------

def test_stale_comparison_first_run_passes_with_no_champion_and_nothing_in_prod():
    assert stale_comparison(decision(), prod_version=None, this_version=None) is None


def test_stale_comparison_passes_when_the_gate_compared_with_prods_version():
    assert stale_comparison(decision(champion={"version": "v0.1.0", "path": "registry"}), "v0.1.0", None) is None


@pytest.mark.parametrize("champion, prod, match", [
    (None, "v0.1.0", "compared with no production model, but prod now holds v0.1.0"),
    ({"version": "v0.1.0", "path": "registry"}, "v0.2.0", "compared with version v0.1.0, but prod now holds v0.2.0"),
    ({"version": None, "path": "../old/release"}, None, "the folder '../old/release' (gate.champion)"),
    ({"version": None, "path": "../old/release"}, "v0.1.0", "prod now holds v0.1.0"),
])
def test_stale_comparison_refuses_a_decision_judged_against_another_champion(champion, prod, match):
    why = stale_comparison(decision(champion=champion), prod, this_version=None)
    assert match in why and "dvc repro -f -s gate" in why


def test_stale_comparison_lets_a_rerun_finish_once_prod_holds_this_commits_version():
    # The first run moved prod to v0.1.0 and then its tag push failed: the rerun must not judge it against itself.
    assert stale_comparison(decision(), prod_version="v0.1.0", this_version="v0.1.0") is None
    assert stale_comparison(decision(), prod_version="v0.1.0", this_version="v0.2.0") is not None


# --- what the tags say -------------------------------------------------------------------------------------------

def test_promotion_fields_round_trip_through_a_tag_message():
    fields = promotion_fields(decision("REJECT"), "d" * 64, SHA, "1234.dir", "legal\ntakedown", forced=True,
                              stage="prod", card=f"README.md (sha256 {'c' * 64})")
    read = tags.message_fields(tags.tag_message("register tunegate v0.1.0", fields))
    assert read["title"] == "register tunegate v0.1.0"
    assert {k: read[k] for k in ("gate", "reason", "forced", "decision sha256", "model sha256", "data md5",
                                 "train run", "champion", "card")} == {
        "gate": "REJECT", "reason": "legal takedown", "forced": "yes", "decision sha256": "d" * 64,
        "model sha256": SHA, "data md5": "1234.dir", "train run": "run1", "champion": "none (first run)",
        "card": f"README.md (sha256 {'c' * 64})"}


def test_promotion_fields_of_a_gate_promote_say_so():
    fields = promotion_fields(decision(champion={"version": "v0.1.0"}), "d" * 64, SHA, "1234.dir", None,
                              forced=False, stage="prod", card=card_field(Path("no-such-release")))
    assert (fields["gate"], fields["reason"], fields["forced"], fields["champion"]) == (
        "PROMOTE", "gate PROMOTE", "no", "v0.1.0")
    assert fields["card"] == "none (the release has no README.md)"  # a release made before the gate wrote cards


def test_card_field_names_the_releases_card_by_its_sha256(tmp_path):
    (tmp_path / "README.md").write_text("---\nlibrary_name: onnx\n---\n# a card\n")
    sha256 = hashlib.sha256((tmp_path / "README.md").read_bytes()).hexdigest()
    assert card_field(tmp_path) == f"README.md (sha256 {sha256})"


def test_stale_stages_names_each_change_dvc_reports():
    status = {"gate": [{"changed outs": {"artifacts/gate/release": "modified"}}, "changed command",
                       {"changed deps": {"params.yaml": {"gate": "modified"}}}],
              "data.dvc": [{"changed outs": {"data": "modified"}}]}
    assert stale_stages(status) == ["data.dvc: changed outs data (modified)",
                                    "gate: changed outs artifacts/gate/release (modified); changed command; "
                                    "changed deps params.yaml (gate: modified)"]


def test_rerun_command_repeats_what_an_override_needs():
    assert rerun_command("prod", "minor", False, None, "origin") == "tunegate promote --push origin"
    assert rerun_command("staging", "major", True, 'say "why"', "up") == (
        'tunegate promote --push up --stage staging --bump major --force --reason "say \\"why\\""')


# --- git: dirty files and the lock -------------------------------------------------------------------------------

@pytest.fixture
def git_repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@t.invalid"], ["config", "user.name", "t"]):
        run(["git", *args], root)
    (root / "tracked.txt").write_text("one\n")
    run(["git", "add", "tracked.txt"], root)
    run(["git", "commit", "-q", "-m", "one"], root)
    return root


def test_dirty_files_lists_changed_tracked_files_only(git_repo):
    assert dirty_files(git_repo) == []
    (git_repo / "untracked.txt").write_text("new\n")
    assert dirty_files(git_repo) == []
    (git_repo / "tracked.txt").write_text("two\n")
    assert dirty_files(git_repo) == ["tracked.txt"]


def test_registry_lock_refuses_a_second_holder_at_once_naming_the_first(git_repo):
    with registry_lock(git_repo, "tunegate rollback"):
        with pytest.raises(RegistryBusy, match=r"`tunegate rollback` \(pid \d+"):
            with registry_lock(git_repo, "tunegate promote"):
                pass
    with registry_lock(git_repo, "tunegate promote"):  # released with its holder
        pass
    assert (git_repo / ".git" / "tunegate-registry.lock").is_file()


def test_a_refusal_is_a_registry_error_the_cli_prints_without_traceback():
    from tasks.core.errors import TunegateError

    assert issubclass(PromotionRefused, TunegateError) and issubclass(RegistryBusy, TunegateError)


# --- end to end on a real git + DVC project ----------------------------------------------------------------------

def env_for(root: Path) -> dict:
    """What conftest's run() gives a command: the venv's bin on PATH, the project's own code first on the path."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}


def promote(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "tunegate"), "promote", *args], root, check=False)


def tag_names(root: Path, pattern: str = "tunegate*") -> list[str]:
    return run(["git", "tag", "-l", pattern], root).stdout.split()


def tag_fields(root: Path, tag: str) -> dict[str, str]:
    return tags.message_fields(run(["git", "for-each-ref", "--format=%(contents)", f"refs/tags/{tag}"], root).stdout)


def test_first_promotion_pushes_bytes_then_tags_once_though_two_run_at_once(registry_project, tmp_path):
    root = registry_project
    # Both at once: the registry lock lets one move prod; the other fails naming the holder, or finds it done.
    both = [subprocess.Popen([str(BIN / "tunegate"), "promote"], cwd=root, env=env_for(root), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outcomes = [(p.wait(timeout=600), *p.communicate()) for p in both]
    assert sorted(code for code, _, _ in outcomes) in ([0, 0], [0, 1]), outcomes
    for code, out, err in outcomes:
        assert code == 0 or "the registry is busy" in err, (out, err)
    assert tag_names(root) == ["tunegate#prod#1", "tunegate@v0.1.0"]
    assert tags.in_stage(root, tags.PROD).version == "v0.1.0"
    assert tags.find_version(root, "v0.1.0").commit == run(["git", "rev-parse", "HEAD"], root).stdout.strip()

    # The bytes are in the DVC remote: nothing of the gate's outputs is missing there.
    assert "in sync" in run([str(BIN / "dvc"), "status", "-c", "gate"], root).stdout
    fields = tag_fields(root, "tunegate@v0.1.0")
    release = tag_fields(root, "tunegate#prod#1")
    decision_bytes = (root / "artifacts/gate/decision.json").read_bytes()
    assert fields["gate"] == "PROMOTE" and fields["forced"] == "no" and fields["reason"] == "gate PROMOTE"
    assert fields["decision sha256"] == hashlib.sha256(decision_bytes).hexdigest()
    assert fields["model sha256"] == json.loads(decision_bytes)["candidate"]["sha256"]
    assert fields["train run"] == json.loads(decision_bytes)["candidate"]["train_run"]
    assert fields["data md5"].endswith(".dir") and fields["data md5"] in (root / "data.dvc").read_text()
    assert release["gate"] == "PROMOTE" and release["stage"] == "prod"
    assert "reason: gate PROMOTE" in run(["git", "show", "-s", "tunegate#prod#1"], root).stdout  # why, in git show

    # Publishing: a refused push says what is safe and how to finish; the rerun finishes without moving prod again.
    refused = promote(root, "--push", "nowhere")
    assert refused.returncode == 1
    assert "exist locally" in refused.stderr and "tunegate promote --push nowhere" in refused.stderr
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], root)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], root)
    finished = promote(root, "--push")
    assert finished.returncode == 0, finished.stderr
    assert "already there: prod not moved" in finished.stdout and "pushed both tags to origin" in finished.stdout
    published = run(["git", "ls-remote", "--tags", "origin"], root).stdout
    assert "refs/tags/tunegate@v0.1.0" in published and "refs/tags/tunegate#prod#1" in published
    assert tag_names(root) == ["tunegate#prod#1", "tunegate@v0.1.0"]


def test_promote_refuses_what_the_gate_did_not_approve_and_a_forced_one_records_why(registry_project, tmp_path):
    root = registry_project
    # A REJECT made cheaply: only the gate reruns, with a compute budget nothing meets.
    from tasks.core.config import write_overrides

    write_overrides(root / "params.yaml", ["gate.max_gmacs_per_text_p95=0.000001"])
    run([str(BIN / "dvc"), "repro"], root)
    run(["git", "commit", "-q", "-am", "gate with an impossible compute budget"], root)

    rejected = promote(root)
    assert rejected.returncode == 1 and "the gate decided REJECT" in rejected.stderr
    assert "Traceback" not in rejected.stderr
    assert "--force needs --reason" in promote(root, "--force").stderr
    forced = ("--force", "--reason", "latency measured on a loaded CI runner")

    with (root / "params.yaml").open("a") as params:
        params.write("# an edit nobody committed\n")
    dirty = promote(root, *forced)
    assert dirty.returncode == 1 and "uncommitted changes to tracked files: params.yaml" in dirty.stderr
    run(["git", "checkout", "params.yaml"], root)

    model = root / "artifacts/gate/release/model.onnx"
    judged = model.read_bytes()
    model.write_bytes(judged + b"\0")
    changed = promote(root, *forced)
    assert changed.returncode == 1 and "not the one the gate judged" in changed.stderr
    model.write_bytes(judged)

    # A committed params change the gate did not run with: the decision is older than dvc.lock's deps.
    write_overrides(root / "params.yaml", ["gate.margin=0.05"])
    run(["git", "commit", "-q", "-am", "margin changed, gate not rerun"], root)
    behind = promote(root, *forced)
    assert behind.returncode == 1 and "out of date: gate: changed deps params.yaml (gate: modified)" in behind.stderr
    assert "dvc repro" in behind.stderr
    run(["git", "reset", "-q", "--hard", "HEAD~1"], root)

    # A DVC remote that cannot be written (a path below a file; chmod does not stop root): no tag at all.
    (tmp_path / "not-a-folder").write_text("")
    run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(tmp_path / "not-a-folder/remote")], root)
    unreachable = promote(root, *forced)
    assert unreachable.returncode == 1 and "No tag was created" in unreachable.stderr
    assert tag_names(root) == []

    (root / ".dvc/config.local").unlink()  # the remote fixed: the same command finishes the job
    done = promote(root, *forced)
    assert done.returncode == 0, done.stderr
    assert "v0.1.0" in done.stdout and "(forced)" in done.stdout
    assert tag_names(root) == ["tunegate#prod#1", "tunegate@v0.1.0"]
    for tag in tag_names(root):
        fields = tag_fields(root, tag)
        assert (fields["gate"], fields["forced"], fields["reason"]) == (
            "REJECT", "yes", "latency measured on a loaded CI runner")
    assert "in sync" in run([str(BIN / "dvc"), "status", "-c", "gate"], root).stdout
