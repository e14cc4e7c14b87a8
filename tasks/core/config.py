"""Typed, frozen, strict pipeline configuration: parsed once from params.yaml at the edge."""

from __future__ import annotations

import copy
import functools
import io
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator
from tasks.core.errors import TunegateError

# Order is the DAG: every runner (dvc.yaml, the Prefect flow, the CLI) follows it.
STAGES: tuple[str, ...] = ("validate", "prepare", "train", "distill", "evaluate", "export", "quantize", "gate")

# params.yaml sections that are not stages: read by several stages.
SHARED_SECTIONS: tuple[str, ...] = ("seed", "data")
# Sections read by what runs around the pipeline (`tunegate serve`, the monitor flow, the flows' retries and
# timeouts, `tunegate tune`), not by any stage: no dvc.yaml stage depends on them.
SERVICE_SECTIONS: tuple[str, ...] = ("serve", "monitor", "orchestration", "tune")
# The sections whose keys a recipe search (tune.space) may vary: the two training stages.
TUNABLE_SECTIONS: tuple[str, ...] = ("train", "distill")


class ConfigError(TunegateError, ValueError):
    """params.yaml (or an override) is missing, malformed or fails validation."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataConfig(_Section):
    path: str = Field(description="the data, relative to the project: a CSV, Parquet or JSONL file, or a folder "
                                  "of them")
    text_column: str = Field(description="column of the data that holds the texts")
    label_column: str = Field(description="column of the data that holds the labels")
    labels: list[int | str] = Field(min_length=2,
                                    description="label values as they appear in the data, none repeated; a label's "
                                                "position in this list is its class index")
    label_names: list[str] = Field(description="a name for each entry of labels, in the same order: the class names "
                                               "the models and reports use")
    source_column: str | None = Field(description="column naming each row's source, read by prepare.sources, "
                                                  "prepare.source_rows and distill.transfer; null: the data has none")
    split_column: str | None = Field(description="for data that arrives split: a column of train/dev/test (or a "
                                                 "folder of train/dev|validation/test files), whose splits prepare "
                                                 "keeps; null: prepare makes the splits")

    @model_validator(mode="after")
    def _names_match_labels(self) -> DataConfig:
        if len(self.label_names) != len(self.labels):
            raise ValueError("data.label_names must have one name per entry of data.labels")
        if len(set(self.labels)) != len(self.labels) or len(set(self.label_names)) != len(self.label_names):
            raise ValueError("data.labels and data.label_names must not repeat")
        return self


class ValidateConfig(_Section):
    suite: str = Field(description="the raw-data contract: a Great Expectations suite (JSON, relative to the "
                                   "project) that validate runs on the data")
    min_rows: int = Field(ge=1, description="fewest rows the data may hold")
    max_rows: int = Field(ge=1, description="most rows the data may hold (more usually means the wrong file)")
    min_text_chars: int = Field(ge=1, description="shortest text allowed, in characters")
    max_text_chars: int = Field(ge=1, description="longest text allowed, in characters")
    min_clean_share: float = Field(ge=0, le=1,
                                   description="share of texts that must be free of control characters (an error "
                                               "below it) and of mojibake (a warning below it)")
    min_unique_share: float = Field(ge=0, le=1,
                                    description="share of the texts that must be distinct after normalisation")
    min_class_share: float = Field(ge=0, le=1, description="every class holds at least this share of the rows")
    max_class_share: float = Field(ge=0, le=1,
                                   description="every class holds at most this share of the rows (a single class "
                                               "fails)")
    sample_bad_rows: int = Field(ge=0, description="bad rows quoted per failing check in the report")
    drift_reference: str = Field(min_length=1,
                                 description="what the data is compared with for drift: last_data_commit (the data "
                                             "version of the last commit that changed data.dvc, read through DVC), "
                                             "a table path, or none (no drift checks)")
    drift_severity: Literal["error", "warning"] = Field(
        description="what drift beyond a bound below does: error stops the pipeline; warning reports it")
    max_label_psi: float = Field(ge=0, description="drift bound: population stability index of the label shares")
    max_length_ks: float = Field(ge=0, le=1,
                                 description="drift bound: Kolmogorov-Smirnov statistic of the text lengths "
                                             "(characters)")
    max_oov_rate: float = Field(ge=0, le=1,
                                description="drift bound: share of word occurrences never seen in the reference")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateConfig:
        problems = [_min_above_max("validate", low, high, getattr(self, low), getattr(self, high))
                    for low, high in (("min_rows", "max_rows"), ("min_text_chars", "max_text_chars"),
                                      ("min_class_share", "max_class_share"))]
        _raise_problems(problems)
        return self


class LabelIssuesConfig(_Section):
    enabled: bool = Field(description="look for label issues in the train split (cross-fitted logistic regression, "
                                      "confident learning) and write them to label_issues.csv")
    features: Literal["embeddings", "tfidf"] = Field(
        description="what the cross-fitted logistic regression reads: embeddings = train.base_model's mean-pooled, "
                    "L2-normalised sentence embeddings (one forward pass of the train split); tfidf = word 1-2 gram "
                    "TF-IDF fit on the other folds (seconds)")
    folds: int = Field(ge=2, le=20, description="cross-fitting folds: each row is scored by a model fit on the "
                                                "other folds (stratified, seeded)")
    max_noisy_share: float = Field(ge=0, le=1, description="most the estimated share of wrongly labelled train "
                                                           "rows (flagged rows / rows) may be")
    severity: Literal["error", "warning"] = Field(description="error stops prepare when the estimated share is "
                                                              "above max_noisy_share; warning reports it")


class PrepareConfig(_Section):
    sources: list[str] = Field(description="data.source_column values whose rows are kept ([]: every source)")
    # Their sum is checked below: the rule that bites.
    dev_fraction: float = Field(gt=0, lt=1,
                                description="share of the rows put in the dev split (stratified by label; data "
                                            "that arrives split keeps its own)")
    test_fraction: float = Field(gt=0, lt=1,
                                 description="share of the rows put in the test split (stratified by label; data "
                                             "that arrives split keeps its own)")
    max_train_rows: int | None = Field(ge=1, description="train rows kept at most (a seeded, stratified sample); "
                                                         "null: no cap")
    max_dev_rows: int | None = Field(ge=1, description="dev rows kept at most (a seeded, stratified sample); "
                                                       "null: no cap")
    max_test_rows: int | None = Field(ge=1, description="test rows kept at most (a seeded, stratified sample); "
                                                        "null: no cap")
    source_rows: dict[str, Annotated[int, Field(ge=1)]] = Field(
        description="source -> rows kept at most (a seeded sample, stratified by label, drawn before splitting); "
                    "sources not named keep every row")
    contract: str = Field(description="the split contract: a Great Expectations suite (JSON, relative to the "
                                      "project) checked on the splits before prepare writes them")
    min_rows_per_class: int = Field(ge=1, description="rows of every class that every split must hold at least")
    max_class_share_delta: float = Field(ge=0, le=1,
                                         description="most a class's share in a split may differ from its share "
                                                     "in the whole data")
    near_duplicate_jaccard: float = Field(gt=0, le=1,
                                          description="word-shingle Jaccard similarity from which two texts are "
                                                      "near duplicates: kept in one split by prepare, and leakage "
                                                      "if split apart")
    shingle_words: int = Field(ge=1, le=16, description="words per shingle of the near-duplicate search")
    minhash_permutations: int = Field(ge=1, le=512,
                                      description="MinHash signature length of the near-duplicate search")
    lsh_bands: int = Field(ge=1, description="LSH bands of the near-duplicate search (must divide "
                                             "minhash_permutations): more bands find more pairs")
    max_truncated_share: float = Field(ge=0, le=1,
                                       description="share of the splits' rows that training may truncate: longer "
                                                   "than train.max_length tokens (train.base_model's tokenizer) "
                                                   "while train.long_text.train_windows is off (on: none)")
    label_issues: LabelIssuesConfig = Field(description="label issues found in the train split before training "
                                                        "(a check of the split contract)")

    @model_validator(mode="after")
    def _bands_divide_permutations(self) -> PrepareConfig:
        if self.minhash_permutations % self.lsh_bands:
            raise ValueError("prepare.lsh_bands must divide prepare.minhash_permutations")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError(f"prepare.dev_fraction ({self.dev_fraction}) + prepare.test_fraction "
                             f"({self.test_fraction}) = {self.dev_fraction + self.test_fraction:g} leaves no rows "
                             "to train on: lower one of them so that their sum is below 1")
        return self


class LoraConfig(_Section):
    r: int = Field(ge=1, description="LoRA adapter rank")
    alpha: float = Field(gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(ge=0, lt=1, description="dropout probability of the LoRA adapters")
    target_modules: list[str] | None = Field(description="modules that get adapters; null: peft's default for the "
                                                         "model type (query/value for BERT)")


# Long-text reading rules (the shapes tasks/runtime/long_text.py reads; a test checks the two agree). Typed here,
# not checked by importing that module: every stage reads this file, and a stage's deps are what it imports.
class HeadRule(_Section):
    rule: Literal["head"] = Field(description="head: the first train.max_length tokens (what truncation gives)")


class HeadTailRule(_Section):
    rule: Literal["head_tail"] = Field(description="head_tail: the first head_tokens and the last (window - "
                                                   "head_tokens) content tokens, as one window")
    head_tokens: int = Field(ge=0, description="content tokens taken from the start of the text (below "
                                               "train.max_length); the rest of the window comes from its end")


class WindowRule(_Section):
    rule: Literal["window"] = Field(description="window: windows of train.max_length tokens starting every stride "
                                                "content tokens (the last one ends at the text's end)")
    stride: int = Field(ge=1, description="content tokens from the start of one window to the start of the next")
    max_windows: int | None = Field(default=None, ge=1, le=64,
                                    description="windows per text at most (1 to 64), evenly spaced, the first and "
                                                "last kept; leave the key out for long_text.MAX_WINDOWS (64)")
    aggregate: Literal["mean_prob", "mean_logit", "max_confidence"] = Field(
        description="how a text's window logits combine: mean_prob (mean of the probabilities), mean_logit (mean "
                    "of the logits) or max_confidence (the most confident window's)")

    @model_validator(mode="before")
    @classmethod
    def _no_null_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_windows" in data and data["max_windows"] is None:
            raise ValueError("max_windows: leave the key out for the default (64 windows), or give 1 to 64")
        return data

    @model_serializer(mode="wrap")
    def _absent_cap_stays_absent(self, handler: Any) -> dict[str, Any]:
        # A rule without max_windows dumps as written (params.yaml shape, stamps, long_text.json, serving.json).
        data = handler(self)
        if data.get("max_windows") is None:
            data.pop("max_windows", None)
        return data


LongTextRule = Annotated[HeadRule | HeadTailRule | WindowRule, Field(discriminator="rule")]


class LongTextConfig(_Section):
    candidates: list[LongTextRule] = Field(min_length=1,
                                           description="reading rules for texts longer than train.max_length "
                                                       "tokens, scored on dev after training, cheapest first: the "
                                                       "first is the choice to beat")
    min_gain_se: float = Field(ge=0, description="a later (costlier) candidate replaces the choice so far only when "
                                                 "its dev accuracy is higher by more than this many standard errors "
                                                 "of the paired difference")
    train_windows: bool = Field(description="a training text longer than train.max_length becomes windows (no "
                                            "overlap), each carrying its label; false: it is truncated to its head")
    max_train_windows: int = Field(ge=1, description="windows per long training text at most (evenly spaced, first "
                                                     "and last kept), when train_windows is on")

    @model_validator(mode="after")
    def _distinct_candidates(self) -> LongTextConfig:
        rules = [c.model_dump_json() for c in self.candidates]
        if len(set(rules)) != len(rules):
            raise ValueError("train.long_text.candidates must not repeat a rule")
        return self


class TrainConfig(_Section):
    base_model: str = Field(description="the pretrained encoder fine-tuned: pypi:<package> (a model folder shipped "
                                        "in an installed package), a local folder, or a hub id")
    max_length: int = Field(ge=8, description="tokens per model window; longer texts are read by the long_text "
                                              "rule")
    batch_size: int = Field(ge=1, description="training texts per micro-batch")
    eval_batch_size: int = Field(ge=1, description="texts per batch when training scores dev (each epoch and the "
                                                   "long_text candidates)")
    epochs: int = Field(ge=1, description="passes over the train split (early stopping can end training sooner)")
    learning_rate: float = Field(gt=0, description="peak AdamW learning rate (linear warm-up, then linear decay to "
                                                   "zero)")
    weight_decay: float = Field(ge=0, description="AdamW weight decay (not on biases and LayerNorm weights)")
    warmup_ratio: float = Field(ge=0, lt=1, description="share of the optimizer steps spent warming the learning "
                                                        "rate up")
    max_grad_norm: float = Field(gt=0, description="gradients are clipped to this norm (distill too)")
    early_stopping_patience: int = Field(ge=0, description="training stops once more than this many epochs in a row "
                                                           "bring no better dev accuracy (0: the first such epoch)")
    device: Literal["auto", "cpu", "cuda"] = Field(description="auto (CUDA with bf16 when present, else CPU), cpu "
                                                               "or cuda")
    deterministic: bool = Field(description="deterministic kernels (torch, cuBLAS, attention): bit-exact resume on "
                                            "CUDA too, slower on GPU (distill too)")
    gradient_accumulation_steps: int = Field(ge=1,
                                             description="micro-batches per optimizer step (effective batch = "
                                                         "batch_size x this x processes)")
    compile: bool = Field(description="torch.compile the model (pays off on long GPU runs; slow to warm up on CPU)")
    dataloader_workers: int | None = Field(ge=0, description="batch-building worker processes; null: 2 on CUDA, "
                                                             "0 on CPU")
    checkpoint_every_steps: int = Field(ge=1, description="optimizer steps between resumable checkpoints (one is "
                                                          "also written at each epoch end)")
    keep_checkpoints: int = Field(ge=1, description="newest checkpoints kept; they are deleted after a successful "
                                                    "run")
    token_cache_entries: int = Field(ge=2,  # a run reads two entries (train, dev)
                                     description="tokenised splits kept in .tunegate/cache/tokens/ (the most "
                                                 "recently used)")
    method: Literal["full", "lora"] = Field(description="full: every weight trained; lora: peft adapters "
                                                        "(train.lora), merged into the weights before saving")
    lora: LoraConfig = Field(description="the LoRA adapters, used when method is lora")
    long_text: LongTextConfig = Field(description="texts longer than max_length tokens: how they are read "
                                                  "(serving.json's long_text, chosen on dev) and trained on")

    @model_validator(mode="after")
    def _head_tail_fits(self) -> TrainConfig:
        for rule in self.long_text.candidates:
            if isinstance(rule, HeadTailRule) and rule.head_tokens >= self.max_length:
                raise ValueError(f"train.long_text head_tail head_tokens ({rule.head_tokens}) must be below "
                                 f"train.max_length ({self.max_length}), or it reads what head reads")
        return self


class TransferConfig(_Section):
    """Unlabelled transfer texts for distillation: sentences of data rows that no prepare split holds."""
    sources: list[str] = Field(description="data.source_column values whose rows may lend sentences ([]: no "
                                           "transfer texts); sources absent from the data lend nothing")
    rows: int = Field(ge=0, description="rows of those sources sampled (seeded) among the rows in no prepare split")
    max_texts: int = Field(ge=0, description="transfer sentences kept at most")
    min_words: int = Field(ge=1, description="fewest words a transfer sentence may have (shorter ones are dropped)")


class DistillConfig(_Section):
    enabled: bool = Field(description="build and train a student; false: no student (distill.json says so), and "
                                      "quantize ships a teacher rung")
    keep_layers: list[int] = Field(min_length=1,
                                   description="teacher encoder layers the student keeps, as increasing indices "
                                               "from 0")
    ffn_keep: float = Field(gt=0, le=1, description="share of each kept layer's FFN (intermediate) neurons the "
                                                    "student keeps, the most important ones")
    importance_rows: int = Field(ge=1, description="training rows whose activations rank the FFN neurons (also the "
                                                   "rows the student's KL to the teacher is reported on)")
    temperature: float = Field(gt=0, description="softens both models' logits in the soft (teacher) loss")
    alpha: float = Field(ge=0, le=1, description="weight of the soft (teacher) loss; 1 - alpha goes to the hard "
                                                 "labels (1: the teacher alone)")
    epochs: int = Field(ge=1, description="passes over the student's training texts")
    learning_rate: float = Field(gt=0, description="peak AdamW learning rate of the student (linear warm-up, then "
                                                   "linear decay to zero)")
    batch_size: int = Field(ge=1, description="texts per training batch of the student")
    warmup_ratio: float = Field(ge=0, lt=1, description="share of the student's optimizer steps spent warming the "
                                                        "learning rate up")
    weight_decay: float = Field(ge=0, description="AdamW weight decay of the student")
    freeze_embeddings: bool = Field(description="the student's word embeddings stay the teacher's (not trained)")
    transfer: TransferConfig = Field(description="unlabelled transfer texts added to the student's training (soft "
                                                 "loss only)")
    max_accuracy_drop: float = Field(ge=0, le=1,
                                     description="the student's bound: accuracy it may give up against the teacher "
                                                 "(a fraction: 0.02 = two points), on the upper end of the paired "
                                                 "interval; quantize applies it on dev, the gate on test")
    min_agreement: float = Field(ge=0, le=1,
                                 description="share of the student's predictions that must equal the teacher's "
                                             "(quantize on dev, the gate on test)")

    @model_validator(mode="after")
    def _layers_increase(self) -> DistillConfig:
        layers = self.keep_layers
        if layers[0] < 0 or any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"distill.keep_layers ({layers}) must be increasing layer indices from 0 "
                             "(each teacher layer at most once)")
        return self


class EvaluateConfig(_Section):
    batch_size: int = Field(ge=1, description="texts per model call in evaluate and in export's parity checks")


class ExportConfig(_Section):
    opset: int = Field(ge=17, description="ONNX opset the models are exported with")
    parity_atol: float = Field(gt=0, description="largest absolute logit difference allowed between the ONNX "
                                                 "graphs (raw and optimised) and PyTorch")
    fp16_atol: float = Field(gt=0, description="largest absolute logit difference allowed between the FP16 model "
                                               "(target cuda) and PyTorch; argmax is judged only on rows whose FP32 "
                                               "top-2 margin exceeds it")
    parity_rows: int = Field(ge=1, description="test rows the parity checks compare (the first ones)")
    external_data_mb: int = Field(ge=0, description="weights above this size (MB) are stored in model.onnx.data "
                                                    "beside the graph (always above protobuf's 2 GB limit)")
    target: Literal["cpu", "cuda"] = Field(description="where the models are served: cpu, or cuda (adds an FP16 "
                                                       "model for onnxruntime-gpu's CUDA provider)")


# The quantization ladder's rungs, roughly fastest first; fp32 (no quantization) always keeps accuracy.
QuantizationRung = Literal["dynamic_per_row", "dynamic_per_tensor", "dynamic_per_channel", "static_minmax",
                           "static_entropy", "static_percentile", "static_sensitive_fp32", "fp32"]
QUANTIZATION_RUNGS: tuple[str, ...] = get_args(QuantizationRung)
# The models whose ladders quantize climbs: the distilled student (artifacts/export/student) and the teacher.
QuantizedModel = Literal["student", "teacher"]


class QuantizeConfig(_Section):
    models: list[QuantizedModel] = Field(min_length=1,
                                         description="models whose ladders are climbed, in order: the student (from "
                                                     "distill; skipped when missing), and the teacher last")
    ladder: list[QuantizationRung] = Field(min_length=1,
                                           description="quantization rungs tried in order (roughly fastest first), "
                                                       "ending with fp32; the first within the limits ships (the "
                                                       "student climbs it without fp32)")
    max_accuracy_drop: float = Field(ge=0, le=1,
                                     description="accuracy a teacher rung may give up against the teacher FP32 on "
                                                 "dev (a fraction: 0.02 = two points), on the upper end of the "
                                                 "paired bootstrap interval")
    confidence: float = Field(gt=0, lt=1, description="two-sided confidence of that interval")
    bootstrap_samples: int = Field(ge=100, description="resamples of the judged dev rows for that interval (seeded "
                                                       "by seed)")
    min_agreement: float = Field(ge=0, le=1, description="share of a teacher rung's dev predictions that must equal "
                                                         "the teacher FP32's")
    calibration_rows: int = Field(ge=1, description="first dev rows, used for static calibration; rungs are judged "
                                                    "on the dev rows after them (all when fewer than this remain)")
    probabilities: Literal["temperature", "as_trained"] = Field(
        description="temperature: the shipped folder serves probabilities calibrated by temperature scaling fitted on "
                    "all dev rows (labels unchanged); as_trained: the model's own softmax")
    sensitive_nodes: int = Field(ge=1, description="nodes static_sensitive_fp32 keeps in FP32 (those of lowest "
                                                   "weight SQNR)")
    batch_size: int = Field(ge=1, description="texts per model call when judging rungs: 1 = each text alone, as the "
                                              "gate judges")
    latency_rows: int = Field(ge=1, description="dev texts timed one at a time per rung (the median is reported)")
    batch_check_size: int = Field(ge=2, description="the judged dev texts are scored again in random groups of this "
                                                    "size to check batch invariance")
    max_batch_prob_delta: float = Field(ge=0, le=1,
                                        description="most a probability may move in those groups against the text "
                                                    "alone; a rung ships only if no label moves either")

    @model_validator(mode="after")
    def _ends_with_fp32(self) -> QuantizeConfig:
        if self.ladder[-1] != "fp32":
            raise ValueError("quantize.ladder must end with fp32, the rung that always keeps accuracy")
        return self

    @model_validator(mode="after")
    def _teacher_last(self) -> QuantizeConfig:
        if len(set(self.models)) != len(self.models) or self.models[-1] != "teacher":
            raise ValueError(f"quantize.models {self.models} must name each model once and end with teacher: its "
                             "FP32 rung is the fallback that always exists and always keeps accuracy")
        return self


class LiveTrafficConfig(_Section):
    """The gate's accuracy on current traffic: test rows reweighted toward the prediction log's texts."""
    log_dir: str | None = Field(description="prediction log folder whose logged texts are the live traffic "
                                            "(relative to the project unless absolute; serve.log_texts must be "
                                            "on); null: no reweighting")
    max_texts: int = Field(ge=2, description="newest logged texts taken as the live traffic (and given to the "
                                             "domain classifier)")
    folds: int = Field(ge=2, description="cross-fitting folds: each test row's weight comes from a domain "
                                         "classifier fitted on the other folds")
    max_weight: float = Field(gt=1, description="cap on a test row's density-ratio weight (1 = as common live as "
                                                "in the test split), before the weights are scaled to mean 1")
    min_effective_rows: int = Field(ge=1, description="effective test rows ((sum w)^2 / sum w^2) below which the "
                                                      "overlap is too small and no weighted figure is claimed")
    min_supported_share: float = Field(gt=0, le=1, description="share of the live traffic the test rows must stand "
                                                               "for (mean clipped density ratio over test rows), "
                                                               "below which the overlap is too small")


class GateConfig(_Section):
    min_accuracy: float = Field(ge=0, le=1, description="lowest test accuracy of the shipped model that passes")
    min_macro_f1: float = Field(ge=0, le=1, description="lowest test macro-F1 of the shipped model that passes")
    max_quantization_drop: float = Field(ge=0, le=1,
                                         description="test accuracy a shipped teacher may give up against its "
                                                     "PyTorch model (a fraction: 0.02 = two points), on the paired "
                                                     "interval; a shipped student answers to distill's bounds")
    batch_size: int = Field(ge=1, description="texts per model call when judging: 1 = each text alone, as one "
                                              "request is served")
    confidence: float = Field(gt=0, lt=1, description="two-sided confidence of every interval the gate computes")
    bootstrap_samples: int = Field(ge=100, description="resamples of the test rows for the intervals (seeded by "
                                                       "seed)")
    calibration_bins: int = Field(ge=2, description="equal-width confidence bins of the ECE and the reliability "
                                                    "diagram")
    length_buckets: list[int] = Field(min_length=1,
                                      description="upper edges of the token-length slices, increasing (one more "
                                                  "bucket above the last); evaluate's by_length uses them too")
    slice_columns: list[str] = Field(description="data columns (carried through prepare) each of whose values is a "
                                                 "slice; []: length slices only")
    min_slice_rows: int = Field(ge=1, description="rows a slice needs to be judged; a smaller one is only reported")
    min_slice_accuracy: float = Field(ge=0, le=1, description="lowest accuracy of a judged slice that passes")
    max_slice_gap: float = Field(ge=0, le=1, description="most a judged slice's accuracy may fall below the overall "
                                                         "accuracy")
    champion: str | None = Field(description="the production model to compare with: a served folder outside "
                                             "artifacts/ (e.g. a copy of a past release); null: the registry's "
                                             "prod version, if any")
    first_run: Literal["promote_if_checks_pass", "require_champion"] = Field(
        description="the decision with no champion: promote_if_checks_pass, or require_champion (INCONCLUSIVE)")
    margin: float = Field(ge=0, le=1, description="non-inferiority margin (a fraction: 0.01 = one point): the lower "
                                                  "end of candidate - champion accuracy and macro-F1 must be above "
                                                  "-margin")
    min_compare_rows: int = Field(ge=1, description="test rows both models were judged on, below which the "
                                                    "comparison with the champion is INCONCLUSIVE")
    parity_rows: int = Field(ge=1, description="test texts in the release's parity certificate, at evenly spaced "
                                               "ranks of token length, scored one per call")
    parity_max_prob_delta: float = Field(ge=0, le=1,
                                         description="most any probability may move when a serving host re-scores "
                                                     "the parity certificate (labels: serve.min_parity_agreement)")
    latency_rows: int = Field(ge=1, description="test texts timed one at a time (reported in .tunegate/runs/"
                                                "gate.json, never judged)")
    max_gmacs_per_text_p95: float = Field(gt=0,
                                          description="compute budget: p95 over the test texts of the shipped "
                                                      "graph's matrix-product multiply-accumulates per text at batch "
                                                      "1 (all its windows), in GMACs")
    live_traffic: LiveTrafficConfig = Field(description="accuracy on current traffic: test rows reweighted toward "
                                                        "the prediction log's texts by a domain classifier")

    @model_validator(mode="after")
    def _buckets_increase(self) -> GateConfig:
        edges = self.length_buckets
        if any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 1:
            raise ValueError("gate.length_buckets must be increasing token counts of at least 1")
        if len(set(self.slice_columns)) != len(self.slice_columns):
            raise ValueError("gate.slice_columns must not repeat")
        return self


class ServeConfig(_Section):
    """`tunegate serve`: the HTTP service (tasks/runtime/settings.py adds TUNEGATE_* variables and flags on top)."""
    model: str = Field(min_length=1,
                       description="a served folder (relative to the project), or registry:STAGE: the registry's "
                                   "version in STAGE, followed as it moves")
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description='the {name} of /v2/models/{name}')
    host: str = Field(min_length=1, description='interface to listen on (0.0.0.0: every interface, as in a container)')
    port: int = Field(ge=1, le=65535, description='TCP port')
    workers: int = Field(ge=1, description='uvicorn worker processes (the cores are split between them)')
    threads: int | None = Field(ge=1, description='onnxruntime threads per worker (unset: cores // workers)')
    max_batch_size: int = Field(ge=1,
                                description='texts per model call (micro-batching); 1 = each text alone')
    max_wait_ms: float = Field(ge=0, description='how long the first text of a batch waits for others (ms)')
    max_queue_texts: int = Field(ge=1, description='texts held waiting per worker; a request that would exceed it '
                                                   'gets 429 with Retry-After')
    max_queue_wait_ms: float = Field(gt=0, description='refuse (429) a request whose work ahead (queued texts and the '
                                                       'batch in the model, in model tokens x the learned time per '
                                                       'token; not its own) would take longer than this (ms)')
    request_timeout_s: float = Field(gt=0, description='a request not scored by then gets 504')
    max_body_bytes: int = Field(ge=1024, description='request bodies above this get 413')
    max_texts: int = Field(ge=1, description='texts per request (422 above)')
    max_text_chars: int = Field(ge=1, description='characters per text (422 above)')
    api_keys_file: str | None = Field(
        description='file of API keys, one per line (or TUNEGATE_API_KEYS=k1,k2); none: no auth, a warning at start')
    cors_origins: list[str] = Field(description='origins allowed by CORS (none: CORS off)')
    reload_seconds: float = Field(ge=0,
                                  description='poll the model source every this many seconds; 0 = never')
    log_dir: str = Field(min_length=1, description='prediction log folder (relative to the project)')
    log_texts: bool = Field(description='keep request texts in the prediction log (off: a hash and lengths only)')
    log_file_mb: float = Field(gt=0, description='a prediction-log part is closed at this size (MB)')
    log_max_mb: float = Field(gt=0, description='oldest prediction-log parts are deleted beyond this total (MB)')
    log_flush_seconds: float = Field(gt=0,
                                     description='prediction-log records are written within this many seconds')
    min_parity_agreement: float = Field(ge=0, le=1,
                                        description="share of the release's parity certificate texts whose label "
                                                    "this host must reproduce (scored one per call)")
    parity_action: Literal["refuse", "warn"] = Field(
        description='when this host fails the certificate check (start, reload, rollback): refuse the version, or '
                    'serve it with a warning; a folder without a certificate is served with a warning either way')
    shadow: str | None = Field(min_length=1,
                               description='a candidate that also scores a sampled share of live texts, off the '
                                           'response path, its answers logged beside prod\'s: a served folder '
                                           '(relative to the project) or registry:STAGE; null: no shadow')
    shadow_share: float = Field(ge=0, le=1,
                                description='share of served texts mirrored to the shadow, chosen by a hash of the '
                                            'text (the same text is mirrored in every worker and after a restart)')
    shadow_queue_texts: int = Field(ge=1,
                                    description='mirrored texts waiting for the shadow per worker (it scores only '
                                                'while prod\'s queue is idle); beyond it they are dropped and counted')

    @model_validator(mode="after")
    def _log_bounds(self) -> ServeConfig:
        if self.log_file_mb > self.log_max_mb:
            raise ValueError(f"serve.log_file_mb ({self.log_file_mb}) must not exceed serve.log_max_mb "
                             f"({self.log_max_mb})")
        if self.max_texts > self.max_queue_texts:  # such a request could never be queued
            raise ValueError(f"serve.max_texts ({self.max_texts}) must not exceed serve.max_queue_texts "
                             f"({self.max_queue_texts})")
        if self.max_body_bytes < self.max_texts * self.max_text_chars:  # the largest request allowed must fit
            raise ValueError(f"serve.max_body_bytes ({self.max_body_bytes}) must be at least serve.max_texts x "
                             f"serve.max_text_chars ({self.max_texts} x {self.max_text_chars})")
        if self.max_batch_size > self.max_queue_texts:
            raise ValueError(f"serve.max_batch_size ({self.max_batch_size}) must not exceed serve.max_queue_texts "
                             f"({self.max_queue_texts})")
        return self


class DriftCheck(_Section):
    """One monitoring check: its bound and what crossing it means (alarm: emits tunegate.drift.detected)."""
    max: float = Field(ge=0, description="the check fails when its figure exceeds this")
    severity: Literal["warning", "alarm"] = Field(description="warning: reported; alarm: also emits "
                                                              "tunegate.drift.detected")


class MonitorConfig(_Section):
    """The monitor flow (flows/monitoring.py): live traffic in the prediction log against prod's training data."""
    window_minutes: float = Field(gt=0, description="minutes of the prediction log each monitor run judges (the "
                                                    "window ending at the run)")
    every_minutes: float = Field(gt=0, description="the monitor deployment's interval, in minutes")
    min_window_texts: int = Field(ge=1, description="a window with fewer scored texts is reported, not judged")
    reference_rows: int = Field(ge=100, description="training rows compared with the window (a seeded sample when "
                                                    "there are more)")
    checks: dict[Literal["label_psi", "label_js", "confidence_ks", "length_ks", "unknown_rate", "oov_rate",
                         "domain_auc", "estimated_accuracy_drop", "accuracy_drop", "macro_f1_drop"],
                  DriftCheck] = Field(
        description="the checks run, by name, each with its bound and severity; a check left out is not run")
    domain_folds: int = Field(ge=2, description="cross-validation folds of the domain classifier (domain_auc); "
                                                "fewer texts than this on a side skips the check")
    domain_max_texts: int = Field(ge=50, description="texts per side given to the domain classifier (a seeded "
                                                     "sample)")
    labelled_dir: str | None = Field(description="folder (relative to the project) where new labelled batches land, "
                                                 "with the data's text and label columns; null: none")
    min_new_rows: int = Field(ge=1, description="this many new labelled rows emit tunegate.data.arrived")
    history: str = Field(min_length=1, description="JSON-lines file of every monitor run's figures (tunegate monitor "
                                                   "history), relative to the project unless absolute")


