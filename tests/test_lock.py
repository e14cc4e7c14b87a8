"""The locks (requirements/lock/{cpu,gpu,serve}.txt) agree with the ranges they were resolved from, pin every
package with hashes, and are what `make setup` installs; run records name the lock."""

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tasks.core.environment import (LOCK_FOLDER, compare_with_lock, distribution_name, environment_record,
                                    installed_versions, lock_pins)
from tests.conftest import REPO

# The platform the locks were resolved for (make lock: --python-version 3.11 --python-platform x86_64-manylinux).
LOCK_PLATFORM = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def profile_requirements(profile: str) -> list[Requirement]:
    """What a profile's lock was resolved from: pyproject's dependencies + its extras, or requirements/serve.txt."""
    if profile == "serve":
        lines = [line.split("#")[0].strip() for line in (REPO / "requirements" / "serve.txt").read_text().splitlines()]
    else:
        extras = PYPROJECT["optional-dependencies"]
        lines = PYPROJECT["dependencies"] + extras[profile] + extras["dev"]
    requirements = [Requirement(line) for line in lines if line]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(LOCK_PLATFORM)]


def lock_text(profile: str) -> str:
    return (LOCK_FOLDER / f"{profile}.txt").read_text()


@pytest.mark.parametrize("profile", ["cpu", "gpu", "serve"])
def test_each_lock_pins_every_requirement_within_the_range_it_was_resolved_from(profile):
    pins = lock_pins(lock_text(profile))
    disagreements = []
    for requirement in profile_requirements(profile):
        name = distribution_name(requirement.name)
        if name not in pins:
            disagreements.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(Version(pins[name]), prereleases=True):
            disagreements.append(f"{requirement}: the lock pins {pins[name]}")
    assert not disagreements, f"requirements/lock/{profile}.txt disagrees with its ranges (run `make lock`): " \
                              f"{disagreements}"


def test_the_range_check_catches_a_pin_outside_its_range():
    """The check above can fail: a lock pinning pydantic 1.x breaks pyproject's `pydantic>=2.10,<3`."""
    requirement = next(r for r in profile_requirements("cpu") if r.name == "pydantic")
    stale = lock_pins(re.sub(r"^pydantic==\S+", "pydantic==1.10.0", lock_text("cpu"), flags=re.MULTILINE))
    assert not requirement.specifier.contains(Version(stale["pydantic"]))


@pytest.mark.parametrize("profile", ["cpu", "gpu", "serve"])
def test_every_locked_package_carries_a_hash(profile):
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock_text(profile))
    unhashed = [block.split()[0] for block in blocks
                if re.match(r"[A-Za-z0-9]\S*==", block) and "--hash=sha256:" not in block]
    assert not unhashed


def test_the_cpu_lock_takes_the_cpu_build_of_torch_and_the_gpu_lock_the_cuda_one():
    cpu, gpu = lock_pins(lock_text("cpu")), lock_pins(lock_text("gpu"))
    assert cpu["torch"].endswith("+cpu") and "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "+" not in gpu["torch"] and "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


@pytest.mark.parametrize("profile", ["gpu", "serve"])
def test_the_other_locks_take_the_cpu_locks_versions_of_the_packages_they_share(profile):
    """The image and a GPU host run the versions the tests ran (torch aside: its build differs by profile)."""
    cpu, other = lock_pins(lock_text("cpu")), lock_pins(lock_text(profile))
    assert {name: (cpu[name], version) for name, version in other.items()
            if name in cpu and name != "torch" and cpu[name] != version} == {}


def test_the_comparison_names_what_differs_from_the_lock():
    pins = {"numpy": "2.3.0", "torch": "2.13.0+cpu"}
    assert compare_with_lock(pins, {"numpy": "2.3.0", "torch": "2.13.0+cpu", "tunegate": "0.1", "pip": "26"}) == {
        "matches": True, "differs": {}, "differs_count": 0, "not_in_lock": [], "not_in_lock_count": 0}
    changed = compare_with_lock(pins, {"numpy": "2.4.1", "six": "1.16.0"})
    assert changed["matches"] is False and changed["differs_count"] == 2
    assert changed["differs"]["numpy"] == {"locked": "2.3.0", "installed": "2.4.1"}
    assert changed["differs"]["torch"] == {"locked": "2.13.0+cpu", "installed": None}
    assert changed["not_in_lock"] == ["six"]


@pytest.mark.heavy
def test_the_environment_record_compares_with_what_pip_sees():
    """The record's view of the installed packages is pip's: same names, same versions."""
    listed = json.loads(subprocess.run([sys.executable, "-m", "pip", "list", "--format=json",
                                        "--disable-pip-version-check"], capture_output=True, text=True,
                                       check=True).stdout)
    pip_sees = {distribution_name(d["name"]): d["version"] for d in listed}
    assert installed_versions() == pip_sees
    record = environment_record()
    assert record["lock"] == f"requirements/lock/{record['profile']}.txt"
    expected = compare_with_lock(lock_pins(lock_text(record["profile"])), pip_sees)
    assert {key: record[key] for key in expected} == expected


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI sets up from the lock; a working copy may not")
def test_ci_tests_the_locked_environment():
    record = environment_record()
    assert record["matches"], f"the environment CI tests differs from {record['lock']}: {record['differs']}"


def test_a_run_record_names_the_lock_and_its_hash(tmp_path):
    import hashlib

    from tasks.core.paths import ArtifactPaths
    from tasks.core.runlog import write_run_record

    path = write_run_record(ArtifactPaths(tmp_path), "train", {"seconds": 1.0})
    environment = json.loads(path.read_text())["environment"]
    lock = REPO / environment["lock"]
    assert environment["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
