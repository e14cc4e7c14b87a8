"""A release's model card (its README.md): Hugging Face metadata, then what a reader needs before using the model:
what it is, how it was made and how hard it was chosen, how it reads long texts, what compression cost, its
slices, the gate's verdict and its limits. Built from the run's tracked outputs only (never a run record, which
holds times and hosts), so the gate writes the same bytes whenever it reruns on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from tasks.judging.report import checks_table, format_span, shipped_cost, slices_table
from tasks.judging.selection import selection_sentence
from tasks.runtime.files import PARITY_FILE, RELEASE_FILE, SERVING_FILE, TEST_ROWS_FILE
from tasks.runtime.long_text import MAX_WINDOWS, describe, normalise, window_cap

CARD_FILE = "README.md"  # the name the Hugging Face Hub reads a model card from
TASK = "text-classification"
LIBRARY = "onnx"  # what ships is an ONNX graph run by onnxruntime, not a transformers checkpoint
# decision.json's metric -> its model-index type (a Hub metric id), how it reads, and the arguments it was computed
# with beyond the interval's (macro-F1 is the Hub's f1 averaged over classes).
METRICS = {"accuracy": ("accuracy", "accuracy", {}), "macro_f1": ("f1", "macro-F1", {"average": "macro"}),
           "roc_auc": ("roc_auc", "ROC-AUC", {}), "ece": ("ece", "expected calibration error", {})}
# A student in a folder that distill did not make (written by hand beside the run): no recipe, no layers to name.
NO_DISTILL_RECORD = "no distill record beside the run: its recipe and layers are not known"


@dataclass(frozen=True)
class CardInputs:
    """The run's tracked outputs a card is built from, as the stages wrote them (plain dicts)."""

    name: str  # the model's name in the registry (dvc.yaml artifacts:)
    decision: dict[str, Any]  # artifacts/gate/decision.json
    release: dict[str, Any]  # the release's release.json
    serving: dict[str, Any]  # the shipped folder's serving.json: window, labels, reading rule
    config: dict[str, Any]  # the shipped folder's config.json: architecture and sizes
    stamp: dict[str, Any]  # artifacts/train/stamp.json: recipe, data version, base model
    long_text: dict[str, Any]  # artifacts/train/long_text.json: the reading rule's dev choice
    distill: dict[str, Any]  # artifacts/distill/distill.json ({"enabled": false} without a student; {}: none)
    judging: dict[str, Any]  # params gate: confidence, bootstrap_samples, min_slice_rows, min_slice_accuracy, ...
    selection: dict[str, Any] | None = None  # decision.json's `selection` (a recipe search), None without one