class OrchestrationConfig(_Section):
    """How the flows run stages: retries of transient failures and per-stage time limits."""
    retries: int = Field(ge=0, description="retries of a stage that failed for a transient reason (I/O, network, "
                                           "busy lock); 0: none")
    retry_delay_seconds: float = Field(ge=0, description="seconds before the first retry, doubled after each retry")
    stage_timeout_minutes: dict[str, float] = Field(description="time limit of each stage, in minutes; a stage past "
                                                                "it is stopped and the flow run fails")
    nightly_cron: str = Field(min_length=9,  # five cron fields
                              description="schedule of the nightly retraining (deployment nightly): a cron "
                                          "expression, in UTC")
    retrain_branch: str = Field(min_length=1, description="a retraining with new labelled data commits them on the "
                                                          "branch named this prefix plus the UTC time")
    retrain_push: str | None = Field(description="git remote that receives that branch and promote's tags (the data "
                                                 "goes to the DVC remote); null keeps them local")

    @model_validator(mode="after")
    def _every_stage(self) -> OrchestrationConfig:
        if set(self.stage_timeout_minutes) != set(STAGES) or min(self.stage_timeout_minutes.values()) <= 0:
            raise ValueError(f"orchestration.stage_timeout_minutes must give a positive limit for exactly the "
                             f"stages {', '.join(STAGES)}")
        return self


