"""MkDocs hook: docs/params.md's reference tables, generated from the pydantic config so that they cannot drift.

Every field of `tasks.core.config.PipelineConfig` (one section per params.yaml section, in the model's order) becomes
a row: its dotted key, its type, its constraints (ge/le/gt/lt/min_length/pattern... from the FieldInfo metadata),
its value in params.yaml and its `description`. Nested models get their own dotted rows: `train.lora.r`, a list of
models `train.long_text.candidates[].stride` (one group per variant of a discriminated union), a dict of models
`monitor.checks.label_psi.max`. A field without a description fails the build, naming it (set
TUNEGATE_DOCS_ALLOW_MISSING_DESCRIPTIONS=1 to render such rows as "(no description)" while descriptions are being
written).
"""

from __future__ import annotations

import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

PLACEHOLDER = "<!-- params-reference -->"
PAGE = "params.md"
ROOT = Path(__file__).resolve().parents[2]  # docs/hooks/params_reference.py -> the repository root


class MissingDescription(Exception):
    """A config field has no `description=`: the params reference would have a hole."""


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if PLACEHOLDER not in markdown:
        raise MissingDescription(f"docs/{PAGE} lost its placeholder line {PLACEHOLDER}: the reference has nowhere to go")
    return markdown.replace(PLACEHOLDER, render_reference(ROOT))


def render_reference(root: Path) -> str:
    """The Markdown of every params.yaml section: a heading, the section's description and a table of its keys."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from ruamel.yaml import YAML
    from tasks.core.config import PipelineConfig

    params = YAML(typ="safe").load((root / "params.yaml").read_text())
    rows_by_section: list[tuple[str, str, list[tuple[str, ...]]]] = []
    missing: list[str] = []
    for name, field in PipelineConfig.model_fields.items():
        key = field.alias or name
        rows: list[tuple[str, ...]] = []
        section_doc = _description(field, key, missing)
        model = _model_of(field.annotation)
        if model is None:  # a scalar section (seed)
            rows.append(_row(key, field, params.get(key), missing))
        else:
            rows.extend(_walk(model, key + ".", params.get(key), missing))
            if model.__doc__ and not section_doc.strip():
                section_doc = model.__doc__.strip()
        rows_by_section.append((key, section_doc, rows))
    if missing and not os.environ.get("TUNEGATE_DOCS_ALLOW_MISSING_DESCRIPTIONS"):
        raise MissingDescription(
            f"{len(missing)} field(s) of tasks/core/config.py have no description= (the params reference needs "
            f"one for every key): {', '.join(missing)}")
    out = []
    for key, doc, rows in rows_by_section:
        out += [f"## {key}", ""]
        if doc:
            out += [doc, ""]
        out += ["| key | type | constraints | params.yaml | description |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


def _walk(model: type, prefix: str, value: Any, missing: list[str]) -> list[tuple[str, ...]]:
    """Rows of every field of `model` (and of the models inside it), keys under `prefix`."""
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = prefix + key
        here = value.get(key) if isinstance(value, dict) else None
        inside = _nested(field.annotation, path, here, missing)
        rows.append(_row(path, field, _ROWS_BELOW if inside else here, missing))
        rows.extend(inside)
    return rows


def _nested(annotation: Any, path: str, value: Any, missing: list[str]) -> list[tuple[str, ...]]:
    """Rows of the models an annotation holds: a model, a list of models (or of a union of them), a dict of models."""
    annotation = _strip(annotation)
    model = _model_of(annotation)
    if model is not None:
        return _walk(model, path + ".", value, missing)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args:
        variants = _models_in(args[0])
        if len(variants) == 1:
            return _walk_items(variants[0], path + "[].", value or [], missing)
        rows = []
        for variant in variants:  # a discriminated union: one group of rows per variant
            tag_field = next(iter(variant.model_fields))
            tag = typing.get_args(_strip(variant.model_fields[tag_field].annotation))
            label = f"{tag_field}={tag[0]}" if tag else variant.__name__
            items = [v for v in value or [] if isinstance(v, dict) and tag and v.get(tag_field) == tag[0]]
            rows.extend(_walk_items(variant, f"{path}[{label}].", items, missing))
        return rows
    if origin is dict and len(args) == 2:
        inner = _models_in(args[1])
        if len(inner) == 1:
            keys = typing.get_args(_strip(args[0])) or tuple((value or {}).keys())
            rows = []
            for k in keys:
                rows.extend(_walk(inner[0], f"{path}.{k}.", (value or {}).get(k), missing))
            return rows
    return []


def _walk_items(model: type, prefix: str, items: list, missing: list[str]) -> list[tuple[str, ...]]:
    """Rows of a model that appears as list items: the params.yaml column lists each item's value."""
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        values = [item.get(key, _ABSENT) if isinstance(item, dict) else _ABSENT for item in items]
        inside = _nested(field.annotation, prefix + key, None, missing)
        rows.append(_row(prefix + key, field, _ROWS_BELOW if inside else _ItemValues(values), missing))
        rows.extend(inside)
    return rows


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()
_ROWS_BELOW = object()  # a model (or list or dict of models): its keys have rows of their own


