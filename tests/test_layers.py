"""The package graph, derived from the imports (those inside functions too): no circles, nothing imports upward."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.conftest import REPO

# Lowest first. A package may import its own layer's packages and those of lower layers, never a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tasks.core",),  # config, paths, I/O, errors: everything builds on it
    ("tasks.runtime", "tasks.contracts"),  # a served model without torch; the data contracts
    ("tasks.judging",),  # statistics, comparisons and the gate's report
    ("tasks.training", "tasks.registry", "tasks.tuning"),  # the torch training engine; the GTO registry; recipe search
    ("tasks.compression",),  # pruning, distillation, quantization
    # The stage shells (one per dvc.yaml stage), `tunegate validate`'s vetting, which runs two of them, and the
    # real model cross-fitted by the train stage's fit path (`tunegate label-issues`).
    ("tasks.validate", "tasks.prepare", "tasks.train", "tasks.distill", "tasks.evaluate", "tasks.export",
     "tasks.quantize", "tasks.gate", "tasks.vet", "tasks.crossfit"),
    ("tasks.serving", "tasks.monitoring"),  # the HTTP service; monitoring what it served
    ("flows",),  # Prefect flows and the CLI: wiring
)
LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def module_names() -> dict[str, Path]:
    """Every module of tasks/ and flows/ by dotted name (a package by its own name)."""
    found = {}
    for path in sorted([*REPO.glob("tasks/**/*.py"), *REPO.glob("flows/**/*.py")]):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@functools.cache  # the code parsed once a test run; callers only read the answer
def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, anywhere in its body."""
    modules = module_names()

    def ours(name: str) -> str | None:  # `from tasks.core import io` names the module tasks.core.io
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            targets |= {found for found in map(ours, names) if found and found != module}
        graph[module] = targets
    return graph


def package_of(module: str) -> str:
    """tasks.serving.app -> tasks.serving; tasks.gate -> tasks.gate; flows.cli -> flows."""
    parts = module.split(".")
    return "flows" if parts[0] == "flows" else ".".join(parts[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_has_a_layer():
    packages = {package_of(module) for module in module_names()} - {"tasks"}
    assert packages == set(LAYER_OF), f"give {sorted(packages - set(LAYER_OF))} a layer; drop {sorted(set(LAYER_OF) - packages)}"


def test_no_module_imports_a_package_of_a_higher_layer():
    upward = sorted(f"{module} imports {target}" for module, targets in import_graph().items()
                    for target in targets if package_of(module) in LAYER_OF and package_of(target) in LAYER_OF
                    and LAYER_OF[package_of(target)] > LAYER_OF[package_of(module)])
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_circles_between_modules_or_packages():
    graph = import_graph()
    assert cycles(graph) == [], "modules importing each other, directly or round a circle"
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module))
    assert cycles(packages) == [], "packages importing each other, directly or round a circle"


def test_cycles_finds_a_circle_and_only_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []
