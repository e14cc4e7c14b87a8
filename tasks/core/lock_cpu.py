"""Which CPU each stage in dvc.lock was recorded on: a small git-tracked JSON beside dvc.lock, so a run on
another instruction set can say why dvc.lock changed (training there gives other bytes from train on).

The flow writes a stage's entry when it changes the stage's dvc.lock entry (an entry reproduced byte for byte
keeps the CPU it came from); `dvc repro` through `tunegate stage` writes it for every stage DVC reruns. The
record is not DVC-tracked and holds no times or host names, and an entry of the same numeric kind (same
machine and numeric flags, tasks.core.host.same_numerics) is kept as it is: rerunning on such a host leaves
the file byte-identical, as it leaves dvc.lock.

train's stamp.json (DVC-tracked) does not name the CPU: another instruction set already gives other model
bytes, so the CPU in it would tell nothing the model's hash does not; hosts of one kind under other model
names must write the same stamp; and with CUDA the CPU decides nothing. The run record names it
(tasks/core/runlog.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.config import STAGES
from tasks.core.errors import TunegateError
from tasks.core.host import cpu_facts, same_numerics
from tasks.core.io import write_json
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import git_output

FORMAT = 1
# What the record keeps of cpu_facts(): the numeric facts that decide the bytes, and the model name people read.
RECORDED_FACTS = ("machine", "model", "flags", "kind")


class LockCpuRecordError(TunegateError):
    """The CPU record beside dvc.lock is not one this version reads."""


def parse_lock_cpus(text: str, source: str) -> dict[str, dict[str, Any]]:
    """{stage: cpu facts} from the record's JSON text; `source` names where it came from, for the error."""
    try:
        record = json.loads(text)
        stages = record["stages"]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise LockCpuRecordError(f"{source} is not a CPU record of dvc.lock (expected JSON with a 'stages' "
                                 f"mapping): {exc}") from exc
    if not isinstance(stages, dict) or not all(isinstance(facts, dict) for facts in stages.values()):
        raise LockCpuRecordError(f"{source}: 'stages' must map each stage name to its CPU facts")
    return stages


def lock_cpus_on_disk(paths: ArtifactPaths) -> dict[str, dict[str, Any]]:
    """The record in the work tree ({} when there is none)."""
    path = paths.lock_cpu
    return parse_lock_cpus(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else {}


def committed_lock_cpus(paths: ArtifactPaths) -> dict[str, dict[str, Any]]:
    """The record as committed at git HEAD (what came with the committed dvc.lock); the work tree's when the
    project is not a git repository or HEAD has none."""
    # "./": relative to the project folder, which may sit below the repository's top level.
    name = f"./{paths.lock_cpu.relative_to(paths.root).as_posix()}"
    committed = git_output(paths.root, "show", f"HEAD:{name}")  # None: no git here, or HEAD has none
    if committed is None:
        return lock_cpus_on_disk(paths)
    return parse_lock_cpus(committed, f"HEAD:{name}")


def stage_order(stage: str) -> tuple[int, str]:
    """Pipeline order first (a stage DVC knows but the flow does not goes last, by name)."""
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), stage)


def record_lock_cpu(paths: ArtifactPaths, stage: str, host: dict[str, Any] | None = None) -> None:
    """Note that `stage` was (or is about to be) recorded in dvc.lock on `host` (this host by default). An entry
    of the same numeric kind is kept as it is: the stage's bytes are the same, and the file stays unchanged."""
    host = cpu_facts() if host is None else host
    stages = lock_cpus_on_disk(paths)
    if stage in stages and same_numerics(stages[stage], host):
        return
    stages[stage] = {name: host.get(name) for name in RECORDED_FACTS}
    write_json(paths.lock_cpu, {"format": FORMAT,
                                "about": "the CPU each stage in dvc.lock was recorded on (written by tunegate run "
                                         "and by dvc repro through tunegate stage)",
                                "stages": {name: stages[name] for name in sorted(stages, key=stage_order)}})


def cpu_words(facts: dict[str, Any]) -> str:
    """A CPU as people name it: its numeric kind and model, e.g. "avx512_vnni+amx, Intel(R) Xeon(R) ..."."""
    return f"{facts.get('kind') or 'unknown kind'}, {facts.get('model') or 'unknown model'}"


def foreign_lock_cpus(recorded: dict[str, dict[str, Any]], host: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct CPUs in `recorded` whose numerics differ from `host`'s, in the order of their first stage."""
    foreign = [recorded[stage] for stage in sorted(recorded, key=stage_order)
               if not same_numerics(recorded[stage], host)]
    return [facts for i, facts in enumerate(foreign) if facts not in foreign[:i]]


def foreign_lock_note(recorded: dict[str, dict[str, Any]], host: dict[str, Any]) -> list[str]:
    """The run summary's lines when the committed dvc.lock came from a CPU of other numerics ([] otherwise)."""
    foreign = foreign_lock_cpus(recorded, host)
    if not foreign:
        return []
    return [f"dvc.lock was committed from {' and '.join(cpu_words(f) for f in foreign)}; "
            f"this host is {cpu_words(host)}:",
            "training on another instruction set gives other bytes from train on; the verdict is re-earned here "
            "and the shipped model's parity certificate is re-checked where it is served."]
