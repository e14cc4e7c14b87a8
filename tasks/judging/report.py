"""The gate's decision as a person reads it: the verdict first, then why, then the figures behind it."""

from __future__ import annotations

from typing import Any

from tasks.core.config import GateConfig
from tasks.judging.selection import selection_sentence
from tasks.judging.stats import CHECK_FAIL, CHECK_INCONCLUSIVE, CHECK_PASS


def format_span(figure: dict[str, float] | None, signed: bool = False) -> str:
    """value [low, high] to 4 decimals (n/a for a figure that is undefined, e.g. ROC-AUC of one class)."""
    if figure is None:
        return "n/a"
    form = "+.4f" if signed else ".4f"
    return f"{figure['value']:{form}} [{figure['low']:{form}}, {figure['high']:{form}}]"


def key_figure(decision: dict[str, Any]) -> str:
    """One line for the run summary: the verdict, the shipped accuracy and, when there is one, the comparison."""
    line = f"{decision['decision']}: shipped acc {format_span(decision['metrics']['accuracy'])}"
    comparison = decision.get("comparison")
    if comparison and comparison["rows"]:
        line += f", vs champion {format_span(comparison['differences']['accuracy'], signed=True)}"
    failed = [c["check"] for c in decision["checks"] if c["outcome"] == CHECK_FAIL]
    unsettled = [c["check"] for c in decision["checks"] if c["outcome"] == CHECK_INCONCLUSIVE]
    return (line + (f" (failed: {', '.join(failed)})" if failed else "")
            + (f" (not settled: {', '.join(unsettled)})" if unsettled else ""))


def _check_result(check: dict[str, Any]) -> str:
    """pass, FAIL, or INCONCLUSIVE with the test rows that would settle it."""
    if check["outcome"] != CHECK_INCONCLUSIVE:
        return "pass" if check["outcome"] == CHECK_PASS else "FAIL"
    needed = check["rows_needed"]
    return ("INCONCLUSIVE: on the bound" if needed is None else
            f"INCONCLUSIVE: about {needed} rows would settle it ({check['rows']} judged)")


def checks_table(decision: dict[str, Any]) -> list[str]:
    """Every check of the decision as a Markdown table, and how an interval check is read."""
    lines = ["| check | value | interval | rule | threshold | result |", "|---|---|---|---|---|---|"]
    for c in decision["checks"]:
        span = f"[{c['interval'][0]:.4f}, {c['interval'][1]:.4f}]" if "interval" in c else ""
        lines.append(f"| {c['check']} | {c['value']:.4f} | {span} | {c['rule']} | {c['threshold']:.4f} | "
                     f"{_check_result(c)} |")
    # Named as the decision names it: the student's drop when the student ships, the quantized drop otherwise.
    drops = [c["check"] for c in decision["checks"] if "interval" in c and "drop" in c["check"]]
    compared = f"the {drops[0]}" if drops else "an accuracy drop"
    return lines + ["", f"A check with an interval that compares two models ({compared}: the teacher's PyTorch model "
                        "- the shipped model, on the same rows) passes when the interval's upper end is within the "
                        "threshold, fails when its lower end is beyond it, and is inconclusive otherwise (the "
                        "decision is then INCONCLUSIVE unless something fails)."]


def _compute_cost(cost: dict[str, Any]) -> list[str]:
    """What one text costs the shipped model, counted on its graph (the budget check's figures)."""
    window, per_text = cost["window_macs"], cost["gmacs_per_text"]
    return [f"Counted, not timed: multiply-accumulates (MACs) of the graph's matrix products, one text per call "
            f"with all the windows its reading rule gives it. One window of L tokens costs {window['constant']:,} + "
            f"{window['per_token']:,} L + {window['per_token_pair']:,} L² MACs ({window['full_window'] / 1e9:.3f} "
            f"GMACs at the full {window['full_window_tokens']} tokens). Over the {cost['texts']} test texts: "
            f"{cost['windows_per_text']['mean']:.2f} windows per text on average (at most "
            f"{cost['windows_per_text']['max']}); GMACs per text mean {per_text['mean']:.3f}, p50 "
            f"{per_text['p50']:.3f}, p95 {per_text['p95']:.3f}, max {per_text['max']:.3f}. Measured batch-1 "
            "latencies (which vary with the host and its load, so they decide nothing) are in "
            "`.tunegate/runs/gate.json`."]


