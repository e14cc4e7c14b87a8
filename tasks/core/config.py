"""Typed, frozen, strict pipeline configuration: parsed once from params.yaml at the edge."""

from __future__ import annotations

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
# timeouts), not by any stage: no dvc.yaml stage depends on them.
SERVICE_SECTIONS: tuple[str, ...] = ("serve", "monitor", "orchestration")


class ConfigError(TunegateError, ValueError):
    """params.yaml (or an override) is missing, malformed or fails validation."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataConfig(_Section):
    path: str
    text_column: str
    label_column: str
    labels: list[int | str] = Field(min_length=2)
    label_names: list[str]
    source_column: str | None
    split_column: str | None

    @model_validator(mode="after")
    def _names_match_labels(self) -> DataConfig:
        if len(self.label_names) != len(self.labels):
            raise ValueError("data.label_names must have one name per entry of data.labels")
        if len(set(self.labels)) != len(self.labels) or len(set(self.label_names)) != len(self.label_names):
            raise ValueError("data.labels and data.label_names must not repeat")
        return self


class ValidateConfig(_Section):
    suite: str
    min_rows: int = Field(ge=1)
    max_rows: int = Field(ge=1)
    min_text_chars: int = Field(ge=1)
    max_text_chars: int = Field(ge=1)
    min_clean_share: float = Field(ge=0, le=1)
    min_unique_share: float = Field(ge=0, le=1)
    min_class_share: float = Field(ge=0, le=1)
    max_class_share: float = Field(ge=0, le=1)
    sample_bad_rows: int = Field(ge=0)
    drift_reference: str = Field(min_length=1)
    drift_severity: Literal["error", "warning"]
    max_label_psi: float = Field(ge=0)
    max_length_ks: float = Field(ge=0, le=1)
    max_oov_rate: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateConfig:
        problems = [_min_above_max("validate", low, high, getattr(self, low), getattr(self, high))
                    for low, high in (("min_rows", "max_rows"), ("min_text_chars", "max_text_chars"),
                                      ("min_class_share", "max_class_share"))]
        _raise_problems(problems)
        return self


class PrepareConfig(_Section):
    sources: list[str]
    dev_fraction: float = Field(gt=0, lt=1)  # their sum is checked below: the rule that bites
    test_fraction: float = Field(gt=0, lt=1)
    max_train_rows: int | None = Field(ge=1)
    max_dev_rows: int | None = Field(ge=1)
    max_test_rows: int | None = Field(ge=1)
    source_rows: dict[str, Annotated[int, Field(ge=1)]]  # source -> rows kept at most (seeded, stratified sample)
    contract: str
    min_rows_per_class: int = Field(ge=1)
    max_class_share_delta: float = Field(ge=0, le=1)
    near_duplicate_jaccard: float = Field(gt=0, le=1)
    shingle_words: int = Field(ge=1, le=16)
    minhash_permutations: int = Field(ge=1, le=512)
    lsh_bands: int = Field(ge=1)
    max_truncated_share: float = Field(ge=0, le=1)

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
    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] | None


# Long-text reading rules (the shapes tasks/runtime/long_text.py reads; a test checks the two agree). Typed here,
# not checked by importing that module: every stage reads this file, and a stage's deps are what it imports.
class HeadRule(_Section):
    rule: Literal["head"]


class HeadTailRule(_Section):
    rule: Literal["head_tail"]
    head_tokens: int = Field(ge=0)


class WindowRule(_Section):
    rule: Literal["window"]
    stride: int = Field(ge=1)
    # Windows per text at most (evenly spaced, first and last kept); absent: long_text.MAX_WINDOWS (64).
    max_windows: int | None = Field(default=None, ge=1, le=64)
    aggregate: Literal["mean_prob", "mean_logit", "max_confidence"]

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
    candidates: list[LongTextRule] = Field(min_length=1)  # cheapest first: the first is the choice to beat
    min_gain_se: float = Field(ge=0)
    train_windows: bool
    max_train_windows: int = Field(ge=1)

    @model_validator(mode="after")
    def _distinct_candidates(self) -> LongTextConfig:
        rules = [c.model_dump_json() for c in self.candidates]
        if len(set(rules)) != len(rules):
            raise ValueError("train.long_text.candidates must not repeat a rule")
        return self


class TrainConfig(_Section):
    base_model: str
    max_length: int = Field(ge=8)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    max_grad_norm: float = Field(gt=0)
    early_stopping_patience: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    deterministic: bool
    gradient_accumulation_steps: int = Field(ge=1)
    compile: bool
    dataloader_workers: int | None = Field(ge=0)
    checkpoint_every_steps: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    token_cache_entries: int = Field(ge=2)  # a run reads two entries (train, dev)
    method: Literal["full", "lora"]
    lora: LoraConfig
    long_text: LongTextConfig

    @model_validator(mode="after")
    def _head_tail_fits(self) -> TrainConfig:
        for rule in self.long_text.candidates:
            if isinstance(rule, HeadTailRule) and rule.head_tokens >= self.max_length:
                raise ValueError(f"train.long_text head_tail head_tokens ({rule.head_tokens}) must be below "
                                 f"train.max_length ({self.max_length}), or it reads what head reads")
        return self


class TransferConfig(_Section):
    """Unlabelled transfer texts for distillation: sentences of data rows that no prepare split holds."""
    sources: list[str]            # data.source_column values whose rows may lend sentences ([]: no transfer texts)
    rows: int = Field(ge=0)       # source rows sampled (seeded)
    max_texts: int = Field(ge=0)  # sentences kept at most
    min_words: int = Field(ge=1)  # shorter sentences are dropped


class DistillConfig(_Section):
    enabled: bool
    keep_layers: list[int] = Field(min_length=1)  # teacher encoder layers the student keeps, in order
    ffn_keep: float = Field(gt=0, le=1)
    importance_rows: int = Field(ge=1)
    temperature: float = Field(gt=0)
    alpha: float = Field(ge=0, le=1)
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    freeze_embeddings: bool
    transfer: TransferConfig
    max_accuracy_drop: float = Field(ge=0, le=1)  # the student's bound (quantize on dev, the gate on test)
    min_agreement: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _layers_increase(self) -> DistillConfig:
        layers = self.keep_layers
        if layers[0] < 0 or any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"distill.keep_layers ({layers}) must be increasing layer indices from 0 "
                             "(each teacher layer at most once)")
        return self


class EvaluateConfig(_Section):
    batch_size: int = Field(ge=1)


class ExportConfig(_Section):
    opset: int = Field(ge=17)
    parity_atol: float = Field(gt=0)
    fp16_atol: float = Field(gt=0)
    parity_rows: int = Field(ge=1)
    external_data_mb: int = Field(ge=0)
    target: Literal["cpu", "cuda"]


# The quantization ladder's rungs, roughly fastest first; fp32 (no quantization) always keeps accuracy.
QuantizationRung = Literal["dynamic_per_row", "dynamic_per_tensor", "dynamic_per_channel", "static_minmax", "static_entropy",
                           "static_percentile", "static_sensitive_fp32", "fp32"]
QUANTIZATION_RUNGS: tuple[str, ...] = get_args(QuantizationRung)
# The models whose ladders quantize climbs: the distilled student (artifacts/export/student) and the teacher.
QuantizedModel = Literal["student", "teacher"]


class QuantizeConfig(_Section):
    models: list[QuantizedModel] = Field(min_length=1)
    ladder: list[QuantizationRung] = Field(min_length=1)
    max_accuracy_drop: float = Field(ge=0, le=1)
    confidence: float = Field(gt=0, lt=1)
    bootstrap_samples: int = Field(ge=100)
    min_agreement: float = Field(ge=0, le=1)
    calibration_rows: int = Field(ge=1)
    sensitive_nodes: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    latency_rows: int = Field(ge=1)
    batch_check_size: int = Field(ge=2)
    max_batch_prob_delta: float = Field(ge=0, le=1)

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


class GateConfig(_Section):
    min_accuracy: float = Field(ge=0, le=1)
    min_macro_f1: float = Field(ge=0, le=1)
    max_quantization_drop: float = Field(ge=0, le=1)
    batch_size: int = Field(ge=1)
    confidence: float = Field(gt=0, lt=1)
    bootstrap_samples: int = Field(ge=100)
    calibration_bins: int = Field(ge=2)
    length_buckets: list[int] = Field(min_length=1)
    slice_columns: list[str]
    min_slice_rows: int = Field(ge=1)
    min_slice_accuracy: float = Field(ge=0, le=1)
    max_slice_gap: float = Field(ge=0, le=1)
    champion: str | None
    first_run: Literal["promote_if_checks_pass", "require_champion"]
    margin: float = Field(ge=0, le=1)
    min_compare_rows: int = Field(ge=1)
    parity_rows: int = Field(ge=1)
    parity_max_prob_delta: float = Field(ge=0, le=1)
    latency_rows: int = Field(ge=1)
    max_gmacs_per_text_p95: float = Field(gt=0)

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

    @model_validator(mode="after")
    def _log_bounds(self) -> ServeConfig:
        if self.log_file_mb > self.log_max_mb:
            raise ValueError(f"serve.log_file_mb ({self.log_file_mb}) must not exceed serve.log_max_mb ({self.log_max_mb})")
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
    max: float = Field(ge=0)
    severity: Literal["warning", "alarm"]


class MonitorConfig(_Section):
    """The monitor flow (flows/monitoring.py): live traffic in the prediction log against prod's training data."""
    window_minutes: float = Field(gt=0)
    every_minutes: float = Field(gt=0)
    min_window_texts: int = Field(ge=1)
    reference_rows: int = Field(ge=100)
    checks: dict[Literal["label_psi", "label_js", "confidence_ks", "length_ks", "unknown_rate", "oov_rate",
                         "domain_auc", "accuracy_drop", "macro_f1_drop"], DriftCheck]
    domain_folds: int = Field(ge=2)
    domain_max_texts: int = Field(ge=50)
    labelled_dir: str | None
    min_new_rows: int = Field(ge=1)
    history: str = Field(min_length=1)


