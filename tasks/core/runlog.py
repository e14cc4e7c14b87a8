"""Run records: what one run of a stage measured and where it ran, kept outside every DVC-tracked output.

Times, latencies, host names, absolute paths and the git state differ from run to run and from clone
to clone; in a tracked output they would change dvc.lock and rerun every later stage. They go to
.tunegate/runs/<stage>.json (git- and DVC-ignored), overwritten by each run.
"""

from __future__ import annotations

import platform
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.core.environment import environment_record
from tasks.core.host import cpu_facts
from tasks.core.io import write_json
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import git_output


def git_revision(root: Path) -> dict[str, Any]:
    """Commit SHA and whether the work tree had uncommitted changes (None outside git)."""
    sha = git_output(root, "rev-parse", "HEAD")
    status = git_output(root, "status", "--porcelain", "--untracked-files=no")
    return {"sha": sha.strip() if sha is not None else None,
            "dirty": bool(status.strip()) if status is not None else None}


def write_run_record(paths: ArtifactPaths, stage: str, measured: dict[str, Any]) -> Path:
    """Write .tunegate/runs/<stage>.json: when, where (host, CPU, platform, project folder, git, the lock that
    installed the environment) and `measured`."""
    record = {
        "stage": stage,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu": cpu_facts(),  # model, numeric flags and kind: what decides the bytes a CPU run computes
        "platform": platform.platform(),
        "python": sys.executable,
        "project": str(paths.root.resolve()),
        "git": git_revision(paths.root),
        "environment": environment_record(),  # the lock that installed it and what differs from its pins
        **measured,
    }
    path = paths.run_record(stage)
    write_json(path, record)
    return path