def _metrics(metrics: dict[str, Any], confidence: float) -> list[str]:
    lines = [f"| metric | value [{confidence:.0%} interval] |", "|---|---|",
             f"| accuracy | {format_span(metrics['accuracy'])} |",
             f"| macro-F1 | {format_span(metrics['macro_f1'])} |"]
    if metrics.get("roc_auc") is not None:
        lines.append(f"| ROC-AUC | {format_span(metrics['roc_auc'])} |")
    lines.append(f"| expected calibration error | {format_span(metrics['ece'])} |")
    if "expected_accuracy" in metrics:  # decisions written before calibrated serving lack it
        lines.append(f"| accuracy its probabilities expect | {format_span(metrics['expected_accuracy'])} |")
    for name, figures in metrics["per_class"].items():
        for measure in ("precision", "recall", "f1"):
            lines.append(f"| {name} {measure} (support {figures['support']}) | {format_span(figures[measure])} |")
    return lines


def _comparison(comparison: dict[str, Any] | None, decision: dict[str, Any]) -> list[str]:
    if comparison is None:
        return [f"No production model to compare with (nothing in the registry's prod stage and gate.champion is "
                f"null; gate.first_run: {decision['first_run']})."]
    champion = comparison["champion"]
    version = (f"version {champion['version']}" if champion["version"] else
               f"training run {champion['train_run']}" if champion["train_run"] else "no release.json")
    lines = [f"Champion `{champion['path']}` ({version}, model sha256 {champion['sha256'][:12]}…): "
             f"{comparison['scope']}.", ""]
    if not comparison["rows"]:
        return lines + ["No test row was judged by both models."]
    mcnemar = comparison["mcnemar"]
    lines += ["| candidate - champion | difference [interval] | SE |", "|---|---|---|"]
    for name, figure in comparison["differences"].items():
        lines.append(f"| {name} | {format_span(figure, signed=True)} | {figure['se']:.4f} |")
    needed = comparison["rows_needed"]
    resolution = "" if comparison["outcome"] != "INCONCLUSIVE" else (
        "; a margin of 0 can never be resolved" if needed is None else
        f"; at this disagreement rate the interval narrows below the margin at about {needed} rows")
    lines += ["", f"Rows compared: {comparison['rows']}; the models disagree on correctness on "
                  f"{comparison['disagreement']:.1%} of them (candidate alone right: {mcnemar['a_only']}, champion "
                  f"alone right: {mcnemar['b_only']}; McNemar exact p = {mcnemar['p_value']:.3g}). Non-inferiority "
                  f"margin {comparison['margin']:g}{resolution}. Outcome: {comparison['outcome']}."]
    return lines


def slices_table(slices: list[dict[str, Any]], min_rows: int, min_accuracy: float, max_gap: float) -> list[str]:
    """The slice rule (gate.min_slice_rows, min_slice_accuracy, max_slice_gap) and every slice's figures."""
    lines = [f"Judged when a slice has at least {min_rows} rows: accuracy >= {min_accuracy:g} "
             f"and at most {max_gap:g} below overall.", "",
             "| slice | rows | accuracy [interval] | gap to overall | result |", "|---|---|---|---|---|"]
    for s in slices:
        result = ("too small" if not s["judged"] else "pass" if s["passed"] else "FAIL: " + "; ".join(s["failed"]))
        lines.append(f"| {s['column']} = {s['value']} | {s['rows']} | {format_span(s['accuracy'])} | "
                     f"{s['gap']:+.4f} | {result} |")
    return lines


def reading_sentence(reading: dict[str, Any]) -> str:
    """The long_text rule the shipped model read the test texts by, and how many needed it."""
    longer = reading["longer_rows"]
    return (f"Token lengths are of whole texts, special tokens included. The model reads {reading['window_tokens']} "
            f"tokens at a time; {longer} test row{'' if longer == 1 else 's'} longer than that "
            f"{'was' if longer == 1 else 'were'} read by serving.json's long_text rule: {reading['described']}.")


def _batching(batching: dict[str, Any]) -> str:
    judged, served = batching["judged_batch_size"], batching["predict_batch_size"]
    if batching["agreement"] == 1.0:
        return f"Labels are the same whether texts are scored {judged} or {served} to a call."
    return (f"Judged {judged} text(s) per call. Scored {served} to a call (`tunegate predict`'s default), "
            f"{1 - batching['agreement']:.1%} of the labels change (accuracy "
            f"{batching['accuracy_at_predict_batch_size']:.4f}): a dynamically quantized model scales its "
            "activations per call, so a text's label can depend on the texts batched with it.")


def rung_limits(thresholds: dict[str, Any], model: str) -> dict[str, Any]:
    """quantization.json's limits for `model`'s rungs: the student's under "student" (distill's bounds; absent in
    records written before they had their own), the teacher's at the top level."""
    return {**thresholds, **thresholds.get("student", {})} if model == "student" else thresholds


