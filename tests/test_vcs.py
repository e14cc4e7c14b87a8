"""tasks/core/vcs.py: the one git runner, the one DVC runner and the one reader of a .dvc file's outs."""

import re
import subprocess

import pytest

from tasks.core.vcs import (CommandFailed, dirty_files, dvc_file_outs, git, git_output, git_succeeds, show_at,
                            tracked_paths)
from tests.conftest import REPO


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    for args in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    (root / "a.txt").write_text("one\n")
    (root / "sub" / "b.txt").write_text("two\n")
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "first"], cwd=root, check=True)
    return root


def test_git_returns_stdout_and_a_failure_names_the_command_and_gits_message(repo):
    assert re.fullmatch(r"[0-9a-f]{40}", git(repo, "rev-parse", "HEAD"))
    with pytest.raises(CommandFailed, match=r"`git rev-parse no-such-rev` failed in .*no-such-rev") as failed:
        git(repo, "rev-parse", "no-such-rev")
    assert failed.value.cmd == ["git", "rev-parse", "no-such-rev"] and failed.value.output


def test_queries_answer_none_or_false_where_git_has_nothing(repo, tmp_path):
    assert git_output(tmp_path, "rev-parse", "HEAD") is None  # not a repository
    assert git_succeeds(repo, "cat-file", "-e", "HEAD:./a.txt")
    assert not git_succeeds(repo, "cat-file", "-e", "HEAD:./missing.txt")
    assert show_at(repo, "HEAD", "a.txt") == "one\n" and show_at(repo, "HEAD", "missing.txt") is None
    # A project below the repository's top level reads paths relative to itself.
    assert show_at(repo / "sub", "HEAD", "b.txt") == "two\n"


def test_a_host_without_git_reads_as_a_failed_command(repo, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert git_output(repo, "rev-parse", "HEAD") is None and not git_succeeds(repo, "status")
    with pytest.raises(CommandFailed):
        git(repo, "status")


def test_dirty_files_keeps_the_first_paths_first_letter(repo):
    """git's porcelain status starts with a space for an unstaged change: stripping the output would eat a letter."""
    assert dirty_files(repo) == []
    (repo / "a.txt").write_text("changed\n")
    (repo / "untracked.txt").write_text("new\n")
    assert dirty_files(repo) == ["a.txt"]


def test_dvc_file_outs_read_paths_and_hashes_and_skip_what_is_not_an_out(tmp_path):
    text = "outs:\n- md5: abc.dir\n  path: data\n- path: more.csv\n  md5: def\n- not an out\n"
    assert [out["path"] for out in dvc_file_outs(text)] == ["data", "more.csv"]
    assert dvc_file_outs(text)[0]["md5"] == "abc.dir"
    assert dvc_file_outs(None) == [] and dvc_file_outs("outs: [") == [] and dvc_file_outs("- a list") == []
    (tmp_path / "data.dvc").write_text(text)
    assert tracked_paths(tmp_path) == ["data", "more.csv"] and tracked_paths(tmp_path, "other.dvc") == []


def test_no_module_but_vcs_runs_git_or_reads_dvc_files_itself():
    """One git runner and one reader of .dvc outs: everything else calls tasks/core/vcs.py."""
    offenders = []
    for path in [*REPO.glob("tasks/**/*.py"), *REPO.glob("flows/**/*.py")]:
        if path == REPO / "tasks" / "core" / "vcs.py":
            continue
        text = path.read_text()
        if re.search(r"""\[\s*["']git["']""", text) or re.search(r"""["']-m["'],\s*["']dvc["']""", text):
            offenders.append(str(path.relative_to(REPO)))
        if re.search(r"""\.get\(\s*["']outs["']""", text):
            offenders.append(f"{path.relative_to(REPO)} (reads a .dvc file's outs)")
    assert offenders == []
