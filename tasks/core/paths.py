"""Where every stage reads and writes: one home for artifact file names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ArtifactPaths:
    """Paths under a project root; stage outputs live in artifacts/<stage>/."""

    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / "artifacts" / stage

    def result(self, stage: str) -> Path:
        """The stage's small result (what the summary table shows for it)."""
        return self.stage_dir(stage) / "result.json"

    def failed_dir(self, stage: str) -> Path:
        """Where a stage that failed its data contract leaves its report (never over its last good output)."""
        return self.root / "artifacts" / "_failed" / stage

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def work_dir(self) -> Path:
        """Scratch that must outlive a stage run and `dvc repro` (which deletes outs first): git- and dvc-ignored."""
        return self.root / ".tunegate"

    @property
    def lock_cpu(self) -> Path:
        """Git-tracked, beside dvc.lock: the CPU each stage in dvc.lock was recorded on (tasks/core/lock_cpu.py)."""
        return self.root / "dvc.lock.cpu.json"

    @property
    def run_lock(self) -> Path:
        """flock'ed by whoever runs stages here (`tunegate run`, `tunegate stage`); names its holder."""
        return self.work_dir / "run.lock"

    @property
    def selection(self) -> Path:
        """Git-tracked, beside params.yaml: the recipe search behind params.yaml's recipe (`tunegate tune --apply`
        writes it; the gate reads it)."""
        return self.root / "tuning.json"

    def tune_journal(self, study: str) -> Path:
        """A study's Optuna journal when tune.storage is null: local to this clone."""
        return self.work_dir / "tune" / f"{study}.journal"

    def checkpoints(self, stage: str, fingerprint: str) -> Path:
        """Resumable checkpoints of one run (fingerprint = hash of everything that determines it)."""
        return self.work_dir / "checkpoints" / stage / fingerprint

    def run_record(self, stage: str) -> Path:
        """What the stage's last run measured and where it ran (times, host, paths): never DVC-tracked."""
        return self.work_dir / "runs" / f"{stage}.json"

    @property
    def token_cache(self) -> Path:
        """Token ids of tokenised splits, keyed by tokenizer, max length and texts."""
        return self.work_dir / "cache" / "tokens"

    # validate
    @property
    def validation_report(self) -> Path:
        return self.stage_dir("validate") / "report.json"

    # prepare
    def split(self, name: str) -> Path:
        return self.stage_dir("prepare") / f"{name}.parquet"

    # train
    @property
    def model_dir(self) -> Path:
        return self.stage_dir("train") / "model"

    @property
    def train_stamp(self) -> Path:
        return self.stage_dir("train") / "stamp.json"

    @property
    def long_text_report(self) -> Path:
        """train's choice of the long-text reading rule and every candidate's dev figures."""
        return self.stage_dir("train") / "long_text.json"

    @property
    def train_live(self) -> Path:
        """dvclive output: per-step loss and learning rate, per-epoch dev metrics (DVC metrics + plots)."""
        return self.stage_dir("train") / "live"

    @property
    def train_live_in_progress(self) -> Path:
        """The curves of the train run in progress (scratch; train_live is the tracked copy of a finished run)."""
        return self.work_dir / "live" / "train"

    # evaluate
    @property
    def metrics(self) -> Path:
        return self.stage_dir("evaluate") / "metrics.json"

    # distill
    @property
    def student_dir(self) -> Path:
        """The distilled student (an HF save_pretrained folder); absent when distill.enabled is false."""
        return self.stage_dir("distill") / "student"

    @property
    def distill_report(self) -> Path:
        """distill's record: recipe, layers kept, sizes, dev figures ({"enabled": false} alone without a student)."""
        return self.stage_dir("distill") / "distill.json"

    # export
    @property
    def onnx_dir(self) -> Path:
        return self.stage_dir("export") / "onnx"

    @property
    def student_onnx_dir(self) -> Path:
        """The student's ONNX folder, exported beside the teacher's when there is a student."""
        return self.stage_dir("export") / "student"

    # quantize
    @property
    def int8_dir(self) -> Path:
        return self.stage_dir("quantize") / "onnx"

    @property
    def quantization_report(self) -> Path:
        return self.stage_dir("quantize") / "quantization.json"

    # gate
    @property
    def decision(self) -> Path:
        return self.stage_dir("gate") / "decision.json"

    # Beside the decision, not outputs of the gate stage: a rerun of the gate, which writes a new decision, clears
    # them (staged_dir replaces the folder).
    @property
    def label_queue(self) -> Path:
        """`tunegate label-queue`: the rows whose labels would settle an INCONCLUSIVE comparison (its plan: .json)."""
        return self.stage_dir("gate") / "label_queue.csv"

    @property
    def label_verdict(self) -> Path:
        """`tunegate label-queue judge`: the comparison re-judged from the queue's labelled rows."""
        return self.stage_dir("gate") / "label_queue.verdict.json"