def _candidate_outcome(record: dict[str, Any], shipped: bool, limits: dict[str, Any]) -> str:
    """shipped, pass, FAIL (a limit failed), or INCONCLUSIVE drop (nothing failed, the drop's interval straddles its
    bound): a rung ships only on pass. A ladder's FP32 ceiling (judged first, never shipped) holds or stops it."""
    if "error" in record:
        return f"not built: {record['error'][:80]}"
    if record.get("ceiling"):
        return "ceiling holds" if record["ceiling_holds"] else "ceiling misses: ladder stopped"
    if shipped:
        return "shipped"
    if record["passed"]:
        return "pass"
    other_limits_hold = record["agreement"] >= limits["min_agreement"] and record.get("batch_invariant", True)
    unsettled = record.get("drop_outcome") == CHECK_INCONCLUSIVE and other_limits_hold
    return "INCONCLUSIVE drop" if unsettled else "FAIL"


def _quantize_candidates(quantize: dict[str, Any]) -> list[str]:
    """Every candidate quantize tried (model, rung, its dev figures against the teacher FP32), the shipped one marked,
    and the models it skipped with why."""
    limits = quantize["thresholds"]
    student = rung_limits(limits, "student")
    lines = [f"Tried in order on {quantize['rows']} {quantize['split']} rows, each against the teacher FP32 (accuracy "
             f"{quantize['fp32_accuracy']:.4f}); the first whose drop passes (the upper end of its "
             f"{limits['confidence']:.0%} paired interval <= {limits['max_accuracy_drop']:g} for the teacher's "
             f"rungs, {student['max_accuracy_drop']:g} for the student's) with agreement >= "
             f"{limits['min_agreement']:g} ({student['min_agreement']:g}) ships. Batch-1 latency of each: "
             "`.tunegate/runs/quantize.json` (timings stay out of tracked outputs).", "",
             "| model | rung | dev accuracy | drop ± SE | drop interval | agreement | MB | weights | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in quantize["candidates"]:
        shipped = (c["model"], c["rung"]) == (quantize["chosen_model"], quantize["chosen"])
        if "error" in c:
            lines.append(f"| {c['model']} | {c['rung']} | | | | | | | "
                         f"{_candidate_outcome(c, shipped, rung_limits(limits, c['model']))} |")
            continue
        low, high = c["accuracy_drop_interval"]
        lines.append(f"| {c['model']} | {c['rung']} | {c['accuracy']:.4f} | {c['accuracy_drop']:+.4f} ± "
                     f"{c['accuracy_drop_se']:.4f} | [{low:+.4f}, {high:+.4f}] | {c['agreement']:.1%} | "
                     f"{c['mb']:.1f} | {c['params']:,} | "
                     f"{_candidate_outcome(c, shipped, rung_limits(limits, c['model']))} |")
    skipped = [f"- {name}: skipped ({why})" for name, why in quantize["skipped"].items()]
    return lines + ([""] + skipped if skipped else [])


def shipped_cost(candidate: dict[str, Any], pytorch: dict[str, Any], quantization: dict[str, Any]) -> str:
    """The PyTorch teacher's figures and what shipping the candidate costs against them."""
    cost = "distillation and quantization cost" if candidate["model"] == "student" else "quantization cost"
    drop = quantization["drop"]
    return (f"The teacher's PyTorch model: accuracy {pytorch['accuracy']:.4f}, macro-F1 {pytorch['macro_f1']:.4f}; "
            f"{cost} {quantization['accuracy_drop']:+.4f} accuracy (SE {quantization['accuracy_drop_se']:.4f}, "
            f"interval [{drop['low']:+.4f}, {drop['high']:+.4f}] against the bound {drop['bound']:g}: "
            f"{drop['outcome']}; "
            f"{quantization['agreement']:.1%} of predictions agree).")


def calibration_sentence(calibration: dict[str, Any] | None) -> str:
    """How the served probabilities were calibrated and what that changed on test ('' for older decisions)."""
    if calibration is None:
        return ""
    if calibration["fitted_on"] is None:
        return (f"Probabilities are the model's own softmax (quantize.probabilities: as_trained); expected calibration "
                f"error on test {format_span(calibration['ece_after'])}.")
    fitted = calibration["fitted_on"]
    return (f"Probabilities are calibrated by temperature scaling (T = {calibration['temperature']:.3f}, fitted on "
            f"{fitted['rows']} {fitted['split']} rows; labels unchanged): expected calibration error on test "
            f"{format_span(calibration['ece_before'])} before, {format_span(calibration['ece_after'])} after.")


def live_traffic_lines(live: dict[str, Any] | None) -> list[str]:
    """The shipped model's test figures reweighted toward the prediction log's texts (gate.live_traffic)."""
    if live is None:
        return ["Not measured: gate.live_traffic.log_dir is null (set it to a prediction log with serve.log_texts "
                "on to reweight the test rows toward the texts the service saw)."]
    head = (f"Test rows reweighted toward {live['live_texts']} logged texts of `{live['log_dir']}` by a domain "
            f"classifier (covariate shift: the texts' mix changes, p(label | text) does not): {live['verdict']}, "
            f"{live['why']}.")
    if live["weighted"] is None:
        return [head]
    return [head, "", "| metric | test as judged | reweighted to live traffic |", "|---|---|---|",
            *(f"| {name} | {format_span(live['unweighted'][key])} | {format_span(live['weighted'][key])} |"
              for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")))]


def shadow_lines(shadow: dict[str, Any] | None) -> list[str]:
    """The prediction log's texts the champion answered, replayed with the candidate (gate.live_traffic.log_dir)."""
    if shadow is None:
        return ["Not replayed: no production model, or gate.live_traffic.log_dir is null."]
    if "skipped" in shadow:
        return [f"Not replayed: {shadow['skipped']}."]
    estimated, rows = shadow["estimated_accuracy"], shadow["rows"]
    lines = [f"{rows['replayed']} logged texts the production model ({shadow['prod_version']}) answered, scored again "
             f"by the candidate one text per call ({sum(rows['skipped'].values())} records skipped: "
             f"{', '.join(f'{k} {v}' for k, v in rows['skipped'].items()) or 'none'}). No labels: the accuracies "
             "are what each model's calibrated probabilities expect.", "",
             "| figure | value [interval] |", "|---|---|",
             f"| disagreement | {format_span(shadow['disagreement'])} |",
             f"| production model's accuracy, estimated | {format_span(estimated['prod'])} |",
             f"| candidate's accuracy, estimated | {format_span(estimated['candidate'])} |",
             f"| candidate - production, estimated | {format_span(shadow['estimated_difference'], signed=True)} |",
             "", "| slice | texts | disagreement | candidate - production, estimated |", "|---|---|---|---|"]
    for s in shadow["slices"]:
        lines.append(f"| {s['column']} {s['value']} | {s['rows']} | {s['disagreement']['value']:.4f} | "
                     f"{format_span(s['estimated_difference'], signed=True)} |")
    return lines


def render_report(decision: dict[str, Any], cfg: GateConfig) -> str:
    """report.md: verdict, why, checks, metrics with intervals, the comparison, slices, quantize's candidates, the
    candidate."""
    quantization = decision["reference"]["quantization"]
    candidate = decision["candidate"]
    pytorch = decision["reference"]["pytorch"]
    lines = [
        f"# Gate: {decision['decision']}", "",
        f"Why: {decision['why']}.", "",
        f"The shipped model (`{candidate['file']}`: the {candidate['model']}, {candidate['precision']}) was run by "
        f"the serving code on {decision['metrics']['rows']} test rows: accuracy "
        f"{format_span(decision['metrics']['accuracy'])}, macro-F1 {format_span(decision['metrics']['macro_f1'])} "
        f"({cfg.confidence:.0%} bootstrap intervals, {cfg.bootstrap_samples} resamples). "
        f"{shipped_cost(candidate, pytorch, quantization)}", "",
        _batching(decision["reference"]["batching"]), "",
        "## Checks", "", *checks_table(decision), "",
        "## Compute cost", "", *_compute_cost(decision["compute_cost"]), "",
        "## Against the production model", "", *_comparison(decision["comparison"], decision), "",
        "## Metrics of the shipped model", "", *_metrics(decision["metrics"], cfg.confidence), "",
        calibration_sentence(decision.get("calibration")), "",
        "## On current traffic", "", *live_traffic_lines(decision.get("live_traffic")), "",
        "## Shadow replay of the prediction log", "", *shadow_lines(decision.get("shadow")), "",
        "## Slices", "", reading_sentence(decision["long_text"]), "",
        *slices_table(decision["slices"], cfg.min_slice_rows, cfg.min_slice_accuracy, cfg.max_slice_gap), "",
        "## Quantize candidates (dev)", "", *_quantize_candidates(decision["quantize"]), "",
        "## Recipe selection (dev)", "", selection_sentence(decision.get("selection")), "",
        "## Candidate", "",
        f"Model sha256 {candidate['sha256'][:12]}…, training run {candidate['train_run']} (its stamp: "
        "`artifacts/train/stamp.json`); release folder `artifacts/gate/release`. Latency figures: "
        "`.tunegate/runs/gate.json`; reliability diagram: `dvc plots show artifacts/gate/reliability.csv`.",
    ]
    return "\n".join(lines) + "\n"
