"""Registry rollback, history and models: a stage moves back only to a version whose fetched files serve, and the
tags answer what was in prod at any instant."""

import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from flows import cli
from flows.cli import registry as registry_commands  # verify, history, models print here
from tasks.core.io import file_sha256
from tasks.registry import tags
from tasks.registry.history import (describe_holder, events, iso, model_rows, parse_instant,
                                    rolled_back_from)
from tasks.registry.rollback import SmokeTestError, check_predictions, previous_version, rollback, smoke_test
from tests.conftest import BIN, REPO, readable_at_80, retrain, run

T0 = datetime(2026, 11, 29, 13, 0, 0, tzinfo=timezone.utc)


def version(name: str, seconds: int, gate: str = "PROMOTE", reason: str = "gate PROMOTE") -> tags.Version:
    message = tags.tag_message(f"register {name}", {"gate": gate, "reason": reason})
    return tags.Version(name, f"{seconds:040x}", T0 + timedelta(seconds=seconds), "ana", message, f"tunegate@{name}")


def move(name: str, seconds: int, number: int, rolled_from: str | None = None, stage: str = "prod",
         reason: str | None = None) -> tags.StageMove:
    fields = {key: value for key, value in (("rolled back from", rolled_from), ("reason", reason)) if value}
    message = tags.tag_message(f"{stage} <- {name}", fields)
    return tags.StageMove(stage, name, f"{seconds:040x}", T0 + timedelta(seconds=seconds), "bo", message,
                          f"tunegate#{stage}#{number}", number)


# --- pure parts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2026-11-29T13:05:00Z", datetime(2026, 11, 29, 13, 5, tzinfo=timezone.utc)),
    ("2026-11-29T13:05:00", datetime(2026, 11, 29, 13, 5, tzinfo=timezone.utc)),  # naive = UTC
    ("2026-11-29 14:05:00.5+01:00", datetime(2026, 11, 29, 13, 5, 0, 500000, tzinfo=timezone.utc)),
    ("2026-11-29", datetime(2026, 11, 29, tzinfo=timezone.utc)),  # a date: its first instant in UTC
])
def test_parse_instant_reads_iso_times_and_dates_as_utc(text, expected):
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "29/11/2026", "2026-13-01", ""])
def test_parse_instant_refuses_what_is_not_iso_8601(text):
    with pytest.raises(tags.RegistryError, match="ISO 8601"):
        parse_instant(text)


def test_previous_version_is_the_one_held_before_the_current():
    assert previous_version([move("v0.1.0", 0, 1), move("v0.2.0", 5, 2)]) == "v0.1.0"
    # A repeated assignment of the current version is not a change of version.
    assert previous_version([move("v0.1.0", 0, 1), move("v0.2.0", 5, 2), move("v0.2.0", 9, 3)]) == "v0.1.0"


def test_previous_version_skips_versions_a_rollback_moved_away_from():
    moves = [move("v0.1.0", 0, 1), move("v0.2.0", 5, 2), move("v0.3.0", 9, 3), move("v0.2.0", 12, 4, "v0.3.0")]
    assert previous_version(moves) == "v0.1.0"  # not back to v0.3.0, the version just rolled back
    undone = [move("v0.1.0", 0, 1), move("v0.2.0", 5, 2), move("v0.1.0", 9, 3, "v0.2.0")]
    assert previous_version(undone) is None  # only the bad v0.2.0 is older: --to must name it
    assert previous_version([*undone, move("v0.3.0", 14, 4)]) == "v0.1.0"


def test_previous_version_of_a_single_or_empty_history_is_none():
    assert previous_version([move("v0.1.0", 0, 1)]) is None
    assert previous_version([]) is None


def test_events_interleave_registrations_and_moves_oldest_first():
    versions = [version("v0.1.0", 0, reason="first model"), version("v0.2.0", 10, gate="REJECT", reason="forced")]
    moves = [move("v0.1.0", 0, 1, reason="first promotion"), move("v0.2.0", 10, 2),
             move("v0.1.0", 20, 3, rolled_from="v0.2.0", reason="v0.2.0 misclassifies")]
    rows = events(versions, list(reversed(moves)))
    assert [(e.event, e.version, e.why, e.gate) for e in rows] == [
        ("registered", "v0.1.0", "first model", "PROMOTE"),
        ("prod <- v0.1.0", "v0.1.0", "first promotion", "PROMOTE"),  # same second: registration first
        ("registered", "v0.2.0", "forced", "REJECT"),
        ("prod <- v0.2.0", "v0.2.0", "prod <- v0.2.0", "REJECT"),  # no reason field: the first line
        ("rollback prod <- v0.1.0", "v0.1.0", "v0.2.0 misclassifies", "PROMOTE"),
    ]
    assert [e.who for e in rows] == ["ana", "bo", "ana", "bo", "bo"]
    assert rolled_back_from(moves[2]) == "v0.2.0" and rolled_back_from(moves[1]) is None