class SearchRange(_Section):
    """One key's range in a recipe search: `choices`, or `low`..`high` (integers when both are integers)."""
    low: float | int | None = Field(default=None, description="smallest value tried (with high)")
    high: float | int | None = Field(default=None, description="largest value tried (with low)")
    log: bool = Field(default=False, description="sample low..high on a log scale (learning rates, decays)")
    step: float | int | None = Field(default=None, description="spacing of the values tried between low and high; "
                                                               "null: any value (an integer range: every integer)")
    choices: list[float | int | str | bool | None] | None = Field(
        default=None, min_length=1, description="the values tried, instead of a range")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or low/high (with log or step), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self

    @property
    def integer(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int) \
            and not isinstance(self.low, bool) and (self.step is None or isinstance(self.step, int))


class TunePruningConfig(_Section):
    percentile: float = Field(gt=0, lt=100, description="a trial whose dev accuracy at an epoch is below this "
                                                        "percentile of the finished trials' at that epoch is stopped "
                                                        "(25: the lowest quarter)")
    startup_trials: int = Field(ge=0, description="trials that run to the end before any is stopped")
    warmup_epochs: int = Field(ge=0, description="epochs a trial runs before it can be stopped")


class TuneConfig(_Section):
    """`tunegate tune`: an Optuna search over train/distill keys, each trial a DVC experiment, chosen on dev."""
    space: dict[str, SearchRange] = Field(min_length=1, description="the keys searched, by dotted name (train.* or "
                                                                    "distill.*), each with its range or choices")
    trials: int | None = Field(ge=1, description="trials in the study at most, every call's and every host's "
                                                 "counted (a second call continues it); null: until the time "
                                                 "budget ends")
    timeout_minutes: float | None = Field(gt=0, description="wall-clock budget of this call: no trial starts after "
                                                            "it, and one still running is stopped; null: none")
    random_trials: int = Field(ge=1, description="trials sampled at random before the TPE sampler models the "
                                                 "finished ones (trial 0, the params.yaml recipe, counts)")
    workers: int = Field(ge=1, description="trials run at once on this host, each a `dvc exp run --temp`")
    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                       description="the study's name: its trials are the DVC experiments <study>-<trial number>")
    storage: str | None = Field(description="where the study lives, shared by workers on several hosts: a journal "
                                            "file path (relative to the project) or a database URL "
                                            "(sqlite:///..., postgresql://...); null: .tunegate/tune/<study>.journal")
    pruning: TunePruningConfig = Field(description="stopping poor trials early from their dev curve, epoch by "
                                                   "epoch (train keys only)")

    @model_validator(mode="after")
    def _tunable_keys(self) -> TuneConfig:
        wrong = [key for key in self.space if key.split(".", 1)[0] not in TUNABLE_SECTIONS or "." not in key]
        if wrong:
            raise ValueError(f"tune.space may vary only {'/'.join(TUNABLE_SECTIONS)} keys (section.key), not "
                             f"{', '.join(wrong)}")
        if self.trials is None and self.timeout_minutes is None:
            raise ValueError("tune needs a budget: set tune.trials, tune.timeout_minutes or both")
        return self


