"""The house rule of the benchmarks: each prints its targets and says in its JSON line which pass.

A benchmark declares TARGETS as (key, comparison, bound) or (key, comparison, bound, note) tuples on keys of its
summary; `judge` checks them (a missing value fails), `with_targets` adds "targets" and "all_targets_pass" to the
summary, `target_lines` gives the printed "target KEY OP BOUND: VALUE -> PASS/FAIL" lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.io import write_json

CHECKS = {">=": lambda v, b: v >= b, "<=": lambda v, b: v <= b, "==": lambda v, b: v == b}


def judge(summary: dict, targets: tuple) -> dict[str, dict[str, Any]]:
    """Each target with its value and pass/fail (a missing value fails); its note, when it has one."""
    checks = {}
    for key, op, bound, *note in targets:
        value = summary.get(key)
        checks[key] = {"target": f"{op} {bound:g}", "value": value,
                       "pass": value is not None and bool(CHECKS[op](value, bound))}
        if note:
            checks[key]["note"] = note[0]
    return checks


def with_targets(summary: dict, targets: tuple) -> dict:
    """`summary` with "targets" (judge's checks) and "all_targets_pass" added."""
    summary["targets"] = judge(summary, targets)
    summary["all_targets_pass"] = all(check["pass"] for check in summary["targets"].values())
    return summary


def target_lines(checks: dict[str, dict[str, Any]]) -> list[str]:
    """One printed line per target: `target KEY OP BOUND (NOTE): VALUE -> PASS|FAIL`."""
    lines = []
    for key, check in checks.items():
        note = f" ({check['note']})" if "note" in check else ""
        lines.append(f"  target {key} {check['target']}{note}: {check['value']} -> "
                     f"{'PASS' if check['pass'] else 'FAIL'}")
    return lines


def publish(result: dict, print_table: Callable[[dict], None], out: Path) -> dict:
    """A benchmark's ending: its table printed, its JSON kept at `out`, and its one JSON line printed last."""
    print_table(result)
    write_json(out, result)
    print(json.dumps(result))
    return result
