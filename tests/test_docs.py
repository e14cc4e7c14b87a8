"""The documentation as a product: README.md and the MkDocs site in docs/ build strictly, link to what exists, read as
reference rather than a lab log, and their runnable shell blocks run on a reproduced project."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, copy_project

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 300
# An HTML comment (invisible on GitHub and in the built site) on the line right before a ```bash block: the smoke test
# runs that block in a copy of a reproduced tiny-model project.
MARKER = "<!-- runnable -->"
MIN_RUNNABLE_BLOCKS = 6
BLOCK_TIMEOUT_S = 180


def shown(path: Path) -> str:
    """A path as the failure messages name it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def doc_files() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    source: str

    @property
    def where(self) -> str:
        return f"{shown(self.path)}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w-]*)")


def marked_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The blocks marked runnable in one file, and the markers not followed by a bash/sh block (each a problem)."""
    lines = path.read_text().splitlines()
    blocks, problems = [], []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        opening = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not opening or opening.group(3) not in ("bash", "sh"):
            problems.append(f"{shown(path)}:{i + 1}: {MARKER} is not directly followed by a ```bash block")
            continue
        indent, fence = opening.group(1), opening.group(2)
        body = []
        for j in range(i + 2, len(lines)):
            if lines[j].strip() == fence:
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
        else:
            problems.append(f"{shown(path)}:{i + 2}: runnable block never closed")
            continue
        blocks.append(Block(path, i + 2, "\n".join(body) + "\n"))
    return blocks, problems


def all_marked_blocks() -> list[Block]:
    return [block for path in doc_files() for block in marked_blocks(path)[0]]


BLOCKS = all_marked_blocks()


def prose(text: str) -> str:
    """The text without fenced blocks that show program output (fences with no language), which quote what a
    command prints rather than what the docs say."""
    out, inside = [], None
    for line in text.splitlines():
        opening = FENCE.match(line)
        if inside is None and opening:
            inside = (opening.group(2), opening.group(3))
            out.append("" if not opening.group(3) else line)
            continue
        if inside is not None and line.strip() == inside[0]:
            inside = None
            out.append("")
            continue
        out.append("" if inside is not None and not inside[1] else line)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------------
# The site builds, strictly (broken links and anchors fail it), and its params reference is complete.

@pytest.mark.heavy
def test_site_builds_strictly_and_the_params_page_names_every_params_section(tmp_path):
    from ruamel.yaml import YAML

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("TUNEGATE_DOCS_ALLOW_MISSING_DESCRIPTIONS", None)  # a field without a description must fail the build
    done = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    page = (site / "params" / "index.html").read_text()
    sections = list(YAML(typ="safe").load((REPO / "params.yaml").read_text()))
    assert sections, "params.yaml has no sections"
    missing = [s for s in sections if f'id="{s}"' not in page or f"<code>{s}" not in page]
    assert not missing, f"the built params reference has no section for {missing}"
    assert "<!-- params-reference -->" not in page, "the hook did not replace the placeholder"


def load_hook():
    """docs/hooks/params_reference.py, the MkDocs hook that renders the params reference."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("params_reference", DOCS / "hooks" / "params_reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_params_reference_has_a_dotted_row_for_nested_keys():
    rendered = load_hook().render_reference(REPO)
    for key in ("train.lora.r", "train.long_text.candidates[rule=window].stride", "distill.transfer.sources",
                "monitor.checks.label_psi.max", "serve.max_queue_wait_ms", "seed"):
        assert f"| `{key}` |" in rendered, key


def test_params_reference_refuses_a_field_without_a_description(monkeypatch):
    from tasks.core.config import LoraConfig

    hook = load_hook()
    monkeypatch.delenv("TUNEGATE_DOCS_ALLOW_MISSING_DESCRIPTIONS", raising=False)
    monkeypatch.setattr(LoraConfig.model_fields["dropout"], "description", None)
    with pytest.raises(hook.MissingDescription, match=r"train\.lora\.dropout"):
        hook.render_reference(REPO)


# ---------------------------------------------------------------------------------------------------------------------
# README stays short; every relative link points at a file that exists (and at a heading that exists).

