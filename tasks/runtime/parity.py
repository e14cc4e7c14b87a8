"""The parity certificate: what a gate's release carries so that a serving host can show it answers as the judging
host did (test texts scored one per call, that host's CPU features, the model's hash, the tolerance granted), and
the check `tunegate serve` (start and reload), `tunegate rollback` and `tunegate verify` run on it."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.core.errors import TunegateError
from tasks.core.host import cpu_facts, same_numerics
from tasks.core.io import file_sha256, read_json, write_json
from tasks.core.metrics import softmax
from tasks.runtime.files import PARITY_FILE, SERVING_FILE
from tasks.runtime.onnx_model import OnnxClassifier

FORMAT = 1  # parity.json's layout version; a reader refuses another
# The judging host's facts a certificate keeps: those that choose kernels (tasks.core.host). The CPU model name goes
# to the gate's run record instead: two hosts with the same flags compute the same bytes and must write the same
# release (tracked outputs hold no host names).
NUMERIC_FACTS = ("machine", "flags", "kind")
SHOWN_TEXTS = 5  # differing texts a report names: label changes first, then the largest |delta p|
SHOWN_CHARS = 56  # characters shown of each (a summary line fits 80 columns)
WIDTH = 80  # columns of `tunegate verify`'s summary

CERTIFICATE_FIELDS = ("format", "model_file", "model_sha256", "labels", "judged_on", "max_prob_delta", "texts")
ROW_FIELDS = ("key", "text", "probabilities")
Scorer = Callable[[list[str]], np.ndarray]  # texts -> [n, classes] probabilities, each text alone in its model call
Status = Literal["passed", "failed", "no_certificate"]
Action = Literal["refuse", "warn"]


class CertificateError(TunegateError):
    """A folder's parity certificate cannot be checked: unreadable, another format, or made for another model file."""


class NoCertificate(CertificateError):
    """The folder carries no parity.json: a release older than certificates, or a folder that is not a release."""


# ---------------------------------------------------------------- writing (the gate)

def certificate_rows(lengths: Sequence[int], rows: int) -> list[int]:
    """Indices of `rows` texts at evenly spaced ranks of whole-text token length, in input order: the shortest and
    the longest text are always among them and long texts come at their share; every index when there are fewer."""
    n = len(lengths)
    if n <= rows:
        return list(range(n))
    order = np.argsort(np.asarray(lengths), kind="stable")
    # n > rows: ranks are more than 1 apart, so rounding keeps them distinct.
    ranks = np.floor(np.linspace(0, n - 1, rows) + 0.5).astype(int)
    return sorted(int(i) for i in order[ranks])


def classifier_scorer(model: OnnxClassifier) -> Scorer:
    """`model`'s probabilities as `tunegate predict --batch-size 1` computes them: one text per model call."""
    return lambda texts: softmax(model.logits(texts, 1))


def build_certificate(texts: list[str], keys: list[str], probs: np.ndarray, labels: list[str], model_file: str,
                      model_sha256: str, tolerance: float, host: dict[str, Any]) -> dict[str, Any]:
    """parity.json's content: `probs` [n, classes] of `texts` (keyed), the model, the judging host, the tolerance."""
    return {"format": FORMAT,
            "scored": "each text alone (one text per model call) through the serving code, read by serving.json's "
                      "long_text rule",
            "model_file": model_file, "model_sha256": model_sha256, "labels": list(labels),
            "judged_on": {name: host[name] for name in NUMERIC_FACTS},
            "max_prob_delta": tolerance,
            "texts": [{"key": key, "text": text, "probabilities": [float(p) for p in row]}
                      for key, text, row in zip(keys, texts, probs)]}


def write_certificate(folder: Path, model: OnnxClassifier, texts: list[str], keys: list[str], lengths: Sequence[int],
                      rows: int, tolerance: float) -> dict[str, Any]:
    """Score `rows` of `texts` (chosen by certificate_rows) one per call with `model`, the served folder's model as
    copied into release `folder`, and write folder/parity.json; returns what the gate's run record keeps."""
    chosen = certificate_rows(lengths, rows)
    picked = [texts[i] for i in chosen]
    probs = classifier_scorer(model)(picked)
    model_file = model.model_file
    certificate = build_certificate(picked, [keys[i] for i in chosen], probs, model.labels, model_file,
                                    file_sha256(folder / model_file), tolerance, cpu_facts())
    write_json(folder / PARITY_FILE, certificate)
    return {"texts": len(chosen), "longest_tokens": int(max((lengths[i] for i in chosen), default=0)),
            "judged_on": cpu_facts()}


