"""The lifecycle on a real git + DVC repository: promote, a worse model rejected, a better one promoted, rollback,
and the history answering which version was in prod at any instant."""

import json
import shutil
import time
from datetime import UTC, datetime

import pytest

from tasks.registry import tags
from tests.conftest import BIN, retrain, run


def tunegate(root, *args, check=True):
    return run([str(BIN / "tunegate"), *args], root, check=check)


def decision(root) -> dict:
    return json.loads((root / "artifacts" / "gate" / "decision.json").read_text())


def prod(root) -> str | None:
    move = tags.in_stage(root, tags.PROD)
    return move.version if move else None


@pytest.mark.slow
def test_three_rounds_then_rollback_and_history(registry_project):
    root = registry_project
    # Round 1: no production model yet; the first-run policy promotes a model that passes its checks.
    assert decision(root)["decision"] == "PROMOTE" and decision(root)["comparison"] is None
    tunegate(root, "promote")
    assert prod(root) == "v0.1.0"
    time.sleep(1.1)  # tag dates have one-second resolution
    after_first = datetime.now(UTC)
    time.sleep(1.1)

    # Round 2: a model trained on a quarter of the rows, judged against prod v0.1.0 (fetched through DVC): REJECT.
    retrain(root, max_train_rows=100)
    second = decision(root)
    assert second["decision"] == "REJECT", second["why"]
    assert second["comparison"]["champion"]["version"] == "v0.1.0"
    refused = tunegate(root, "promote", check=False)
    assert refused.returncode == 1 and "REJECT" in refused.stdout + refused.stderr
    assert prod(root) == "v0.1.0" and [v.version for v in tags.versions(root)] == ["v0.1.0"]

    # Round 3: every training row; non-inferior to prod: promoted as v0.2.0.
    retrain(root, max_train_rows="null")
    third = decision(root)
    assert third["decision"] == "PROMOTE", third["why"]
    assert third["comparison"]["champion"]["version"] == "v0.1.0"
    tunegate(root, "promote")
    assert prod(root) == "v0.2.0"
    time.sleep(1.1)
    after_third = datetime.now(UTC)
    time.sleep(1.1)

    # Rollback: back to v0.1.0, from files fetched through DVC (artifacts/ and earlier fetches gone).
    shutil.rmtree(root / "artifacts")
    shutil.rmtree(root / ".tunegate" / "registry", ignore_errors=True)
    tunegate(root, "rollback", "--reason", "a bad release")
    assert prod(root) == "v0.1.0"
    assert [m.version for m in tags.stage_moves(root, tags.PROD)] == ["v0.1.0", "v0.2.0", "v0.1.0"]

    # History: which version was in prod at instants between the moves.
    assert "v0.1.0" in tunegate(root, "history", "--at", after_first.isoformat()).stdout
    assert "v0.2.0" in tunegate(root, "history", "--at", after_third.isoformat()).stdout
    nothing = tunegate(root, "history", "--at", "2000-01-01T00:00:00Z").stdout
    assert "v0.1.0" not in nothing and "v0.2.0" not in nothing
    tag_list = run(["git", "tag", "-n9"], root).stdout
    assert {"tunegate@v0.1.0", "tunegate@v0.2.0", "tunegate#prod#1", "tunegate#prod#2", "tunegate#prod#3"} <= {
        line.split()[0] for line in tag_list.splitlines() if line.strip() and not line.startswith(" ")}
