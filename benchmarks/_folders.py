"""Views of a served model folder for the benchmarks: the same model files, another reading rule."""

from __future__ import annotations

from pathlib import Path

from tasks.core.io import read_json, write_json
from tasks.runtime.files import SERVING_FILE


def folder_reading_by(folder: Path, rule: dict, view: Path) -> Path:
    """`view`: the served folder's files linked, its serving.json's long_text set to `rule` (the folder is not
    touched), so OnnxClassifier (and `tunegate serve --model VIEW`) reads long texts by `rule` exactly as a folder
    exported with it would."""
    view.mkdir()
    for item in folder.iterdir():
        if item.name != SERVING_FILE:
            (view / item.name).symlink_to(item.resolve())
    write_json(view / SERVING_FILE, {**read_json(folder / SERVING_FILE), "long_text": rule})
    return view
