"""io: atomic files and whole-folder swaps survive crashes, reach the disk, and are readable as the umask allows."""

import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import tasks.core.io as io
from tasks.core.io import atomic_file, current_umask, leftovers, recover_swaps, staged_dir, write_json, write_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    """Set the process umask for one test (it is process-wide: restored afterwards)."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stage_output(final: Path, text: str) -> None:
    with staged_dir(final) as tmp:
        (tmp / "result.txt").write_text(text)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_current_umask_reads_the_process_umask_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027 and current_umask() == 0o027


@pytest.mark.parametrize("mask, file_mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_file_gets_the_mode_the_umask_allows(tmp_path, umask, mask, file_mode):
    umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_file(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"\0")
    assert mode(tmp_path / "a.json") == file_mode and mode(tmp_path / "b.bin") == file_mode


def test_atomic_file_leaves_the_old_file_and_no_temp_file_on_error(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_folder_and_every_file_in_it_are_readable_under_umask_022(tmp_path, umask):
    umask(0o022)
    final = tmp_path / "artifacts" / "train"
    with staged_dir(final) as out:
        (out / "model").mkdir()
        (out / "model" / "config.json").write_text("{}")
        # What transformers and onnx do inside the folder: private temp files renamed into place.
        fd, name = tempfile.mkstemp(dir=out / "model")
        os.write(fd, b"weights")
        os.close(fd)
        os.replace(name, out / "model" / "model.safetensors")
        private = Path(tempfile.mkdtemp(dir=out))
        (private / "x").write_text("x")
        write_json(out / "stamp.json", {})
    folders = [final, final / "model", final / private.name]
    files = [final / "model" / "config.json", final / "model" / "model.safetensors",
             final / private.name / "x", final / "stamp.json"]
    assert {p.name: oct(mode(p)) for p in folders} == {p.name: "0o755" for p in folders}
    assert {p.name: oct(mode(p)) for p in files} == {p.name: "0o644" for p in files}


def test_staged_dir_keeps_executable_bits_and_honours_a_stricter_umask(tmp_path, umask):
    umask(0o027)
    with staged_dir(tmp_path / "out") as out:
        (out / "run.sh").write_text("#!/bin/sh\n")
        (out / "run.sh").chmod(0o700)
        (out / "data.txt").write_text("x")
    assert oct(mode(tmp_path / "out")) == "0o750"
    assert oct(mode(tmp_path / "out" / "run.sh")) == "0o750" and oct(mode(tmp_path / "out" / "data.txt")) == "0o640"


def test_staged_dir_replaces_the_whole_folder_and_leaves_nothing_beside_it(tmp_path):
    final = tmp_path / "out"
    stage_output(final, "first")
    with staged_dir(final) as tmp:
        (tmp / "other.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["other.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_dir_keeps_the_old_output_when_the_stage_fails(tmp_path):
    final = tmp_path / "out"
    stage_output(final, "good")
    with pytest.raises(RuntimeError, match="stage failed"), staged_dir(final) as tmp:
        (tmp / "result.txt").write_text("half")
        raise RuntimeError("stage failed")
    assert (final / "result.txt").read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_dir_puts_the_old_output_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    final = tmp_path / "out"
    stage_output(final, "good")
    real_replace = os.replace

    def second_rename_fails(src, dst):
        if Path(src).name.startswith(".out.staging."):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="No space left"):
        stage_output(final, "new")
    assert (final / "result.txt").read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["out"]


class Crash(BaseException):
    """The process dies here: nothing after it runs (a rollback included)."""


def test_next_staged_dir_restores_the_last_good_output_after_a_crash_between_the_renames(tmp_path, monkeypatch):
    final = tmp_path / "out"
    stage_output(final, "good")
    real_replace = os.replace
    calls = []

    def crash_after_first_rename(src, dst):
        if calls:
            raise Crash()
        calls.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_after_first_rename)
    with pytest.raises(Crash):
        stage_output(final, "new")
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert not final.exists(), "the crash came between the renames"
    assert (tmp_path / f".out.old.{os.getpid()}" / "result.txt").read_text() == "good"
    with staged_dir(final) as tmp:
        assert (final / "result.txt").read_text() == "good", "restored before the next stage runs"
        (tmp / "result.txt").write_text("next")
    assert (final / "result.txt").read_text() == "next" and [p.name for p in tmp_path.iterdir()] == ["out"]


CRASHING_SWAP = """
import os, signal, sys
from pathlib import Path
import tasks.core.io as io

real_replace = os.replace

def killed_between_renames(src, dst):
    real_replace(src, dst)
    if ".old." in Path(dst).name:  # the first rename of the swap is done: die before the second
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = killed_between_renames
with io.staged_dir(Path(sys.argv[1])) as tmp:
    (tmp / "result.txt").write_text("new")
"""


def test_a_process_killed_between_the_renames_leaves_an_output_the_next_start_restores(tmp_path):
    final = tmp_path / "out"
    stage_output(final, "good")
    done = subprocess.run([sys.executable, "-c", CRASHING_SWAP, str(final)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not final.exists()
    assert sorted(item.kind for item in leftovers(final)) == ["old", "staging"]
    with staged_dir(final) as tmp:
        assert (final / "result.txt").read_text() == "good"
        assert [item.pid for item in leftovers(final)] == [os.getpid()], "the dead run's staging folder is gone"
        (tmp / "result.txt").write_text("next")
    assert (final / "result.txt").read_text() == "next" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_dir_removes_leftovers_of_dead_processes_and_keeps_those_of_live_ones(tmp_path):
    final = tmp_path / "out"
    stage_output(final, "good")
    dead, live = dead_pid(), os.getppid()
    for name in (f".out.staging.{dead}.abc", f".out.old.{dead}", ".out.staging.k2j4x9",
                 f".out.staging.{live}.xyz", f".out.old.{live}"):
        (tmp_path / name).mkdir()
    stage_output(final, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", f".out.staging.{live}.xyz",
                                                                  f".out.old.{live}"])
    assert (final / "result.txt").read_text() == "new"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="maps file descriptors to paths through /proc")
def test_staged_dir_fsyncs_every_staged_file_and_folder_before_the_swap(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    final = tmp_path / "out"
    with staged_dir(final) as tmp:
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(b"w" * 4096)
        (tmp / "result.txt").write_text("r")
        staged = [str(tmp / "model" / "weights.bin"), str(tmp / "result.txt"), str(tmp / "model"), str(tmp)]
    swap = events.index(("replace", str(tmp)))
    synced_before = {path for kind, path in events[:swap] if kind == "fsync"}
    assert set(staged) <= synced_before


def test_recover_swaps_restores_every_interrupted_stage_under_a_folder(tmp_path):
    artifacts = tmp_path / "artifacts"
    for stage in ("train", "gate", "evaluate"):
        stage_output(artifacts / stage, stage)
    dead = dead_pid()
    for stage in ("train", "gate"):  # both died between the renames
        (artifacts / stage).rename(artifacts / f".{stage}.old.{dead}")
        (artifacts / f".{stage}.staging.{dead}.q1w2e3").mkdir()
    assert recover_swaps(artifacts) == [artifacts / "gate", artifacts / "train"]
    assert {p.name: (p / "result.txt").read_text() for p in artifacts.iterdir()} == {
        "train": "train", "gate": "gate", "evaluate": "evaluate"}
    assert recover_swaps(artifacts) == [] and recover_swaps(tmp_path / "missing") == []