class OrchestrationConfig(_Section):
    """How the flows run stages: retries of transient failures and per-stage time limits."""
    retries: int = Field(ge=0)
    retry_delay_seconds: float = Field(ge=0)
    stage_timeout_minutes: dict[str, float]
    nightly_cron: str = Field(min_length=9)  # five cron fields
    retrain_branch: str = Field(min_length=1)
    retrain_push: str | None

    @model_validator(mode="after")
    def _every_stage(self) -> OrchestrationConfig:
        if set(self.stage_timeout_minutes) != set(STAGES) or min(self.stage_timeout_minutes.values()) <= 0:
            raise ValueError(f"orchestration.stage_timeout_minutes must give a positive limit for exactly the "
                             f"stages {', '.join(STAGES)}")
        return self


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
    seed: int
    data: DataConfig
    validate_: ValidateConfig = Field(alias="validate")
    prepare: PrepareConfig
    train: TrainConfig
    distill: DistillConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    quantize: QuantizeConfig
    gate: GateConfig
    serve: ServeConfig
    monitor: MonitorConfig
    orchestration: OrchestrationConfig

    # `validate` shadows a pydantic method, hence the alias.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sections_agree(self) -> PipelineConfig:
        """Rules across sections, each naming both keys: settings valid alone that cannot work together."""
        _raise_problems([*_class_share_problems(self.data, self.validate_), *_gate_problems(self)])
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
    raw = _yaml().load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return raw


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
