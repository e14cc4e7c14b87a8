"""Which lock the running environment was installed from, for the run records.

`make setup` installs one lock per profile (requirements/lock/cpu.txt or gpu.txt: every package pinned with its
hashes). A run record names that lock by path and sha256 and lists the installed distributions that differ from
its pins, so a model's record says which exact wheels built it, and says so honestly when the environment was
changed by hand after set-up.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

# The locks sit beside the source tree (an editable install, as `make setup` makes); a wheel install has none.
LOCK_FOLDER = Path(__file__).resolve().parents[2] / "requirements" / "lock"
# A lock's pin lines: `name==version \` (uv pip compile's format; hashes and comments on the lines below).
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)
# Named at most in a record: enough to see what changed, short enough to read.
_SHOWN = 20


def distribution_name(name: str) -> str:
    """The normalised name of a distribution (PEP 503): `ruamel.yaml` and `Ruamel_YAML` are `ruamel-yaml`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """{normalised name: version} of every package a lock pins."""
    return {distribution_name(name): version for name, version in _PIN.findall(text)}


def installed_versions() -> dict[str, str]:
    """{normalised name: version} of every distribution the running interpreter sees."""
    return {distribution_name(dist.metadata["Name"]): dist.version for dist in distributions()
            if dist.metadata["Name"]}


def install_profile(installed: dict[str, str]) -> str:
    """The profile `make setup` chose: gpu where onnxruntime-gpu is installed, else cpu (as the Makefile does)."""
    return "gpu" if "onnxruntime-gpu" in installed else "cpu"


def compare_with_lock(pins: dict[str, str], installed: dict[str, str]) -> dict[str, Any]:
    """What differs between a lock's pins and the installed distributions (the project itself is not pinned)."""
    differs = {name: {"locked": version, "installed": installed.get(name)}
               for name, version in sorted(pins.items()) if installed.get(name) != version}
    unlocked = sorted(set(installed) - set(pins) - {"tunegate", "pip"})  # pip: the installer, not in a lock
    return {"matches": not differs, "differs": dict(list(differs.items())[:_SHOWN]), "differs_count": len(differs),
            "not_in_lock": unlocked[:_SHOWN], "not_in_lock_count": len(unlocked)}


@lru_cache(maxsize=1)
def environment_record() -> dict[str, Any]:
    """The lock this environment was installed from (path, sha256) and how the installed packages differ from it.

    Computed once per process: every stage's run record carries it, and the environment does not change mid-run.
    """
    installed = installed_versions()
    profile = install_profile(installed)
    lock = LOCK_FOLDER / f"{profile}.txt"
    if not lock.is_file():
        return {"lock": None, "profile": profile, "why": f"no lock at {lock} (not an editable install of the source)"}
    data = lock.read_bytes()
    return {"lock": f"requirements/lock/{profile}.txt", "profile": profile,
            "lock_sha256": hashlib.sha256(data).hexdigest(),
            **compare_with_lock(lock_pins(data.decode()), installed)}
