"""One monitoring window judged: every configured check computed (or skipped, with why) against the reference."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import MonitorConfig
from tasks.judging.estimate import expected_accuracy
from tasks.monitoring import drift
from tasks.monitoring.domain import domain_auc
from tasks.monitoring.performance import drops, live_metrics
from tasks.monitoring.reference import Reference

# The order checks are reported in (params.yaml's monitor.checks order); a check absent from params is not run.
CHECK_ORDER = ("label_psi", "label_js", "confidence_ks", "length_ks", "unknown_rate", "oov_rate", "domain_auc",
               "estimated_accuracy_drop", "accuracy_drop", "macro_f1_drop")


@dataclass
class CheckResult:
    """One check: its value against its bound; skipped (value None, passed False) when it cannot be computed."""
    name: str
    value: float | None
    threshold: float
    severity: str  # "warning" or "alarm" (params' monitor.checks.<name>.severity)
    passed: bool
    evidence: str  # the figures behind the value, or why the check was skipped
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "passed" if self.passed else "failed"


@dataclass
class WindowJudgement:
    """The checks of one window [start, end) (UNIX seconds) of the prediction log, and what crossed its bound."""
    start: float
    end: float
    texts: int  # records in the window
    version: str  # the reference's (prod) version
    checks: list[CheckResult]
    judged: bool  # False when the window holds fewer than monitor.min_window_texts texts
    alarms: list[str] = field(default_factory=list)  # names of failed checks at severity alarm
    warnings: list[str] = field(default_factory=list)  # names of failed checks at severity warning
    served_versions: dict[str, int] = field(default_factory=dict)  # records per model_version in the window
    labelled_rows: int = 0
    # Accuracy expected from the window's top-class probabilities, no labels needed (window_estimate):
    # {value, low, high, rows, confidence}; None when not computed, and estimate_skipped says why (a sentence).
    estimate: dict[str, float] | None = None
    estimate_skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (each check with its status)."""
        payload = asdict(self)
        payload["checks"] = [{**asdict(c), "status": c.status} for c in self.checks]
        return payload


class _Skip(Exception):
    """Raised inside a check's computation: the check cannot be computed, for this reason."""


def _texts_of(records: list[dict], labelled: pd.DataFrame | None) -> tuple[list[str], str]:
    """The live texts (the log's, else a labelled batch's) and where they came from."""
    logged = [r["text"] for r in records if isinstance(r.get("text"), str)]
    if logged:
        return logged, f"{len(logged)} logged texts"
    if labelled is not None and "text" in labelled.columns and len(labelled):
        return [str(t) for t in labelled["text"]], f"{len(labelled)} labelled texts"
    raise _Skip("the prediction log holds no texts (serve.log_texts is off) and no labelled batch arrived")


def window_estimate(records: list[dict], gate_figures: dict | None) -> dict[str, float]:
    """The window's accuracy expected from its records' top-class probabilities (estimate.expected_accuracy), with
    its interval at the gate's level (gate.confidence, carried by the gate's figures, so it reads beside them)."""
    if gate_figures is None:
        raise _Skip("the gate's figures of the prod release are not available (they give the interval's level and "
                    "the baseline)")
    level = float(gate_figures["confidence"])
    found = expected_accuracy(np.array([r["confidence"] for r in records], dtype=float), level)
    return {**found, "confidence": level}


