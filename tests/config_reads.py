"""Which params.yaml keys a piece of code reads: every config field it touches, recorded as a dotted key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel

from tasks.core import config


def section_keys(model: type[BaseModel] = config.PipelineConfig, key: str = "") -> dict[type, str]:
    """Each config class and the dotted key it sits at ('' for the whole config). A class found at two keys, or
    inside a list or dict (a reading rule, a drift check), is left out: the field holding it is recorded instead."""
    keys: dict[type, str] = {model: key}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, config._Section):
            for cls, inner in section_keys(kind, f"{key}.{field.alias or name}".lstrip(".")).items():
                keys[cls] = None if cls in keys else inner  # type: ignore[assignment]
    return {cls: inner for cls, inner in keys.items() if inner is not None}


@contextmanager
def recorded_reads() -> Iterator[set[str]]:
    """Record every field read from any config object of the pipeline while the block runs, as 'train.max_length',
    'seed', ...; a section dumped (into a stamp, say) reads each field its dump includes and does not exclude."""
    keys = section_keys()
    fields = {cls: {name: field.alias or name for name, field in cls.model_fields.items()} for cls in keys}
    reads: set[str] = set()
    plain = config._Section.__getattribute__

    def key(cls: type, field: str) -> str:
        return f"{keys[cls]}.{fields[cls][field]}".lstrip(".")

    def recording(self, name: str):
        cls = type(self)
        if cls in keys and name in fields[cls]:
            reads.add(key(cls, name))
        elif cls in keys and name in ("model_dump", "model_dump_json"):  # the fields it includes and keeps
            dump = plain(self, name)

            def recorded_dump(*args, include=None, exclude=None, **kwargs):
                reads.update(key(cls, field) for field in fields[cls]
                             if (include is None or field in include) and not dropped(field, exclude))
                return dump(*args, include=include, exclude=exclude, **kwargs)

            return recorded_dump
        return plain(self, name)

    config._Section.__getattribute__ = recording
    try:
        yield reads
    finally:
        del config._Section.__getattribute__


def dropped(field: str, exclude) -> bool:
    """Whether a model_dump `exclude` leaves the field out whole (a nested exclude still reads the field)."""
    if isinstance(exclude, dict):
        return exclude.get(field) is True
    return exclude is not None and field in exclude


def leaves(reads: set[str]) -> set[str]:
    """The keys read, less those read only on the way to a deeper one ('train' for 'train.max_length')."""
    return {r for r in reads if not any(other.startswith(f"{r}.") for other in reads)}


def covers(entry: str, key: str) -> bool:
    """A dvc.yaml params entry covers a key at it or under it ('train' covers 'train.max_length')."""
    return key == entry or key.startswith(f"{entry}.")
