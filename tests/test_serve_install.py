"""The serving install (requirements/serve.txt + `pip install --no-deps .`) is enough for `tunegate serve`:
the service's import closure pulls none of the pipeline's heavy packages, and every third-party module it
imports at module level comes from a distribution that file lists, at the range pyproject.toml declares."""

import ast
import json
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO
from tests.test_imports import LOCAL_PACKAGES, distribution_key, installed_owners

SERVE_REQUIREMENTS = REPO / "requirements" / "serve.txt"
# What `tunegate serve` loads: the CLI package with every command group (its parser builds them all, the serve
# command among them) and the service's modules.
SERVE_ENTRY_MODULES = [
    "flows.cli", *(f"flows.cli.{group}" for group in (
        "pipeline", "scoring", "serving", "promotion", "registry", "monitoring")),
    "tasks.runtime.settings", *(f"tasks.serving.{name}" for name in (
        "scoring", "batcher", "source", "predlog", "reload", "metrics", "app", "service"))]
# The pipeline's packages the container does not install (import names).
FORBIDDEN = ("torch", "transformers", "prefect", "dvc", "gto", "great_expectations", "pandas",
             "pyarrow", "scipy", "matplotlib", "onnx", "peft", "accelerate", "dvclive", "scmrepo", "dask")


def requirement_parts(requirement: str) -> tuple[str, str]:
    """(normalised distribution name with its extras, specifiers sorted): two spellings of one range compare equal."""
    spec = requirement.split(";")[0].replace(" ", "")
    name_end = next((i for i, ch in enumerate(spec) if ch in "<>=!~"), len(spec))
    name, specifiers = spec[:name_end], spec[name_end:]
    base, _, extras = name.partition("[")
    extras = ",".join(sorted(e for e in extras.rstrip("]").split(",") if e))
    key = distribution_key(base) + (f"[{extras}]" if extras else "")
    return key, ",".join(sorted(s for s in specifiers.split(",") if s))


def serve_requirements() -> dict[str, str]:
    """requirements/serve.txt as {name[extras]: specifiers} (comments and blank lines skipped)."""
    lines = (line.split("#")[0].strip() for line in SERVE_REQUIREMENTS.read_text().splitlines())
    return dict(requirement_parts(line) for line in lines if line)


def module_file(module: str):
    """The source file of one of our modules (package __init__ or module.py), None when it does not exist."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the file is imported: top-level statements, `if`/`try` blocks included, function
    bodies and `if TYPE_CHECKING:` blocks left out."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]  # `from tasks.serving import app`
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def serve_closure() -> tuple[set[str], dict[str, set[str]]]:
    """Our modules the serve entry modules import at module level (transitively, parent packages included),
    and the third-party top-level modules they import -> the files importing them."""
    ours, third_party, pending = set(), {}, list(SERVE_ENTRY_MODULES)
    while pending:
        module = pending.pop()
        if module in ours:
            continue
        path = module_file(module)
        if path is None:
            continue  # `from pkg import name` where name is not a module
        ours.add(module)
        parts = module.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        for imported in module_level_imports(ast.parse(path.read_text(), str(path))):
            top = imported.partition(".")[0]
            if top in LOCAL_PACKAGES:
                pending.append(imported)
            elif top not in sys.stdlib_module_names:
                third_party.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return ours, third_party


def test_serve_closure_covers_every_serving_module():
    ours, _ = serve_closure()
    assert set(SERVE_ENTRY_MODULES) <= ours, f"missing serving modules: {set(SERVE_ENTRY_MODULES) - ours}"


@pytest.mark.heavy
def test_serve_install_provides_every_module_level_import_of_the_service():
    listed = {name.partition("[")[0] for name in serve_requirements()}
    owners = installed_owners()
    _, third_party = serve_closure()
    unprovided = {module: f"{sorted(owners.get(module, ['(not installed)']))} imported in {sorted(files)}"
                  for module, files in third_party.items()
                  if not {distribution_key(d) for d in owners.get(module, [])} & listed}
    assert unprovided == {}


@pytest.mark.heavy
def test_serve_install_lists_no_pipeline_package():
    listed = {name.partition("[")[0] for name in serve_requirements()}
    owners = installed_owners()
    heavy = {distribution_key(d) for module in FORBIDDEN for d in owners.get(module, [module])}
    assert listed & heavy == set()


def test_serve_install_ranges_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # onnxruntime is the cpu extra's (a GPU host swaps in onnxruntime-gpu, as the gpu extra does).
    declared = dict(requirement_parts(r) for r in project["dependencies"] + project["optional-dependencies"]["cpu"])
    served = serve_requirements()
    assert {name: declared.get(name) for name in served} == served


def test_serve_install_lists_only_what_the_service_imports():
    """Every listed distribution is imported somewhere in the service's files (lazily counts: ruamel.yaml reads
    params.yaml inside a function), so the file does not grow a package serving never uses."""
    ours, _ = serve_closure()
    owners = installed_owners()
    imported = set()
    for module in ours:
        for node in ast.walk(ast.parse(module_file(module).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    provided = {distribution_key(d) for module in imported for d in owners.get(module, [])}
    assert {name.partition("[")[0] for name in serve_requirements()} - provided == set()


_IMPORT_SERVE = """
import json, sys
import flows.cli
try:
    flows.cli.build_parser().parse_args(["serve", "--help"])
except SystemExit as done:
    assert done.code == 0, done.code
import tasks.serving.app, tasks.serving.service
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


@pytest.mark.heavy
def test_tunegate_serve_imports_none_of_the_pipeline_packages():
    done = subprocess.run([sys.executable, "-c", _IMPORT_SERVE], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: tunegate serve" in done.stdout
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert loaded & set(FORBIDDEN) == set()