def estimate_baseline(gate_figures: dict) -> tuple[float, str]:
    """What the window's estimate is compared with: the gate's expected accuracy on test (mean top-class
    probability, measured as the window's is), else its test accuracy (decisions written before the gate measured
    the former); and a phrase naming which."""
    expected = gate_figures.get("expected_accuracy")
    if expected is not None:
        return float(expected["value"]), (f"the gate's expected accuracy {expected['value']:.3f} "
                                          f"[{expected['low']:.3f}, {expected['high']:.3f}] on "
                                          f"{gate_figures['rows']} test rows")
    accuracy = gate_figures["accuracy"]
    return float(accuracy["value"]), (f"the gate's test accuracy {accuracy['value']:.3f} on {gate_figures['rows']} "
                                      "rows (its decision holds no expected_accuracy)")


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _computations(records: list[dict], reference: Reference, cfg: MonitorConfig, labelled: pd.DataFrame | None,
                  gate_figures: dict | None, seed: int, estimate: dict[str, float] | None,
                  estimate_skipped: str) -> dict[str, Callable[[], tuple[float, str]]]:
    """Each check's computation: () -> (value, evidence), raising _Skip when it cannot be computed. `estimate`: the
    window's window_estimate, None when it could not be computed (`estimate_skipped` says why)."""
    names = reference.label_names
    live_shares = drift.shares([r["label"] for r in records], names)
    performance: dict[str, Any] = {}

    shared = f"predicted shares of {names}: live {_fmt(live_shares)} vs reference {_fmt(reference.predicted_shares)}"

    def label_psi():
        return drift.psi(reference.predicted_shares, live_shares), shared

    def label_js():
        return drift.js_distance(reference.predicted_shares, live_shares), shared

    def confidence_ks():
        live = np.array([r["confidence"] for r in records], dtype=float)
        statistic, p = drift.ks_statistic(live, reference.confidences)
        return statistic, (f"mean top-class probability live {live.mean():.3f} vs reference "
                           f"{reference.confidences.mean():.3f}; KS p-value {p:.3g}")

    def length_ks():
        live = np.array([r["tokens"] for r in records], dtype=float)
        statistic, p = drift.ks_statistic(live, reference.tokens)
        return statistic, (f"median tokens live {np.median(live):g} vs reference {np.median(reference.tokens):g}; "
                           f"truncated live {sum(bool(r.get('truncated')) for r in records)}/{len(records)}; "
                           f"KS p-value {p:.3g}")

    def unknown_rate():
        live = drift.unknown_rate([r["unknown_tokens"] for r in records], [r["tokens"] for r in records])
        return live - reference.unknown_rate, (f"unknown tokens per token live {live:.4f} vs reference "
                                               f"{reference.unknown_rate:.4f}")

    def oov_rate():
        texts, source = _texts_of(records, labelled)
        return drift.oov_rate(texts, reference.vocabulary), (f"{source} against {len(reference.vocabulary)} "
                                                             "training words")

    def domain():
        texts, source = _texts_of(records, labelled)
        try:
            found = domain_auc(texts, reference.texts, cfg.domain_folds, cfg.domain_max_texts, seed)
        except ValueError as exc:  # no word occurs in two texts (empty or symbol-only texts)
            raise _Skip(f"{source}: the domain classifier found no features ({exc})") from exc
        if found is None:
            raise _Skip(f"{source}: fewer than monitor.domain_folds ({cfg.domain_folds}) texts on a side")
        auc, spread = found
        per_side = min(len(texts), len(reference.texts), cfg.domain_max_texts)
        return auc, f"{source}; {per_side} texts per side, {cfg.domain_folds}-fold ROC-AUC {auc:.3f} ± {spread:.3f}"

    def estimated_accuracy_drop():
        if estimate is None or gate_figures is None:
            raise _Skip(estimate_skipped)
        baseline, named = estimate_baseline(gate_figures)
        return baseline - estimate["value"], (
            f"estimated accuracy {estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}] "
            f"({estimate['confidence']:.0%}, no labels: mean top-class probability of {estimate['rows']} texts) "
            f"vs {named}")

    def performance_drop(metric: str):
        def compute():
            if labelled is None or not len(labelled):
                raise _Skip("no labelled rows arrived in this window")
            if gate_figures is None:
                raise _Skip("the gate's test figures of the prod release are not available")
            if not performance:
                try:
                    performance.update(live_metrics(labelled, names, gate_figures, seed))
                except ValueError as exc:
                    raise _Skip(str(exc)) from exc
            live, gate = performance[metric], gate_figures[metric]
            return drops(performance, gate_figures)[f"{metric}_drop"], (
                f"live {metric} {live['value']:.3f} [{live['low']:.3f}, {live['high']:.3f}] on "
                f"{performance['rows']} labelled rows vs the gate's {gate['value']:.3f} "
                f"[{gate['low']:.3f}, {gate['high']:.3f}] on {gate_figures['rows']} test rows")
        return compute

    return {"label_psi": label_psi, "label_js": label_js, "confidence_ks": confidence_ks, "length_ks": length_ks,
            "unknown_rate": unknown_rate, "oov_rate": oov_rate, "domain_auc": domain,
            "estimated_accuracy_drop": estimated_accuracy_drop, "accuracy_drop": performance_drop("accuracy"),
            "macro_f1_drop": performance_drop("macro_f1")}


def run_check(name: str, compute: Callable[[], tuple[float, str]], cfg: MonitorConfig) -> CheckResult:
    """One check's result: failed when its value exceeds monitor.checks.<name>.max."""
    bound = cfg.checks[name]
    try:
        value, evidence = compute()
    except _Skip as why:
        return CheckResult(name, None, bound.max, bound.severity, False, f"skipped: {why}", skipped=True)
    passed = bool(np.isfinite(value)) and value <= bound.max
    return CheckResult(name, float(value), bound.max, bound.severity, passed, evidence)


def judge_window(records: list[dict], reference: Reference, cfg: MonitorConfig, *, labelled: pd.DataFrame | None,
                 gate_figures: dict | None, seed: int, start: float, end: float) -> WindowJudgement:
    """Judge one window's prediction-log records (and labelled rows: performance.labelled_frame columns) against the
    reference; a window with fewer than monitor.min_window_texts records is reported with every check skipped."""
    served = dict(Counter(str(r.get("model_version")) for r in records))
    rows = 0 if labelled is None else len(labelled)
    configured = [name for name in CHECK_ORDER if name in cfg.checks]
    if len(records) < cfg.min_window_texts:
        too_few = f"{len(records)} texts in the window, fewer than monitor.min_window_texts ({cfg.min_window_texts})"
        checks = [CheckResult(n, None, cfg.checks[n].max, cfg.checks[n].severity, False, f"skipped: {too_few}",
                              skipped=True) for n in configured]
        return WindowJudgement(start, end, len(records), reference.version, checks, False,
                               served_versions=served, labelled_rows=rows, estimate_skipped=too_few)
    estimate, estimate_skipped = None, ""
    try:
        estimate = window_estimate(records, gate_figures)
    except _Skip as why:
        estimate_skipped = str(why)
    computations = _computations(records, reference, cfg, labelled, gate_figures, seed, estimate, estimate_skipped)
    checks = [run_check(name, computations[name], cfg) for name in configured]
    failed = [c for c in checks if not c.passed and not c.skipped]
    return WindowJudgement(start, end, len(records), reference.version, checks, True,
                           alarms=[c.name for c in failed if c.severity == "alarm"],
                           warnings=[c.name for c in failed if c.severity == "warning"],
                           served_versions=served, labelled_rows=rows, estimate=estimate,
                           estimate_skipped=estimate_skipped)