# ---------------------------------------------------------------- reading and checking (serve, rollback, verify)

def read_certificate(folder: Path) -> dict[str, Any]:
    """folder/parity.json, checked for the fields the comparison reads."""
    path = Path(folder) / PARITY_FILE
    if not path.is_file():
        raise NoCertificate(f"{folder} carries no parity certificate ({PARITY_FILE}): the gate writes one into its "
                            "release folder (artifacts/gate/release); older releases and other folders have none")
    try:
        certificate = read_json(path)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path} cannot be read as a parity certificate ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in CERTIFICATE_FIELDS if k not in certificate] if isinstance(certificate, dict) else ["all"]
    if missing:
        raise CertificateError(f"{path} is not a parity certificate: it lacks {', '.join(missing)}")
    if certificate["format"] != FORMAT:
        raise CertificateError(f"{path} has format {certificate['format']!r}; this version reads {FORMAT}")
    rows, classes = certificate["texts"], len(certificate["labels"])
    if not rows or not all(isinstance(row, dict) and all(k in row for k in ROW_FIELDS)
                           and len(row["probabilities"]) == classes for row in rows):
        raise CertificateError(f"{path} holds no texts, or a text without its key, text and one probability per label")
    return certificate


@dataclass(frozen=True)
class Difference:
    """A certificate text this host answers differently: another label, or probabilities beyond the tolerance."""
    key: str
    text: str
    reference_label: str
    label: str
    prob_delta: float  # max over classes of |p here - p on the judging host|


@dataclass(frozen=True)
class ParityReport:
    """One check of a certificate on this host."""
    folder: str
    model_file: str
    model_sha256: str
    texts: int
    agreeing: int  # texts given the certificate's label
    min_agreement: float
    max_prob_delta: float
    tolerance: float
    judged_on: dict[str, Any]
    this_host: dict[str, Any]
    differing: int  # texts whose label changed or whose |delta p| exceeds the tolerance
    shown: tuple[Difference, ...]  # the first SHOWN_TEXTS of them, label changes first, then by |delta p|
    seconds: float  # re-scoring time on this host

    @property
    def agreement(self) -> float:
        return self.agreeing / self.texts

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement and self.max_prob_delta <= self.tolerance

    def failures(self) -> list[str]:
        """Which bound failed, in words."""
        out = []
        if self.agreement < self.min_agreement:
            out.append(f"labels agree on {self.agreement:.4f} < serve.min_parity_agreement {self.min_agreement}")
        if self.max_prob_delta > self.tolerance:
            out.append(f"max |delta p| {self.max_prob_delta:.6f} > the certificate's tolerance {self.tolerance}")
        return out

    def block(self) -> dict[str, Any]:
        """The figures as JSON (/v2/models, logs, the rollback tag)."""
        return {"agreement": self.agreement, "min_agreement": self.min_agreement, "texts": self.texts,
                "max_prob_delta": self.max_prob_delta, "tolerance": self.tolerance,
                "judged_on": self.judged_on, "this_host": self.this_host,
                "same_numerics": same_numerics(self.judged_on, self.this_host), "differing": self.differing,
                "shown": [{"key": d.key, "text": shorten(d.text), "reference_label": d.reference_label,
                           "label": d.label, "prob_delta": d.prob_delta} for d in self.shown],
                "seconds": round(self.seconds, 3)}

    def one_line(self) -> str:
        """The verdict and its figures in one line (logs, the rollback tag)."""
        verdict = "passed" if self.passed else "FAILED"
        return (f"{verdict}: {self.agreeing}/{self.texts} labels agree ({self.agreement:.4f}, at least "
                f"{self.min_agreement}), max |delta p| {self.max_prob_delta:.2e} (tolerance {self.tolerance}); judged "
                f"on {self.judged_on.get('kind')}, checked on {self.this_host.get('kind')}")

    def explain(self) -> str:
        """Why the check failed: the bounds, both hosts' CPU features and the first differing texts."""
        lines = [f"{self.folder}: this host does not answer the parity certificate's texts as the judging host did "
                 f"({'; '.join(self.failures()) or 'within bounds'})",
                 f"  judged on: {host_words(self.judged_on)}", f"  this host: {host_words(self.this_host)}",
                 f"  {differ_words(self.differing, self.texts, len(self.shown))}"]
        lines += [f"    {difference_words(d)}" for d in self.shown]
        return "\n".join(lines)