def test_events_within_one_second_keep_moves_by_number_each_after_its_registration():
    # Tag dates have one-second resolution: a quick promote, promote, rollback can share one.
    versions = [version("v0.2.0", 3), version("v0.1.0", 3)]
    moves = [move("v0.1.0", 3, 3, rolled_from="v0.2.0"), move("v0.2.0", 3, 2), move("v0.1.0", 3, 1)]
    assert [(e.event, e.version) for e in events(versions, moves)] == [
        ("registered", "v0.1.0"), ("prod <- v0.1.0", "v0.1.0"), ("registered", "v0.2.0"), ("prod <- v0.2.0", "v0.2.0"),
        ("rollback prod <- v0.1.0", "v0.1.0")]


def test_model_rows_list_each_version_with_the_stages_holding_it_now():
    versions = [version("v0.1.0", 0), version("v0.2.0", 10, gate="INCONCLUSIVE")]
    moves = [move("v0.1.0", 0, 1), move("v0.2.0", 10, 2), move("v0.2.0", 11, 1, stage="staging"),
             move("v0.1.0", 20, 3, rolled_from="v0.2.0")]
    rows = model_rows(versions, moves)
    assert [(r.version, r.commit, r.gate, r.stages) for r in rows] == [
        ("v0.1.0", "00000000", "PROMOTE", ("prod",)),
        ("v0.2.0", "00000000", "INCONCLUSIVE", ("staging",)),
    ]
    assert iso(rows[1].registered) == "2026-11-29T13:00:10Z"


def test_describe_holder_names_version_since_who_and_why_or_nothing():
    held = move("v0.1.0", 0, 1, reason="first promotion")
    assert describe_holder(held, "prod", T0 + timedelta(minutes=5)) == (
        "prod at 2026-11-29T13:05:00Z: v0.1.0 (since 2026-11-29T13:00:00Z, by bo, why: first promotion)")
    assert describe_holder(None, "prod", T0) == "nothing was in prod at 2026-11-29T13:00:00Z"


def test_smoke_check_passes_finite_probabilities_over_the_release_labels():
    probs = np.array([[0.25, 0.75], [1.0, 0.0]])
    assert check_predictions(probs, ["neg", "pos"], ["neg", "pos"]).startswith("passed (2 texts")


@pytest.mark.parametrize("probs, labels, match", [
    (np.array([[np.nan, 0.5]]), ["neg", "pos"], "non-finite"),
    (np.array([[0.7, 0.7]]), ["neg", "pos"], "sum to 1"),
    (np.array([[0.5, 0.5]]), ["pos", "neg"], "labels"),
    (np.array([[1.0]]), ["neg", "pos"], "shape"),
])
def test_smoke_check_refuses_what_cannot_be_served(probs, labels, match):
    with pytest.raises(SmokeTestError, match=match):
        check_predictions(probs, labels, ["neg", "pos"])


def test_smoke_test_of_a_folder_that_is_no_model_says_it_does_not_serve(tmp_path):
    with pytest.raises(SmokeTestError, match="does not serve"):
        smoke_test(tmp_path)


# --- a registry without any model files (errors raised before anything is fetched) ----------------------------

def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tag_repo(tmp_path) -> Path:
    """A git repository with the project's .gto and the model declared, but no DVC data: only tags."""
    root = tmp_path / "tags-only"
    root.mkdir()
    shutil.copy2(REPO / ".gto", root / ".gto")
    (root / "dvc.yaml").write_text(f"artifacts:\n  {tags.ARTIFACT}:\n    type: model\n    path: {tags.RELEASE_PATH}\n")
    git(root, "init", "-q")
    git(root, "config", "user.name", "Ana Tester")
    git(root, "config", "user.email", "ana@tunegate.invalid")
    return root


