"""git and DVC of the project folder, from a subprocess: the one git runner, the one DVC runner and the one reader
of a .dvc file's outs. The registry, the data contracts, CI and the retraining call these, so a failure reads the
same everywhere and a git quirk (the porcelain status's leading column, a host without git) is handled once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from tasks.core.errors import TunegateError


class CommandFailed(TunegateError):
    """A git or DVC command failed; carries the command and what it printed."""

    def __init__(self, cmd: list[str], output: str, root: Path):
        self.cmd, self.output = cmd, output
        super().__init__(f"`{' '.join(cmd)}` failed in {root}: {output.strip() or '(no output)'}")


def _run(cmd: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    """The command's result; a missing executable reads as a failure (exit 127), not an exception."""
    try:
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    except OSError as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _checked(cmd: list[str], root: Path) -> str:
    done = _run(cmd, root)
    if done.returncode != 0:
        raise CommandFailed(cmd, done.stderr.strip() or done.stdout.strip(), root)
    return done.stdout.strip()


def git(root: Path, *args: str) -> str:
    """A git command's stdout (stripped); CommandFailed with git's message when it fails."""
    return _checked(["git", *args], root)


def git_output(root: Path, *args: str) -> str | None:
    """A git query's stdout, unstripped; None when it fails (no repository, no such revision or file, no git)."""
    done = _run(["git", *args], root)
    return done.stdout if done.returncode == 0 else None


def git_succeeds(root: Path, *args: str) -> bool:
    """True when the git command exits 0 (e.g. `cat-file -e REV:PATH`: git holds that path at that revision)."""
    return _run(["git", *args], root).returncode == 0


def show_at(root: Path, rev: str, path: str) -> str | None:
    """A file's text at git revision `rev` (`path` relative to `root`); None where git has none."""
    return git_output(root, "show", f"{rev}:./{path}")


def dirty_files(root: Path) -> list[str]:
    """Tracked files that differ from HEAD (staged or not); untracked files do not count."""
    # Not through git(): its stripping would cut the first line's status column.
    done = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    if done.returncode != 0:
        raise CommandFailed(done.args, done.stderr.strip(), root)
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


def dvc(root: Path, *args: str) -> str:
    """A DVC command's stdout (stripped); CommandFailed with what it printed when it fails."""
    # The venv's own DVC (python -m dvc), whatever PATH holds (a Prefect worker's PATH may lack the venv's bin).
    return _checked([sys.executable, "-m", "dvc", *args], root)


def dvc_result(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A DVC command's whole result, for callers that turn a failure into a warning."""
    return _run([sys.executable, "-m", "dvc", *args], root)


def dvc_process(root: Path, args: list[str], env: dict[str, str], output: IO[str]) -> subprocess.Popen[str]:
    """A long DVC command started, not awaited (its output to `output`), in a session of its own: the caller polls
    it and may stop it as Ctrl-C would (`os.killpg(process.pid, SIGINT)`), and a Ctrl-C in the terminal reaches
    only the caller, which then stops it itself."""
    return subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=root, env=env, stdout=output,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def yaml_mapping(text: str | None) -> dict[str, Any]:
    """A YAML document's top-level mapping; {} for none, a parse error or another kind of document."""
    from ruamel.yaml import YAML, YAMLError

    try:
        loaded = YAML(typ="safe", pure=True).load(text) if text else None
    except YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def dvc_file_outs(text: str | None) -> list[dict[str, Any]]:
    """The outs of a .dvc file's text (each with its path and hash), in the file's order."""
    outs = yaml_mapping(text).get("outs") or []
    return [out for out in outs if isinstance(out, dict) and "path" in out]


def dvc_out_paths(text: str | None) -> list[str]:
    """The paths a .dvc file's text tracks."""
    return [str(out["path"]) for out in dvc_file_outs(text)]


def tracked_paths(root: Path, dvc_file: str = "data.dvc") -> list[str]:
    """The paths `dvc_file` tracks, relative to `root` ([] without the file)."""
    path = root / dvc_file
    return dvc_out_paths(path.read_text() if path.is_file() else None)