class _ItemValues(list):
    """The values one key takes across the items of a list in params.yaml."""


def _row(path: str, field: Any, value: Any, missing: list[str]) -> tuple[str, ...]:
    return (f"`{path}`", _type_name(field.annotation), _constraints(field), _value(value),
            _description(field, path, missing))


def _description(field: Any, path: str, missing: list[str]) -> str:
    if field.description:
        return " ".join(field.description.split())
    missing.append(path)
    return "*(no description)*"


def _constraints(field: Any) -> str:
    """ge/gt/le/lt, lengths and patterns of the field and of the items or values it holds; the default if any."""
    parts = _metadata_text(field.metadata)
    annotation = field.annotation
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            inner = [m for m in arg.__metadata__ if hasattr(m, "metadata")]
            for info in inner:
                parts += [f"each {p}" for p in _metadata_text(info.metadata)]
            if any(getattr(m, "discriminator", None) for m in arg.__metadata__):
                disc = next(m.discriminator for m in arg.__metadata__ if getattr(m, "discriminator", None))
                parts.append(f"items told apart by `{disc}`")
    for arg in typing.get_args(annotation):  # dict[K, Annotated[V, Field(...)]]
        for sub in typing.get_args(arg):
            if typing.get_origin(sub) is typing.Annotated:
                for info in sub.__metadata__:
                    if hasattr(info, "metadata"):
                        parts += [f"each {p}" for p in _metadata_text(info.metadata)]
    if not field.is_required():
        parts.append(f"optional (default {_value(field.default)})")
    return ", ".join(parts)


_SYMBOLS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤",
            "multiple_of": "multiple of"}


def _metadata_text(metadata: list) -> list[str]:
    parts = []
    for item in metadata:
        for attr, symbol in _SYMBOLS.items():
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return parts


def _type_name(annotation: Any) -> str:
    annotation = _strip(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _strip(annotation: Any) -> Any:
    """The type inside Annotated[...]."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_of(annotation: Any) -> type | None:
    annotation = _strip(annotation)
    from pydantic import BaseModel

    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _models_in(annotation: Any) -> list[type]:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) if (m := _model_of(a)) is not None]
    model = _model_of(annotation)
    return [model] if model is not None else []


def _value(value: Any) -> str:
    if isinstance(value, _ItemValues):
        shown = ["absent" if v is _ABSENT else _value(v) for v in value]
        if not shown:
            return ""
        return f"every item: {shown[0]}" if len(set(shown)) == 1 else "per item: " + ", ".join(shown)
    if value is _ROWS_BELOW:
        return "(rows below)"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    """A table cell: no line breaks; a pipe that is not already escaped is escaped."""
    text = " ".join(text.split())
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i:i + 2])
            i += 2
            continue
        out.append("\\|" if text[i] == "|" else text[i])
        i += 1
    return "".join(out)