def commit_and_register(root: Path, name: str, gate: str = "PROMOTE") -> str:
    (root / "model.txt").write_text(name)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", f"model {name}")
    tags.register(root, git(root, "rev-parse", "HEAD"), name, tags.tag_message(f"register {name}", {"gate": gate}))
    return name


def test_rollback_refuses_an_empty_stage_a_single_version_and_an_unknown_one(tag_repo):
    commit_and_register(tag_repo, "v0.1.0")
    with pytest.raises(tags.RegistryError, match="nothing is in prod"):
        rollback(tag_repo)
    with pytest.raises(tags.RegistryError, match="'qa' is not allowed"):
        rollback(tag_repo, stage="qa")
    tags.assign(tag_repo, "v0.1.0", tags.PROD, tags.tag_message("prod <- v0.1.0", {}))
    with pytest.raises(tags.RegistryError, match="no earlier version"):
        rollback(tag_repo)
    with pytest.raises(tags.RegistryError, match="no version 'v9.9.9'"):
        rollback(tag_repo, to="v9.9.9")
    before = git(tag_repo, "tag")
    done = rollback(tag_repo, to="v0.1.0")  # already there: nothing fetched, nothing tagged
    assert not done.moved and done.tag == "tunegate#prod#1"
    assert git(tag_repo, "tag") == before


def test_history_and_models_tables_and_a_bad_time(tag_repo, capsys, monkeypatch):
    commit_and_register(tag_repo, "v0.1.0")
    tags.assign(tag_repo, "v0.1.0", tags.PROD, tags.tag_message("prod <- v0.1.0", {"reason": "first promotion"}))
    commit_and_register(tag_repo, "v0.2.0", gate="REJECT")
    tags.assign(tag_repo, "v0.2.0", "staging", tags.tag_message("staging <- v0.2.0", {}))
    monkeypatch.setattr(registry_commands, "console", Console(width=200, record=True))

    assert cli.main(["models", "--project", str(tag_repo)]) == 0
    lines = registry_commands.console.export_text().splitlines()
    first = next(line for line in lines if "v0.1.0" in line)
    second = next(line for line in lines if "v0.2.0" in line)
    assert git(tag_repo, "rev-parse", "--short=8", "tunegate@v0.1.0^{}") in first
    assert "Ana Tester" in first and "PROMOTE" in first and first.rstrip(" │").endswith("prod")
    assert "REJECT" in second and second.rstrip(" │").endswith("staging")

    assert cli.main(["history", "--project", str(tag_repo)]) == 0
    table = registry_commands.console.export_text()
    assert [word for line in table.splitlines() for word in ("registered", "prod <- v0.1.0", "staging <- v0.2.0")
            if word in line] == ["registered", "prod <- v0.1.0", "registered", "staging <- v0.2.0"]
    assert "first promotion" in table

    assert cli.main(["history", "--at", "tomorrow", "--project", str(tag_repo)]) == 1
    assert "cannot read 'tomorrow' as a time" in capsys.readouterr().err


# --- end to end: a real git + DVC project with two trained versions ------------------------------------------

def tunegate(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "tunegate"), *args], root, check=check)


def register_and_promote(root: Path, name: str, reason: str) -> str:
    """What `tunegate promote` leaves, made directly so this test does not depend on it: returns the model hash."""
    commit = git(root, "rev-parse", "HEAD")
    tags.register(root, commit, name, tags.tag_message(f"register {name}", {"gate": "PROMOTE", "reason": reason}))
    tags.assign(root, name, tags.PROD, tags.tag_message(f"prod <- {name}", {"reason": reason}))
    return file_sha256(root / tags.RELEASE_PATH / "model.onnx")


def holder_at(root: Path, at: str) -> str:
    return tunegate(root, "history", "--at", at).stdout.strip()


