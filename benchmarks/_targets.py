"""The house rule of the benchmarks: each prints its targets and says in its JSON line which pass.

A benchmark declares TARGETS as (key, comparison, bound) or (key, comparison, bound, note) tuples on keys of its
summary; `judge` checks them (a missing value fails), `with_targets` adds "targets" and "all_targets_pass" to the
summary, `target_lines` gives the printed "target KEY OP BOUND: VALUE -> PASS/FAIL" lines.

A speed measured in rounds (a paired ratio per round, the contenders interleaved) varies with the shared host's state
more than within a round, so one figure of it decides nothing: the summary then also holds KEY_rounds, the value of
each round, and the target is decided on all of them, as the gate decides on an interval. PASS when every round meets
the bound, FAIL when none does (or the value is missing), INCONCLUSIVE otherwise; only PASS passes. When the host's
typical ratio sits on the failing side, all of 5 rounds land on the passing side by chance at most 1 time in 32 (a
sign test; rounds far apart in time are the closer to independent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.io import write_json

CHECKS = {">=": lambda v, b: v >= b, "<=": lambda v, b: v <= b, "==": lambda v, b: v == b}


def judge(summary: dict, targets: tuple) -> dict[str, dict[str, Any]]:
    """Each target with its value, verdict and pass (a missing value fails); its rounds' values and its note, when it
    has them."""
    checks = {}
    for key, op, bound, *note in targets:
        value, rounds = summary.get(key), summary.get(f"{key}_rounds")
        checks[key] = {"target": f"{op} {bound:g}", "value": value,
                       "verdict": verdict(value, rounds or [value], lambda v, b=bound, o=op: CHECKS[o](v, b))}
        checks[key]["pass"] = checks[key]["verdict"] == "PASS"
        if rounds:
            checks[key]["rounds"] = rounds
        if note:
            checks[key]["note"] = note[0]
    return checks


def verdict(value: Any, rounds: list, meets: Callable[[Any], bool]) -> str:
    """PASS when the value and every round meet the bound, FAIL when the value is missing or no round meets it,
    else INCONCLUSIVE."""
    met = [value is not None and r is not None and bool(meets(r)) for r in rounds]
    if value is None or not any(met):
        return "FAIL"
    return "PASS" if all(met) and meets(value) else "INCONCLUSIVE"


def with_targets(summary: dict, targets: tuple) -> dict:
    """`summary` with "targets" (judge's checks) and "all_targets_pass" added."""
    summary["targets"] = judge(summary, targets)
    summary["all_targets_pass"] = all(check["pass"] for check in summary["targets"].values())
    return summary


def target_lines(checks: dict[str, dict[str, Any]]) -> list[str]:
    """One printed line per target: `target KEY OP BOUND (NOTE): VALUE [rounds LOW-HIGH] -> VERDICT`."""
    lines = []
    for key, check in checks.items():
        note = f" ({check['note']})" if "note" in check else ""
        rounds = check.get("rounds")
        spread = f" [{len(rounds)} rounds: {min(rounds)}-{max(rounds)}]" if rounds and len(rounds) > 1 else ""
        lines.append(f"  target {key} {check['target']}{note}: {check['value']}{spread} -> {check['verdict']}")
    return lines


def publish(result: dict, print_table: Callable[[dict], None], out: Path) -> dict:
    """A benchmark's ending: its table printed, its JSON kept at `out`, and its one JSON line printed last."""
    print_table(result)
    write_json(out, result)
    print(json.dumps(result))
    return result