def host_words(facts: dict[str, Any]) -> str:
    """A host's CPU facts in one line: kind, machine, model name when known, numeric flags."""
    model = f", {facts['model']}" if facts.get("model") else ""
    return f"{facts.get('kind')} ({facts.get('machine')}{model}; flags {' '.join(facts.get('flags', [])) or 'none'})"


def shorten(text: str, chars: int = SHOWN_CHARS) -> str:
    """A text on one line, cut to `chars` characters (with an ellipsis when cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def differ_words(differing: int, texts: int, shown: int) -> str:
    return f"{differing} of {texts} texts differ" + (":" if shown == differing else f"; the first {shown}:")


def difference_words(d: Difference) -> str:
    change = f"judged {d.reference_label}, here {d.label}" if d.label != d.reference_label else f"{d.label} both"
    return f"{d.key[:8]} {change}, |delta p| {d.prob_delta:.4f}: {shorten(d.text)!r}"


def compare(certificate: dict[str, Any], probs: np.ndarray, min_agreement: float, folder: str,
            seconds: float) -> ParityReport:
    """Compare this host's probabilities [n, classes] of the certificate's texts (in its order) with its own."""
    rows, labels = certificate["texts"], certificate["labels"]
    reference = np.asarray([row["probabilities"] for row in rows], dtype=np.float64)
    here = np.asarray(probs, dtype=np.float64)
    if here.shape != reference.shape:
        raise CertificateError(f"{folder}: the model answers {here.shape} probabilities for the certificate's "
                               f"{reference.shape}: it is not the model the certificate was made for")
    deltas = np.abs(here - reference).max(axis=1)
    ref_labels, labels_here = reference.argmax(axis=1), here.argmax(axis=1)
    tolerance = float(certificate["max_prob_delta"])
    changed = ref_labels != labels_here
    differ = np.flatnonzero(changed | (deltas > tolerance))
    # Label changes first, then by |delta p| (largest first); the certificate's order breaks ties.
    worst = sorted(differ, key=lambda i: (not changed[i], -deltas[i], i))[:SHOWN_TEXTS]
    shown = tuple(Difference(rows[i]["key"], rows[i]["text"], labels[ref_labels[i]], labels[labels_here[i]],
                             float(deltas[i])) for i in worst)
    return ParityReport(folder=folder, model_file=certificate["model_file"], model_sha256=certificate["model_sha256"],
                        texts=len(rows), agreeing=int((~changed).sum()), min_agreement=min_agreement,
                        max_prob_delta=float(deltas.max()), tolerance=tolerance, judged_on=certificate["judged_on"],
                        this_host=cpu_facts(), differing=len(differ), shown=shown, seconds=seconds)


def check_certificate(folder: Path, model_sha256: str, scorer: Scorer, min_agreement: float) -> ParityReport:
    """Re-score folder's certificate texts with `scorer` (the loaded model, whose file has sha256 `model_sha256`)
    and compare."""
    certificate = read_certificate(folder)
    if certificate["model_sha256"] != model_sha256:
        raise CertificateError(f"{Path(folder) / PARITY_FILE} was made for the model file sha256 "
                               f"{certificate['model_sha256'][:12]}…, but the model loaded has sha256 "
                               f"{model_sha256[:12]}…: the folder's files do not belong together")
    started = time.perf_counter()
    probs = scorer([row["text"] for row in certificate["texts"]])
    return compare(certificate, probs, min_agreement, str(folder), time.perf_counter() - started)


def verify_folder(folder: Path, min_agreement: float) -> ParityReport:
    """Load a served folder on this host (onnxruntime, its own providers) and check its certificate."""
    folder = Path(folder)
    read_certificate(folder)  # before loading the model: a folder without one says so at once
    model = OnnxClassifier(folder)
    return check_certificate(folder, file_sha256(folder / model.model_file), classifier_scorer(model), min_agreement)


# ---------------------------------------------------------------- what a serving host does with the result

class ParityError(TunegateError):
    """A model refused because this host does not reproduce its parity certificate (or cannot check it)."""

    def __init__(self, message: str, outcome: ParityOutcome):
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class ParityOutcome:
    """A certificate check as a serving host records it: status, figures (when checked) and what was done."""
    status: Status
    detail: str  # one line
    action: Action  # serve.parity_action when it was checked
    report: ParityReport | None = None

    @property
    def refused(self) -> bool:
        return self.status == "failed" and self.action == "refuse"

    def one_line(self) -> str:
        """The outcome in one line (a tag message field, a log line)."""
        line = self.report.one_line() if self.report is not None else f"{self.status}: {' '.join(self.detail.split())}"
        return line + (" (served anyway: serve.parity_action warn)" if self.status == "failed" and not self.refused
                       else "")

    def block(self) -> dict[str, Any]:
        """/v2/models/{name}'s parity block."""
        figures = self.report.block() if self.report is not None else {}
        return {"status": self.status, "detail": self.detail, "action": self.action, **figures}