@pytest.mark.slow
def test_rollback_restores_prod_from_fetched_files_and_history_tells_who_held_it_when(registry_project, tmp_path,
                                                                                       monkeypatch):
    root = registry_project
    monkeypatch.setenv("COLUMNS", "220")  # rich tables in the subprocesses: one line per row
    first_sha = register_and_promote(root, "v0.1.0", "first model")
    time.sleep(1.1)  # tag dates have one-second resolution: keep the moves in distinct seconds
    retrain(root, max_train_rows=100)
    second_sha = register_and_promote(root, "v0.2.0", "second model")
    assert second_sha != first_sha
    time.sleep(1.1)

    # Neither the workspace's artifacts nor an earlier fetch can serve the rollback: DVC must fetch v0.1.0.
    shutil.rmtree(root / "artifacts")
    shutil.rmtree(root / ".tunegate" / "registry", ignore_errors=True)
    done = tunegate(root, "rollback", "--reason", "v0.2.0 is\nat chance")
    assert "prod: v0.2.0 -> v0.1.0 (tunegate#prod#3)" in done.stdout
    assert tags.in_stage(root).version == "v0.1.0"
    fetched = root / ".tunegate" / "registry" / "v0.1.0"
    assert f"smoke test on {fetched}: passed (5 texts" in done.stdout.replace("\n", "")
    assert file_sha256(fetched / "model.onnx") == first_sha and not (root / "artifacts").exists()
    recorded = tags.message_fields(tags.in_stage(root).message)
    assert recorded["rolled back from"] == "v0.2.0" and recorded["reason"] == "v0.2.0 is at chance"
    assert recorded["smoke test"].startswith("passed") and recorded["model sha256"] == first_sha
    assert recorded["parity"].startswith("passed: "), "the fetched release's certificate, re-scored on this host"

    # history --at: each instant between moves names the version prod held then.
    first, second, third = tags.stage_moves(root, tags.PROD)
    half = timedelta(milliseconds=500)
    assert holder_at(root, iso(first.at - timedelta(seconds=1))).startswith("nothing was in prod at")
    assert ": v0.1.0 (since" in holder_at(root, (first.at + half).replace(tzinfo=None).isoformat())  # naive = UTC
    between = holder_at(root, iso(second.at + half).replace("Z", "+00:00"))
    assert ": v0.2.0 (since" in between and "why: second model" in between
    assert ": v0.1.0 (since" in holder_at(root, iso(third.at)) and "why: v0.2.0 is at chance" in holder_at(
        root, "2100-01-01")

    # --to, pushed: prod returns to v0.2.0 and the tag reaches the git remote.
    git(root, "init", "-q", "--bare", str(tmp_path / "origin.git"))
    git(root, "remote", "add", "origin", str(tmp_path / "origin.git"))
    done = tunegate(root, "rollback", "--to", "v0.2.0", "--push")
    assert tags.in_stage(root).version == "v0.2.0" and "pushed tunegate#prod#4 to origin" in done.stdout
    assert "tunegate#prod#4" in git(root, "ls-remote", "--tags", "origin")

    models = tunegate(root, "models").stdout.splitlines()
    assert any("v0.1.0" in line and "PROMOTE" in line and "prod" not in line for line in models)
    assert any("v0.2.0" in line and git(root, "rev-parse", "--short=8", "HEAD") in line and "prod" in line
               for line in models)
    history = tunegate(root, "history").stdout
    assert history.count("registered") == 2 and "rollback prod <- v0.1.0" in history
    assert "rollback prod <- v0.2.0" in history and "v0.2.0 is at chance" in history
    # At 80 columns: each table fits, and what identifies a row stays whole.
    monkeypatch.setenv("COLUMNS", "80")
    narrow = readable_at_80(tunegate(root, "models").stdout)
    assert "registered (UTC)" in narrow and all(f"{v} {git(root, 'rev-parse', '--short=8', c)}" in narrow
                                                for v, c in (("v0.1.0", "HEAD~1"), ("v0.2.0", "HEAD")))
    narrow = readable_at_80(tunegate(root, "history").stdout)
    assert all(event in narrow for event in ("registered v0.1.0", "registered v0.2.0", "rollback prod <- v0.1.0",
                                             "rollback prod <- v0.2.0"))
    monkeypatch.setenv("COLUMNS", "220")

    # Files nowhere (workspace, fetched copies, DVC cache, remote): the rollback is refused and tags nothing.
    for gone in (root / ".tunegate" / "registry", root / ".dvc" / "cache", tmp_path / "dvc-remote"):
        shutil.rmtree(gone, ignore_errors=True)
    before = git(root, "tag")
    refused = tunegate(root, "rollback", "--to", "v0.1.0", check=False)
    assert refused.returncode == 1 and "cannot fetch v0.1.0" in refused.stderr
    assert git(root, "tag") == before and tags.in_stage(root).version == "v0.2.0"