def counted(n: int, word: str, plural: str | None = None) -> str:
    """1 epoch, 2 epochs; 1 process, 2 processes."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def base_model_id(provenance: dict[str, Any]) -> str:
    """The stamp's base model as one string: a hub id as is, a packaged model as pypi:PACKAGE==VERSION, a local
    folder by the path train.base_model gave."""
    if provenance["source"] == "hub":
        return provenance["id"]
    if provenance["source"] == "pypi":
        return f"pypi:{provenance['package']}=={provenance['version']}"
    return str(provenance["path"])


def data_version(stamp: dict[str, Any]) -> str:
    """The data the model was trained and judged on, with its version: PATH@sha256:HEX (train's stamp)."""
    return f"{stamp['data']['path']}@sha256:{stamp['data']['sha256']}"


def metric_entries(metrics: dict[str, Any], judging: dict[str, Any]) -> list[tuple[str, str, float, dict[str, Any]]]:
    """(type, name, value, args) of each test metric the gate computed with an interval; the interval's bounds go in
    args (the model-index schema's place for how a figure was computed), its reading in the name."""
    entries = []
    for key, figure in metrics.items():
        if not (isinstance(figure, dict) and {"value", "low", "high"} <= set(figure)):
            continue  # rows, per_class, or a metric undefined on this split (ROC-AUC of one class: None)
        kind, words, extra = METRICS.get(key, (key, key, {}))
        name = (f"test {words}, {judging['confidence']:.0%} bootstrap interval "
                f"[{figure['low']:.4f}, {figure['high']:.4f}]")
        args = {**extra, "interval": [figure["low"], figure["high"]], "confidence": judging["confidence"],
                "bootstrap_samples": judging["bootstrap_samples"]}
        entries.append((kind, name, figure["value"], args))
    return entries


def card_metadata(inputs: CardInputs) -> str:
    """The YAML front matter (between the --- lines): model-index, datasets, base_model, pipeline_tag, tags."""
    from huggingface_hub import EvalResult, ModelCardData

    data = inputs.stamp["data"]
    results = [EvalResult(task_type=TASK, task_name="Text Classification", dataset_type=data["path"],
                          dataset_name=f"{PurePosixPath(data['path']).name} (test split)", dataset_split="test",
                          dataset_revision=f"sha256:{data['sha256']}", metric_type=kind, metric_value=value,
                          metric_name=name, metric_args=args, verified=False)
               for kind, name, value, args in metric_entries(inputs.decision["metrics"], inputs.judging)]
    candidate = inputs.decision["candidate"]
    tags = ["tunegate", TASK, LIBRARY, *(["int8"] if candidate["precision"] != "fp32" else []),
            *(["distilled"] if candidate["model"] == "student" else [])]
    # No license: nothing the run records says under which terms the base model and the data may be used.
    card = ModelCardData(base_model=base_model_id(inputs.stamp["base_model"]), datasets=[data_version(inputs.stamp)],
                         library_name=LIBRARY, pipeline_tag=TASK, tags=tags, model_name=inputs.name,
                         eval_results=results)
    return card.to_yaml()


def shipped_rung(quantize: dict[str, Any]) -> dict[str, Any]:
    """quantize's record of the shipped candidate (its dev figures, method, MB); {} when the record lacks it."""
    chosen = (quantize["chosen_model"], quantize["chosen"])
    return next((c for c in quantize["candidates"] if (c["model"], c["rung"]) == chosen), {})


def model_lines(inputs: CardInputs) -> list[str]:
    """What ships: base model, student or teacher, its size and layers, precision, window and labels."""
    candidate, config, distill = inputs.decision["candidate"], inputs.config, inputs.distill
    quantize = inputs.decision["quantize"]
    shipped = shipped_rung(quantize)
    lines = [f"- **Base model:** `{base_model_id(inputs.stamp['base_model'])}` (`train.base_model`), fine-tuned "
             f"({inputs.stamp.get('method', 'full')}) into the teacher."]
    if candidate["model"] == "student" and not distill.get("enabled"):
        lines.append(f"- **Shipped:** a student ({NO_DISTILL_RECORD}).")
    elif candidate["model"] == "student":
        lines.append(f"- **Shipped:** the distilled student: encoder layers {distill['layers_kept']} of the "
                     f"teacher's {distill['layers']['teacher']} kept, feed-forward width "
                     f"{distill['ffn_size']['student']} of {distill['ffn_size']['teacher']}; "
                     f"{distill['params']['student']:,} parameters ({distill['params']['ratio']:.0%} of the "
                     f"teacher's {distill['params']['teacher']:,}).")
    else:
        why = ("distill.enabled is false" if not distill.get("enabled") else
               quantize["skipped"].get("student", "no student rung passed quantize"))
        lines.append(f"- **Shipped:** the teacher, all its encoder layers ({why}).")
    layers, width = config.get("num_hidden_layers", "?"), config.get("hidden_size", "?")
    lines += [f"- **Architecture:** {config.get('model_type', '?')}, {layers} encoder layers, hidden size {width}.",
              f"- **Precision:** {candidate['precision']}"
              + (f" ({shipped['method']})" if shipped.get("method") else "")
              + (f", {shipped['mb']:.1f} MB" if "mb" in shipped else "") + "; run by onnxruntime on the CPU.",
              f"- **Labels:** {', '.join(inputs.serving['labels'])}; window {inputs.serving['max_length']} tokens "
              "(special tokens included).",
              f"- **Model file:** `{inputs.serving['model_file']}`, sha256 `{inputs.release['sha256']}`; training "
              f"run `{candidate['train_run']}`."]
    return lines


def recipe_lines(stamp: dict[str, Any], distill: dict[str, Any]) -> list[str]:
    """The train and distill params that made the model, and what the runs did with them."""
    train = stamp["config"]["train"]
    rows = stamp.get("train_rows", {})
    lines = [f"- **Teacher (train):** {counted(train['epochs'], 'epoch')}, learning rate {train['learning_rate']:g} "
             f"(AdamW, warm-up share {train['warmup_ratio']:g}, weight decay {train['weight_decay']:g}), batch "
             f"{stamp.get('effective_batch_size', train['batch_size'])} ({train['batch_size']} per device x "
             f"{train['gradient_accumulation_steps']} accumulation x "
             f"{counted(stamp.get('world_size', 1), 'process', 'processes')}), "
             f"max_length {train['max_length']} tokens, seed {stamp['seed']}; best epoch {stamp.get('best_epoch')}, "
             f"{stamp.get('optimizer_steps')} optimizer steps"
             + (f", {rows['texts']:,} training texts read as {rows['rows']:,} rows (long texts as windows)"
                if rows else "") + "."]
    if stamp.get("method") == "lora":
        lora = train["lora"]
        lines.append(f"- **LoRA:** r {lora['r']}, alpha {lora['alpha']:g}, dropout {lora['dropout']:g}, target "
                     f"modules {lora['target_modules'] or 'the model type default'}; {stamp['trainable_share']:.2%} "
                     "of the weights trained, merged before saving.")
    if distill.get("enabled"):
        recipe = distill["recipe"]
        kl = distill["kl_to_teacher"]
        lines.append(f"- **Student (distill):** {counted(recipe['epochs'], 'epoch')}, learning rate "
                     f"{recipe['learning_rate']:g}, batch {recipe['batch_size']}, temperature "
                     f"{recipe['temperature']:g}, alpha {recipe['alpha']:g} (share of the loss on the teacher's "
                     f"answers), feed-forward kept {recipe['ffn_keep']:g}, embeddings "
                     f"{'frozen' if recipe['freeze_embeddings'] else 'trained'}; "
                     f"{distill['rows']['training_rows']:,} training rows plus {distill['rows']['transfer_texts']:,} "
                     f"unlabelled transfer texts; KL to the teacher {kl['before']:.4f} before, {kl['after']:.4f} "
                     f"after (on {kl['rows']} training rows).")
    else:
        none = "none (distill.enabled is false)" if "enabled" in distill else NO_DISTILL_RECORD
        lines.append(f"- **Student:** {none}.")
    return lines


def selection_lines(selection: dict[str, Any] | None, long_text: dict[str, Any],
                    quantize: dict[str, Any]) -> list[str]:
    """How hard this model was chosen: the recipe search's trials when one ran (decision.json `selection`), else one
    recipe said plainly; and the choices made on dev."""
    candidates = len(long_text.get("candidates", [])) or 1
    dev = (f"Chosen on the dev split, never test: the long-text reading rule (of {counted(candidates, 'candidate')}) "
           f"and the shipped quantization rung (of {len(quantize['candidates'])} judged in order, the first that "
           "passed). The gate's test figures judge the result once.")
    return [selection_sentence(selection), "", dev]


def partial_reading(rule: dict[str, Any], window: int) -> str:
    """Which texts the rule reads only in part, and which part it leaves out."""
    if rule["rule"] == "head":
        return (f"A text longer than {window} tokens is cut: only its first tokens are read, the rest never reaches "
                "the model.")
    if rule["rule"] == "head_tail":
        return (f"A text longer than {window} tokens is read as one window: its first {rule['head_tokens']} tokens "
                "and as many of its last as fill the window; the middle is not read.")
    cap = window_cap(rule)
    return (f"A text longer than about {window + (cap - 1) * rule['stride']:,} tokens is read in part: {cap} "
            "windows spread evenly over it, the first and the last kept, the tokens between them not read.")


def reading_limit(rule: dict[str, Any], window: int) -> str:
    """What the reading rule does to a text longer than the window, in words."""
    if rule["rule"] != "window":
        return partial_reading(rule, window)
    limit = "" if "max_windows" in rule else f" (the limit for every window rule, {MAX_WINDOWS})"
    return (f"A text longer than {window} tokens is read as windows of {window} tokens starting every "
            f"{rule['stride']} tokens (the last ending at the text's end), their answers combined by "
            f"{rule['aggregate']}; at most {window_cap(rule)} windows per text{limit}. "
            f"{partial_reading(rule, window)} More windows cost more compute per text.")


def served_rule(serving: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """serving.json's reading rule (checked; absent reads head) and its window in tokens."""
    return normalise(serving.get("long_text")), int(serving["max_length"])


def reading_lines(inputs: CardInputs) -> list[str]:
    """The reading rule the release serves (serving.json), what it does to long texts, and why it was chosen."""
    rule, window = served_rule(inputs.serving)
    judged = inputs.decision["long_text"]
    lines = [f"Rule: **{describe(rule)}** (serving.json `long_text`; `tunegate predict`, `tunegate serve` and the "
             f"gate read alike). {reading_limit(rule, window)}", "",
             f"On test, {judged['longer_rows']} of {inputs.decision['metrics']['rows']} texts were longer than the "
             "window and were read by this rule."]
    chosen = next((c for c in inputs.long_text.get("candidates", []) if c.get("chosen")), None)
    if chosen is not None:
        others = ", ".join(f"{c['described']} {c['dev_accuracy']:.4f}" for c in inputs.long_text["candidates"]
                           if not c.get("chosen"))
        long = (f"{chosen['dev_long_accuracy']:.4f} on the {chosen['long_rows']} longer than the window"
                if chosen.get("dev_long_accuracy") is not None else "no dev text was longer than the window")
        lines += ["", f"Chosen after training on {inputs.long_text['dev_rows']} dev rows: dev accuracy "
                      f"{chosen['dev_accuracy']:.4f} ({long})" + (f"; the others: {others}." if others else ".")]
    return lines


def cost_lines(inputs: CardInputs) -> list[str]:
    """What distillation and quantization cost against the teacher's PyTorch model (test, with intervals; dev), and
    what a text costs to read."""
    decision = inputs.decision
    candidate, quantization = decision["candidate"], decision["reference"]["quantization"]
    lines = [f"- **On test:** {shipped_cost(candidate, decision['reference']['pytorch'], quantization)}"]
    if candidate["model"] == "student" and inputs.distill.get("enabled"):
        dev = inputs.distill["dev"]
        lines.append(f"- **Distillation on dev:** student accuracy {dev['student_accuracy']:.4f}, teacher "
                     f"{dev['teacher_accuracy']:.4f}, agreement {dev['agreement']:.1%} ({dev['rows']} rows, read "
                     f"by {dev['long_text']}).")
    quantize = decision["quantize"]
    shipped = shipped_rung(quantize)
    if "accuracy_drop_interval" in shipped:
        low, high = shipped["accuracy_drop_interval"]
        lines.append(f"- **Quantization on dev:** {shipped['model']} {shipped['rung']} accuracy "
                     f"{shipped['accuracy']:.4f} against the teacher FP32's {quantize['fp32_accuracy']:.4f}: drop "
                     f"{shipped['accuracy_drop']:+.4f} [{low:+.4f}, {high:+.4f}], agreement "
                     f"{shipped['agreement']:.1%} ({quantize['rows']} rows).")
    per_text = decision["compute_cost"]["gmacs_per_text"]
    lines.append(f"- **Compute:** {per_text['p50']:.3f} GMACs per text at the median, {per_text['p95']:.3f} at p95 "
                 f"({decision['compute_cost']['windows_per_text']['mean']:.2f} windows per test text on average; "
                 "counted, not timed).")
    return lines


def verdict_lines(decision: dict[str, Any]) -> list[str]:
    """The gate's verdict, why, the champion it was compared with and every check."""
    comparison = decision.get("comparison")
    if comparison is None:
        against = "No production model to compare with: the first-run policy decided."
    else:
        champion = comparison["champion"]
        against = (f"Compared with the production model ({champion.get('version') or champion.get('path')}) on "
                   f"{comparison['rows']} shared test rows: {comparison['outcome']}.")
    return [f"**{decision['decision']}**: {decision['why']}.", "", against, "", *checks_table(decision)]


def probability_line(calibration: dict[str, Any] | None) -> str:
    """What the served probabilities mean: temperature-calibrated on dev (with the test ECE before and after), or
    the model's own softmax."""
    if calibration is None or calibration["fitted_on"] is None:
        return "the model's own softmax, not calibrated (quantize.probabilities: as_trained)."
    return (f"calibrated by temperature scaling (T = {calibration['temperature']:.3f}, fitted on "
            f"{calibration['fitted_on']['rows']} dev rows): expected calibration error on test "
            f"{calibration['ece_before']['value']:.4f} before, {calibration['ece_after']['value']:.4f} after. "
            "Calibrated on data like the test split; on other texts they can be over- or underconfident.")


def use_lines(inputs: CardInputs) -> list[str]:
    """Intended use and limits: the label set, the data it knows, long texts, what the figures do not promise."""
    # Here, not at the top: tasks.core.data imports pandas, and `tunegate card` and promote import this module for
    # CARD_FILE alone.
    from tasks.core.data import DEFAULT_DATA_NAME

    labels = inputs.serving["labels"]
    data = inputs.stamp["data"]
    default = PurePosixPath(data["path"]).name == DEFAULT_DATA_NAME
    origin = (" With the default data (`tunegate data default`): English movie reviews, Rotten Tomatoes sentences "
              "and IMDB reviews." if default else "")
    return [f"- **For:** classifying texts into {', '.join(labels)} (params `data.label_names`), texts like those it "
            f"was trained and judged on: `{data['path']}` (sha256 `{data['sha256'][:12]}…`).{origin}",
            f"- **Not for:** labels outside that set. The model always answers one of the {len(labels)} labels, "
            "also for a text that fits none of them; texts of another language or domain were not judged.",
            f"- **Long texts:** {partial_reading(*served_rule(inputs.serving))}",
            f"- **The figures:** from {inputs.decision['metrics']['rows']} test rows of the same data; slices with "
            f"fewer than {inputs.judging['min_slice_rows']} rows were measured, not judged. Live traffic unlike the "
            "test split can score lower: `tunegate monitor` watches for it.",
            f"- **Probabilities:** {probability_line(inputs.decision.get('calibration'))}",
            f"- **Where it runs:** CPU, through onnxruntime. The release's {PARITY_FILE} lets a serving host check "
            "it answers as the judging host did (`tunegate verify`)."]


def files_line() -> str:
    """The release folder's files besides the model, by what they are for."""
    return (f"`{SERVING_FILE}` (window, labels, reading rule), the tokenizer and config, `{RELEASE_FILE}` (model "
            f"hash, training run, verdict), `{TEST_ROWS_FILE}` (keys of the judged test rows), `{PARITY_FILE}` (the "
            f"parity certificate), `{CARD_FILE}` (this card).")


def render_card(inputs: CardInputs) -> str:
    """README.md of a release: YAML front matter that huggingface_hub.ModelCard parses, then the card's sections."""
    decision, judging = inputs.decision, inputs.judging
    metrics = decision["metrics"]
    body = [
        f"# {inputs.name}: {', '.join(inputs.serving['labels'])}", "",
        f"A text classifier, as tunegate's gate judged it: verdict **{decision['decision']}**. Test accuracy "
        f"{format_span(metrics['accuracy'])}, macro-F1 {format_span(metrics['macro_f1'])} ({metrics['rows']} test "
        f"rows, {judging['confidence']:.0%} bootstrap intervals, {judging['bootstrap_samples']} resamples), "
        "measured on the shipped file through the serving code. Written by the gate from the run's tracked "
        "outputs; the version number comes with `tunegate promote`, whose tag names this card's sha256.", "",
        "## Model", "", *model_lines(inputs), "",
        "## Training recipe", "", *recipe_lines(inputs.stamp, inputs.distill), "",
        "## Selection effort", "", *selection_lines(inputs.selection, inputs.long_text, decision["quantize"]), "",
        "## Reading long texts", "", *reading_lines(inputs), "",
        "## Cost of distillation and quantization", "", *cost_lines(inputs), "",
        "## Slices", "", *slices_table(decision["slices"], judging["min_slice_rows"], judging["min_slice_accuracy"],
                                       judging["max_slice_gap"]), "",
        "## Gate verdict", "", *verdict_lines(decision), "",
        "## Intended use and limits", "", *use_lines(inputs), "",
        "## Files", "", files_line(),
    ]
    return f"---\n{card_metadata(inputs)}\n---\n\n" + "\n".join(body) + "\n"