def check_served(folder: Path, model_sha256: str, scorer: Scorer, min_agreement: float,
                 action: Action) -> ParityOutcome:
    """The certificate check of a loaded model: no certificate is served with a warning (releases made before
    certificates keep serving); an unusable one or disagreement fails, which `action` turns into a refusal or not."""
    try:
        report = check_certificate(folder, model_sha256, scorer, min_agreement)
    except NoCertificate as missing:
        return ParityOutcome("no_certificate", f"not checked: {missing}", action)
    except CertificateError as broken:
        return ParityOutcome("failed", str(broken), action)
    if report.passed:
        return ParityOutcome("passed", report.one_line(), action, report)
    return ParityOutcome("failed", report.explain(), action, report)


def enforce(outcome: ParityOutcome, subject: str) -> None:
    """Raise ParityError when the outcome refuses `subject` (e.g. "version v0.2.0"): serve.parity_action refuse
    and a failed check."""
    if outcome.refused:
        raise ParityError(f"{subject} refused by its parity check (serve.parity_action: refuse): {outcome.detail}",
                          outcome)


# ---------------------------------------------------------------- `tunegate verify`'s summary

def wrap(label: str, words: str, width: int = WIDTH) -> list[str]:
    """`label` then `words`, wrapped to `width` columns with continuation lines indented under the words."""
    head = f"  {label:<10} "
    return textwrap.wrap(words, width=width, initial_indent=head, subsequent_indent=" " * len(head),
                         break_long_words=True) or [head.rstrip()]


def summary_lines(report: ParityReport, width: int = WIDTH) -> list[str]:
    """`tunegate verify`'s readable summary: verdict, model, agreement, |delta p|, both hosts, differing texts."""
    judged, here = report.judged_on, report.this_host
    same = same_numerics(judged, here)
    lines = [f"parity certificate: {'PASSED' if report.passed else 'FAILED'}"]
    lines += wrap("folder", report.folder, width)
    lines += wrap("model", f"{report.model_file} sha256 {report.model_sha256[:12]} (the certificate's)", width)
    lines += wrap("texts", f"{report.texts} re-scored one per call in {report.seconds:.1f} s", width)
    lines += wrap("labels", f"{report.agreeing} of {report.texts} agree ({report.agreement:.4f}; at least "
                            f"{report.min_agreement} required)", width)
    lines += wrap("max |dp|", f"{report.max_prob_delta:.2e} (tolerance {report.tolerance})", width)
    lines += wrap("judged on", host_words(judged), width)
    lines += wrap("this host", host_words(here), width)
    if not same:
        only_judged = sorted(set(judged.get("flags", [])) - set(here.get("flags", [])))
        only_here = sorted(set(here.get("flags", [])) - set(judged.get("flags", [])))
        lines += wrap("numerics", f"differ (only when judged: {' '.join(only_judged) or '-'}; only here: "
                                  f"{' '.join(only_here) or '-'}): INT8 kernels may take other paths", width)
    if report.differing:
        lines.append(f"  {differ_words(report.differing, report.texts, len(report.shown))}")
        for d in report.shown:
            lines += textwrap.wrap(difference_words(d), width=width, initial_indent="    ", subsequent_indent="      ")
    for failure in report.failures():
        lines += textwrap.wrap(f"failed: {failure}", width=width, subsequent_indent="  ")
    return lines