def test_readme_is_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(path: Path) -> list[str]:
    """Markdown link targets outside code (fenced blocks and inline code spans)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def page_markdown(path: Path) -> str:
    """A page's Markdown as the site renders it: the params reference with the hook's generated sections in place."""
    text = path.read_text()
    if path.resolve() == (DOCS / "params.md").resolve():
        hook = load_hook()
        text = text.replace(hook.PLACEHOLDER, hook.render_reference(REPO))
    return text


def anchors(path: Path) -> set[str]:
    """The heading ids a Markdown page gets (the toc extension's slugs, duplicates numbered) plus `{#id}` attributes."""
    from markdown.extensions.toc import slugify, unique

    ids: set[str] = set()
    text = re.sub(r"```.*?```", "", page_markdown(path), flags=re.DOTALL)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        explicit = re.search(r"\{\s*#([\w-]+)[^}]*\}\s*$", heading)
        if explicit:
            ids.add(explicit.group(1))
            continue
        plain = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
        ids.add(unique(slugify(plain, "-"), ids))
    return ids


def test_every_relative_link_points_at_a_file_that_exists():
    broken = []
    for path in doc_files():
        for target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (http:, mailto:) or an anchor on the same page (mkdocs checks those)
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve()
            if not resolved.exists():
                broken.append(f"{shown(path)}: {target} (no {resolved})")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{shown(path)}: {target} (no heading #{anchor} in {file})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_into_every_page_of_the_site_nav():
    from ruamel.yaml import YAML

    def pages(nav) -> list[str]:
        found = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += pages(value) if isinstance(value, list) else [value]
        return found

    nav = pages(YAML(typ="safe").load((REPO / "mkdocs.yml").read_text())["nav"])
    linked = {Path(t.partition("#")[0]).as_posix() for t in links(README)}
    missing = [page for page in nav if f"docs/{page}" not in linked]
    assert not missing, f"README.md does not link to {missing}"


# ---------------------------------------------------------------------------------------------------------------------
# The docs read as reference and guide, not as a lab log.

FORBIDDEN = {
    "an issue number": r"\bissues? #?\d+",
    "an issue reference like #23": r"(?<![\w&/#])#\d{1,5}\b",
    "a stop of a work log": r"\bstops? \d+\b",
    "a work session": r"\b(?:this|that|last|previous|earlier) session\b",
    "'this host' instead of the hardware": r"\bthis (?:\d+-core )?(?:host|machine|box)\b",
    "the project's hosts": r"\bthis project's (?:\d+-core )?(?:CPU )?hosts?\b",
    "hardware lent to the authors": r"\blent\b",
    "a machine that was not drawn": r"\bnot (?:been )?drawn\b",
    "the authors' diary": r"\bwe (?:tried|measured|found|ran|saw|noticed|decided|fixed|added|changed|removed)\b",
    "a GPU (un)available to the authors": (r"\b(?:has|have) not (?:yet )?(?:run|been run) on a GPU\b"
                                          r"|\bno GPU (?:was |is )?(?:available|at hand)\b"),
    "a relative date": r"\b(?:yesterday|today|tonight|this morning|last night|this week)\b",
    "a pointer outside the repository": r"shared/DESIGN\.md",
}


def test_no_lab_log_text_in_readme_or_docs():
    found = []
    for path in doc_files():
        for number, line in enumerate(prose(path.read_text()).splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                for match in re.finditer(pattern, line, flags=re.IGNORECASE):
                    found.append(f"{shown(path)}:{number}: {what}: {match.group(0)!r} in {line.strip()!r}")
    assert not found, "lab-log text:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "measured before issues 10 and 11", "see issue 18", "fixed in #23", "this session's make run",
    "on this host", "on this 2-core host", "the GPU was lent for a day", "the task was not drawn", "we tried three",
    "It has not yet run on a GPU host", "See `../shared/DESIGN.md`.", "stop 29",
])
def test_the_lab_log_patterns_catch_the_diary_style(text):
    assert any(re.search(p, text, flags=re.IGNORECASE) for p in FORBIDDEN.values()), text


@pytest.mark.parametrize("text", [
    "`tunegate#prod#3` moves prod to a version", "a session of its own", "onnxruntime sessions share one pool",
    "our train loop vs the HF Trainer", "AMD EPYC, AVX-512 VNNI, 2 cores, 2026-12-06", "rerun it; the next run",
    "the serving host re-checks the certificate", "tunegate#prod#N",
])
def test_the_lab_log_patterns_leave_reference_text_alone(text):
    assert not any(re.search(p, text, flags=re.IGNORECASE) for p in FORBIDDEN.values()), text


# ---------------------------------------------------------------------------------------------------------------------
# Runnable blocks: enough of them, each well formed, and each runs on a reproduced project.

def test_enough_blocks_are_marked_runnable_and_every_marker_marks_a_block():
    problems = [p for path in doc_files() for p in marked_blocks(path)[1]]
    assert not problems, "\n".join(problems)
    assert len(BLOCKS) >= MIN_RUNNABLE_BLOCKS, (
        f"{len(BLOCKS)} blocks are marked {MARKER} in README.md and docs/ (at least {MIN_RUNNABLE_BLOCKS})")
    assert all(block.source.strip() for block in BLOCKS), "an empty runnable block"
    # Under pipefail, `cmd | head` fails whenever head exits before cmd has written everything (SIGPIPE): flaky.
    early_exits = [block.where for block in BLOCKS if re.search(r"\|\s*head\b", block.source)]
    assert not early_exits, f"runnable blocks piping into head (flaky under pipefail): {early_exits}"


def test_marked_blocks_are_found_where_they_are(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"text\n{MARKER}\n```bash\necho one\n```\n\n{MARKER}\n\n```bash\necho two\n```\n"
                    f"  {MARKER}\n  ```bash\n  echo three\n  ```\n")
    blocks, problems = marked_blocks(page)
    assert [(b.line, b.source) for b in blocks] == [(3, "echo one\n"), (13, "echo three\n")]
    assert len(problems) == 1 and ":7:" in problems[0]  # a blank line between marker and block is a mistake


@pytest.fixture
def reproduced_project(registry_template, tmp_path) -> Path:
    """A copy of the reproduced tiny-model project (git + DVC, reproduced by the flow and committed, a DVC remote of
    its own, the gate's verdict PROMOTE): what a user has after `make run`."""
    return copy_project(registry_template, tmp_path / "project")


@pytest.mark.e2e
@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_runnable_block_runs_on_a_reproduced_project(block, reproduced_project):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(reproduced_project), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.source], cwd=reproduced_project, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as late:
        pytest.fail(f"{block.where}: still running after {BLOCK_TIMEOUT_S} s:\n{block.source}\n--- output ---\n"
                    f"{late.stdout or ''}{late.stderr or ''}")
    assert done.returncode == 0, (f"{block.where}: exit {done.returncode}:\n{block.source}\n--- output ---\n"
                                  f"{done.stdout}{done.stderr}")
