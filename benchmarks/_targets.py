"""The house rule of the benchmarks: each prints its targets and says in its JSON line which pass.

A benchmark declares TARGETS as (key, comparison, bound) or (key, comparison, bound, note) tuples on keys of its
summary; `judge` checks them (a missing value fails), `with_targets` adds "targets" and "all_targets_pass" to the
summary, `target_lines` gives the printed "target KEY OP BOUND: VALUE -> VERDICT" lines.

A figure that varies from run to run is decided as the gate decides its checks: on all it can be, not on one value.
The summary then holds, beside KEY, either KEY_interval ([low, high], e.g. a bootstrap interval of an accuracy gap)
or KEY_rounds (the value of each round of a speed measured in rounds, the contenders interleaved: on a shared host a
speed varies more between rounds minutes apart than within one). PASS when all of it meets the bound, FAIL when none
of it does (or the value is missing), INCONCLUSIVE otherwise; only PASS passes. When the host's typical ratio sits on
the failing side, all of 5 rounds land on the passing side by chance at most 1 time in 32 (a sign test; rounds far
apart in time are the closer to independent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.io import write_json

CHECKS = {">=": lambda v, b: v >= b, "<=": lambda v, b: v <= b, "==": lambda v, b: v == b}


def judge(summary: dict, targets: tuple) -> dict[str, dict[str, Any]]:
    """Each target with its value, verdict and pass (a missing value fails); its interval or rounds and its note,
    when it has them."""
    checks = {}
    for key, op, bound, *note in targets:
        value = summary.get(key)
        spread = {name: summary[f"{key}_{name}"] for name in SPREADS if summary.get(f"{key}_{name}")}
        checks[key] = {"target": f"{op} {bound:g}", "value": value, **spread,
                       "verdict": verdict(value, [v for values in spread.values() for v in values],
                                          lambda v, b=bound, o=op: CHECKS[o](v, b))}
        checks[key]["pass"] = checks[key]["verdict"] == "PASS"
        if note:
            checks[key]["note"] = note[0]
    return checks


SPREADS = ("interval", "rounds")  # KEY_interval, KEY_rounds: what a target is decided on beside its value


def verdict(value: Any, spread: list, meets: Callable[[Any], bool]) -> str:
    """PASS when the value and all of its spread (interval ends, rounds) meet the bound, FAIL when the value is
    missing or none of them does, else INCONCLUSIVE."""
    if value is None:
        return "FAIL"
    met = [r is not None and bool(meets(r)) for r in spread or [value]]
    if all(met) and meets(value):
        return "PASS"
    return "INCONCLUSIVE" if any(met) else "FAIL"


def with_targets(summary: dict, targets: tuple) -> dict:
    """`summary` with "targets" (judge's checks) and "all_targets_pass" added."""
    summary["targets"] = judge(summary, targets)
    summary["all_targets_pass"] = all(check["pass"] for check in summary["targets"].values())
    return summary


def target_lines(checks: dict[str, dict[str, Any]]) -> list[str]:
    """One printed line per target: `target KEY OP BOUND (NOTE): VALUE [SPREAD] -> VERDICT`, SPREAD being its
    interval (`interval LOW, HIGH`) or its rounds (`N rounds: LOW-HIGH`)."""
    lines = []
    for key, check in checks.items():
        note = f" ({check['note']})" if "note" in check else ""
        spread = ""
        if "interval" in check:
            spread = f" [interval {check['interval'][0]}, {check['interval'][1]}]"
        elif len(check.get("rounds", ())) > 1:
            spread = f" [{len(check['rounds'])} rounds: {min(check['rounds'])}-{max(check['rounds'])}]"
        lines.append(f"  target {key} {check['target']}{note}: {check['value']}{spread} -> {check['verdict']}")
    return lines


def publish(result: dict, print_table: Callable[[dict], None], out: Path) -> dict:
    """A benchmark's ending: its table printed, its JSON kept at `out`, and its one JSON line printed last."""
    print_table(result)
    write_json(out, result)
    print(json.dumps(result))
    return result