MISSING: Any = object()  # what `lookup` returns for a key the mapping does not hold (None may be a value)


def lookup(params: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a params-shaped mapping ("train.lora.r"), or MISSING."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _tune_problems(cfg: PipelineConfig) -> list[str | None]:
    """tune.space keys that name no setting, or whose range holds a value the setting refuses."""
    problems: list[str | None] = []
    dumped = cfg.dump()
    for key, search in cfg.tune.space.items():
        section = key.partition(".")[0]
        if lookup(dumped, key) is MISSING:
            problems.append(f"tune.space names {key}, which is no setting of {section}")
        else:
            values = search.choices if search.choices is not None else [search.low, search.high]
            for value in values:
                changed = apply_overrides({section: dumped[section]}, [override(key, value)])[section]
                try:  # the section alone: its own types and bounds (the whole config would check tune again)
                    type(cfg.section(section)).model_validate(changed)
                except ValidationError as exc:
                    why = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
                    problems.append(f"tune.space {key}: the value {value!r} is refused: {why}")
    return problems


def override(key: str, value: Any) -> str:
    """`key=value` as `tunegate run -S` and `dvc exp run -S` read it back (YAML): floats always with a point or an
    exponent that YAML 1.1 parsers also read as a float (5e-05 alone would be a string there)."""
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return f"{key}={text}"
    return f"{key}={json.dumps(value)}"


def _min_above_max(section: str, low: str, high: str, low_value: float, high_value: float) -> str | None:
    """The complaint when a lower bound exceeds its upper bound (no data could pass both), else None."""
    if low_value <= high_value:
        return None
    return (f"{section}.{low} ({low_value}) exceeds {section}.{high} ({high_value}): no data can satisfy both; "
            f"lower {section}.{low} or raise {section}.{high}")


def _raise_problems(problems: list[str | None]) -> None:
    """One ValueError listing every rule broken (a user fixes them all in one edit), or nothing."""
    found = [p for p in problems if p]
    if found:
        raise ValueError("; ".join(found))


def _class_share_problems(data: DataConfig, check: ValidateConfig) -> list[str | None]:
    """Class-share bounds no data with len(data.labels) classes can meet (shares sum to 1)."""
    classes = len(data.labels)
    too_high = check.min_class_share * classes > 1
    too_low = check.max_class_share * classes < 1
    return [
        f"validate.min_class_share ({check.min_class_share}) x {classes} classes in data.labels "
        f"({data.labels}) = {check.min_class_share * classes:g} > 1: no data can hold every class at that share; "
        f"lower validate.min_class_share to at most 1/{classes} ({1 / classes:.4g})" if too_high else None,
        f"validate.max_class_share ({check.max_class_share}) x {classes} classes in data.labels "
        f"({data.labels}) = {check.max_class_share * classes:g} < 1: the classes cannot fill the data at that share; "
        f"raise validate.max_class_share to at least 1/{classes} ({1 / classes:.4g})" if too_low else None,
    ]


def _gate_problems(cfg: PipelineConfig) -> list[str | None]:
    """Gate settings that another section makes unreachable or meaningless."""
    gate, problems = cfg.gate, []
    if cfg.quantize.max_accuracy_drop > gate.max_quantization_drop:
        problems.append(
            f"quantize.max_accuracy_drop ({cfg.quantize.max_accuracy_drop}) exceeds gate.max_quantization_drop "
            f"({gate.max_quantization_drop}): quantize would keep a rung that the gate's stricter bar then rejects; "
            "set quantize.max_accuracy_drop at or below gate.max_quantization_drop")
    cap = cfg.prepare.max_test_rows
    needs = {"latency_rows": "the gate could never time that many test rows",
             "min_slice_rows": "no slice could ever be judged",
             "min_compare_rows": "no comparison with the champion could ever be resolved (always INCONCLUSIVE)"}
    for key, why in needs.items():
        if cap is not None and getattr(gate, key) > cap:
            problems.append(f"gate.{key} ({getattr(gate, key)}) exceeds prepare.max_test_rows ({cap}): {why}; "
                            f"lower gate.{key} or raise prepare.max_test_rows (or set it to null)")
    why_not = {"text_column": "every distinct text would be a slice of its own",
               "label_column": "a slice per label is a class, and per-class figures are reported already"}
    for key, why in why_not.items():
        column = getattr(cfg.data, key)
        if column in gate.slice_columns:
            problems.append(f"gate.slice_columns ({gate.slice_columns}) names data.{key} ({column!r}): {why}; "
                            f"remove {column!r} from gate.slice_columns")
    return problems


class PipelineConfig(_Section):
    seed: int = Field(description="seed of the pipeline's random choices: splits, samples, bootstrap resamples, "
                                  "model initialisation")
    data: DataConfig = Field(description="the input data and its columns (shared by the stages)")
    validate_: ValidateConfig = Field(alias="validate",
                                      description="the validate stage: the raw-data contract and drift checks")
    prepare: PrepareConfig = Field(description="the prepare stage: train/dev/test splits and their contract")
    train: TrainConfig = Field(description="the train stage: fine-tuning the base model (the teacher)")
    distill: DistillConfig = Field(description="the distill stage: a smaller student cut from the teacher and "
                                               "trained to match it")
    evaluate: EvaluateConfig = Field(description="the evaluate stage: test-set metrics of the trained model")
    export: ExportConfig = Field(description="the export stage: ONNX models and their parity with PyTorch")
    quantize: QuantizeConfig = Field(description="the quantize stage: each model's quantization ladder, judged on "
                                                 "dev")
    gate: GateConfig = Field(description="the gate stage: judges the shipped model on test and decides its "
                                         "promotion")
    serve: ServeConfig = Field(description="tunegate serve, the HTTP service (not a stage)")
    monitor: MonitorConfig = Field(description="the monitor flow: live traffic against the prod version's training "
                                               "data (not a stage)")
    orchestration: OrchestrationConfig = Field(description="how the flows run the stages: retries, time limits and "
                                                           "deployments (not a stage)")
    tune: TuneConfig = Field(description="tunegate tune: the recipe search over train and distill keys (not a stage)")

    # `validate` shadows a pydantic method, hence the alias.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sections_agree(self) -> PipelineConfig:
        """Rules across sections, each naming both keys: settings valid alone that cannot work together."""
        _raise_problems([*_class_share_problems(self.data, self.validate_), *_gate_problems(self),
                         *_tune_problems(self)])
        return self

    def section(self, name: str) -> _Section:
        """The config section of a stage or shared section, by its params.yaml name."""
        return self.validate_ if name == "validate" else getattr(self, name)

    def dump(self) -> dict[str, Any]:
        """Plain dict in params.yaml shape (for stamps and reports)."""
        return self.model_dump(mode="json", by_alias=True)


def parse_config(raw: dict[str, Any]) -> PipelineConfig:
    """Validate a params mapping; every problem is reported with its dotted key."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        # A rule across sections has no location: its message names its keys itself.
        messages = [(err["loc"], err["msg"].removeprefix("Value error, ")) for err in exc.errors()]
        problems = "; ".join(f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg for loc, msg in messages)
        raise ConfigError(f"invalid params: {problems}") from exc


def read_params(path: Path) -> dict[str, Any]:
    """The raw params.yaml mapping."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: run tunegate from the project root")
    raw = _parsed_params(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return copy.deepcopy(raw)  # the caller's own copy: it may change it


@functools.lru_cache(maxsize=16)
def _parsed_params(text: str) -> Any:
    """params.yaml's text parsed (pure-Python YAML takes ~0.1 s a file), once per distinct text: a process that
    reads the same file again (the flow's stages, a test's in-process commands) reuses it. Keyed by the text itself,
    so an edited file is always parsed afresh; callers get a deep copy."""
    return _yaml().load(text)


def load_config(path: Path) -> PipelineConfig:
    """Load and validate params.yaml."""
    return parse_config(read_params(path))


def _yaml(round_trip: bool = False) -> Any:
    """YAML 1.2 like DVC (`5e-5` is a float); round-trip mode keeps comments when rewriting."""
    from ruamel.yaml import YAML

    return YAML() if round_trip else YAML(typ="safe", pure=True)


def _set_keys(doc: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = doc
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: no section {part!r} in params")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {key!r}")
        node[parts[-1]] = _yaml().load(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of raw params with `section.key=value` overrides (the syntax of `dvc exp run -S`)."""
    updated = json.loads(json.dumps(raw))
    _set_keys(updated, overrides)
    return updated


def write_overrides(path: Path, overrides: list[str]) -> None:
    """Apply overrides to params.yaml itself (as `dvc exp run -S` does), changing only the overridden values.

    Writing them there keeps dvc.lock truthful: the params a stage ran with are the file's.
    """
    text = path.read_text(encoding="utf-8")
    expected = apply_overrides(read_params(path), overrides)
    parse_config(expected)  # fail before writing anything
    for item in overrides:
        text = _edit_value(text, item)
    if text is None or _yaml().load(text) != expected:
        text = _round_trip_dump(path, overrides)  # a layout the in-place edit cannot handle
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _edit_value(text: str | None, item: str) -> str | None:
    """`text` with one override's value replaced where it stands (comments, quoting and the layout of
    every other line kept), or None when its layout is not one this edit handles."""
    from ruamel.yaml.nodes import CollectionNode, MappingNode

    if text is None:
        return None
    key, _, value = item.partition("=")
    node = _yaml(round_trip=True).compose(text)
    key_node = None
    for part in key.strip().split("."):
        if not isinstance(node, MappingNode):
            return None
        matches = [(k, v) for k, v in node.value if k.value == part]
        if len(matches) != 1:
            return None
        key_node, node = matches[0]
    start, end = node.start_mark.index, node.end_mark.index
    colon = text.find(":", key_node.end_mark.index)
    if isinstance(node, CollectionNode) and not node.flow_style:
        # A block collection becomes a flow one on the key's line; a comment on that line stays.
        end = len(text[:end].rstrip())
        key_line_end = text.find("\n", colon)
        comment = text[colon + 1:key_line_end].strip() if 0 <= key_line_end < start else ""
        start, prefix, suffix = colon + 1, " ", f"  {comment}" if comment.startswith("#") else ""
    elif start == end:  # `key:` with no value (null): the value goes after the colon
        start = end = colon + 1
        prefix, suffix = " ", ""
    else:
        prefix, suffix = "", ""
    wanted = _yaml().load(value)
    for rendering in (value.strip(), _flow(wanted)):
        if "\n" in rendering:
            continue
        edited = text[:start] + prefix + rendering + suffix + _keep_comment_column(text[end:], end - start,
                                                                                    len(prefix + rendering))
        if _yaml().load(edited) == apply_overrides(_yaml().load(text), [item]):
            return edited
    return None


def _keep_comment_column(rest: str, old_width: int, new_width: int) -> str:
    """The text after an edited value, with the spaces before a same-line comment adjusted so the
    comment stays in its column (at least one space before it)."""
    gap = len(rest) - len(rest.lstrip(" "))
    if not rest[gap:].startswith("#") or gap == 0:
        return rest
    return " " * max(1, gap + old_width - new_width) + rest[gap:]


def _flow(value: Any) -> str:
    """A value as one line of YAML 1.2 (flow style)."""
    emitter = _yaml()
    emitter.default_flow_style = True
    buffer = io.StringIO()
    emitter.dump(value, buffer)
    return buffer.getvalue().removesuffix("\n...\n").strip()


def _round_trip_dump(path: Path, overrides: list[str]) -> str:
    """params.yaml with the overrides, re-emitted by ruamel's round trip (comments kept, `null` written out)."""
    editor = _yaml(round_trip=True)
    editor.width = 4096  # keep flow lists on one line rather than reflowing them at 80 columns
    editor.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = editor.load(path.read_text(encoding="utf-8"))
    _set_keys(doc, overrides)
    buffer = io.StringIO()
    editor.dump(doc, buffer)
    return buffer.getvalue()
