"""What a recipe search chose and how hard it looked.

`tunegate tune --apply` writes the record to tuning.json (git-tracked, beside params.yaml); the gate copies it into
decision.json, so the gate's report and the model card say how many recipes were tried before the candidate reached
them. Without a search the file says so ({"search": null}). No Optuna here: the gate imports this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from tasks.core.config import lookup
from tasks.core.errors import TunegateError
from tasks.core.io import write_json

COMPLETE, PRUNED, FAILED, RUNNING = "COMPLETE", "PRUNED", "FAIL", "RUNNING"


class SelectionError(TunegateError, ValueError):
    """tuning.json is unreadable, or a study holds no finished trial to choose."""


@dataclass
class TrialRow:
    """One trial as the record and the table show it."""

    number: int
    state: str                      # COMPLETE | PRUNED | FAIL | RUNNING
    value: float | None             # the target stage's dev accuracy (last reported epoch when pruned)
    params: dict[str, Any]          # dotted key -> value
    experiment: str | None = None   # the DVC experiment's name
    seconds: float | None = None
    epochs: list[float] = field(default_factory=list)  # dev accuracy after each epoch (train trials)
    note: str = ""                  # why a trial failed or was cut


def no_search() -> dict[str, Any]:
    return {"search": None}


def read_selection(path: Path) -> dict[str, Any]:
    """tuning.json's record; {"search": null} when it says no search ran, or when there is no such file (a project
    whose stages run outside dvc.yaml, which lists the file as the gate's dependency)."""
    if not path.is_file():
        return no_search()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SelectionError(f"{path.name} is not JSON: {exc}") from exc
    if not isinstance(record, dict) or "search" not in record:
        raise SelectionError(f"{path.name} must be an object with a `search` key (null when no search ran)")
    return record


def summarize(rows: list[TrialRow], *, study: str, storage: str, target: str, space: dict[str, Any],
              default_number: int | None) -> dict[str, Any]:
    """The search's record: how many trials and how they ended, the best (ties to the earlier trial), the
    params.yaml recipe's own trial, and the spread of dev figures across finished trials."""
    finished = [row for row in rows if row.state == COMPLETE and row.value is not None]
    if not finished:
        raise SelectionError(f"study {study!r} has no finished trial to choose from "
                             f"({len(rows)} trial(s): {', '.join(sorted({r.state for r in rows})) or 'none'})")
    best = max(finished, key=lambda row: (row.value, -row.number))
    default = next((row for row in finished if row.number == default_number), None)
    values = [row.value for row in finished]
    return {
        "search": {
            "study": study, "storage": storage, "target": target, "metric": f"{target} dev accuracy",
            "space": space,
            "trials": len(rows),
            "complete": len(finished),
            "pruned": sum(row.state == PRUNED for row in rows),
            "failed": sum(row.state == FAILED for row in rows),
            "best": {"trial": best.number, "experiment": best.experiment, "dev": best.value, "params": best.params},
            "default": None if default is None else {"trial": default.number, "dev": default.value,
                                                     "params": default.params},
            "spread": {"min": min(values), "median": median(values), "max": max(values)},
        }
    }


def write_selection(path: Path, record: dict[str, Any]) -> None:
    write_json(path, record)


def gate_selection(record: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any] | None:
    """decision.json's `selection`: the search's record, and whether the models judged were trained with the
    chosen recipe (a search applied, then params.yaml edited by hand, is not the search that chose them)."""
    search = record.get("search")
    if not search:
        return None
    chosen = search["best"]["params"]
    differs = sorted(key for key, value in chosen.items() if lookup(trained, key) != value)
    return {**search, "applied": not differs, "differs": differs}


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4g}"
    return str(value)


def recipe_text(params: dict[str, Any]) -> str:
    """`learning_rate 1.2e-04, epochs 2`: the last part of each key, for tables and reports."""
    return ", ".join(f"{key.rpartition('.')[2]} {format_value(value)}" for key, value in params.items())


def selection_sentence(selection: dict[str, Any] | None) -> str:
    """One sentence for the gate's report and the model card."""
    if not selection:
        return ("No recipe search is recorded (tuning.json): params.yaml's recipe was trained once as written, so no "
                "dev figure here is the best of several tries.")
    spread, best, default = selection["spread"], selection["best"], selection.get("default")
    against = (f"; the params.yaml recipe it started from (trial {default['trial']}) scored {default['dev']:.4f}"
               if default else "")
    text = (f"A recipe search (study {selection['study']}) tried {selection['trials']} recipes "
            f"({selection['complete']} finished, {selection['pruned']} stopped early, {selection['failed']} failed); "
            f"the chosen one (trial {best['trial']}: {recipe_text(best['params'])}) scored "
            f"{selection['metric']} {best['dev']:.4f}{against}; across finished trials {spread['min']:.4f} to "
            f"{spread['max']:.4f}. The best of several tries flatters its dev figure; test was not read by the search.")
    if not selection.get("applied", True):
        text += (f" The models judged were not trained with the chosen values of {', '.join(selection['differs'])}: "
                 "params.yaml was changed after the search was applied.")
    return text
