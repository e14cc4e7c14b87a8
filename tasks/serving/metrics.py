"""Prometheus metrics of `tunegate serve`, on the service's own registry (several apps may live in one process)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set (to a fresh folder) by the runner before workers > 1 start

# Why a request was refused: the `reason` label's only values (low cardinality by construction).
REFUSAL_REASONS = ("unauthorized", "body_too_large", "invalid_input", "queue_full", "timeout", "disconnected")

# Why a mirrored text was not scored by the shadow (the `reason` label of tunegate_shadow_dropped).
SHADOW_DROP_REASONS = ("queue_full", "unavailable", "stopping")

# Seconds; the service answers in milliseconds when well, up to serve.request_timeout_s (default 60) when not.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Texts per model call; serve.max_batch_size is 16 by default.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def multiprocess() -> bool:
    """Whether this process writes its metrics to PROMETHEUS_MULTIPROC_DIR (several uvicorn workers)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class ServiceMetrics:
    """Every metric of the service; implements tasks.serving.batcher.BatchObserver."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram("tunegate_request_seconds", "HTTP request latency by route and status",
                                         ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_call_seconds = Histogram("tunegate_model_call_seconds", "Latency of one model call (one batch)",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_texts = Histogram("tunegate_batch_texts", "Texts per model call", buckets=BATCH_BUCKETS, registry=r)
        # livesum: the texts waiting in every live worker.
        self.queue_texts = Gauge("tunegate_queue_texts", "Texts waiting for the model", registry=r,
                                 multiprocess_mode="livesum")
        # What admission prices the wait by: tokens of the windows the model will read of the queued texts.
        self.queue_tokens = Gauge("tunegate_queue_tokens", "Model work waiting: tokens of the queued texts' windows",
                                  registry=r, multiprocess_mode="livesum")
        self.texts_scored = Counter("tunegate_texts_scored", "Texts scored, by predicted label", ["label"], registry=r)
        # A gauge set to 1 for the version served (0 once swapped out): Info has no multiprocess mode.
        self.model_version = Gauge("tunegate_model_version_info", "The model version served (1 = current)",
                                   ["name", "version"], registry=r, multiprocess_mode="livemax")
        self.refused = Counter("tunegate_requests_refused", "Requests refused, by reason", ["reason"], registry=r)
        self.log_dropped = Counter("tunegate_prediction_log_dropped", "Prediction-log records dropped (queue full)",
                                   registry=r)
        self.reload_failures = Counter("tunegate_reload_failures", "Failed reloads of the model source", registry=r)
        # The parity certificate check of each version loaded (start, reloads, refused ones included). Every worker of
        # a host computes the same figures; min/max keep the worse one should they ever differ.
        self.parity_agreement = Gauge("tunegate_parity_agreement", "Share of the version's parity-certificate texts "
                                      "whose label this host reproduces", ["version"], registry=r,
                                      multiprocess_mode="livemin")
        self.parity_prob_delta = Gauge("tunegate_parity_max_prob_delta", "Largest |probability difference| from the "
                                       "version's parity certificate on this host", ["version"], registry=r,
                                       multiprocess_mode="livemax")
        self.parity_passed = Gauge("tunegate_parity_passed", "1 = this host reproduces the version's parity "
                                   "certificate, 0 = it does not, -1 = the version has no certificate", ["version"],
                                   registry=r, multiprocess_mode="livemin")
        self._shadow_metrics(r)
        for reason in REFUSAL_REASONS:  # every reason shows as 0 before the first refusal
            self.refused.labels(reason)
        self._dropped_seen = 0
        self._version: tuple[str, str] | None = None

    def _shadow_metrics(self, r: CollectorRegistry) -> None:
        """Shadow evaluation by mirroring (tasks/serving/shadow.py); all zero while serve.shadow is off."""
        self.shadow_mirrored = Counter("tunegate_shadow_mirrored", "Served texts sampled for the shadow "
                                       "(serve.shadow_share)", registry=r)
        self.shadow_scored = Counter("tunegate_shadow_scored", "Mirrored texts the shadow scored", registry=r)
        self.shadow_dropped = Counter("tunegate_shadow_dropped", "Mirrored texts the shadow did not score, by reason "
                                      "(queue_full: serve.shadow_queue_texts; unavailable: no shadow loaded; "
                                      "stopping)", ["reason"], registry=r)
        self.shadow_failed = Counter("tunegate_shadow_failed", "Mirrored texts whose shadow scoring raised",
                                     registry=r)
        self.shadow_disagreements = Counter("tunegate_shadow_disagreements", "Scored mirrored texts whose shadow "
                                            "label differs from prod's", registry=r)
        self.shadow_load_failures = Counter("tunegate_shadow_load_failures", "Failed loads of the shadow "
                                            "(serve.shadow), at start or on following its source", registry=r)
        self.shadow_queue_texts = Gauge("tunegate_shadow_queue_texts", "Mirrored texts waiting for the shadow",
                                        registry=r, multiprocess_mode="livesum")
        self.shadow_version = Gauge("tunegate_shadow_version_info", "The shadow version loaded (1 = current)",
                                    ["version"], registry=r, multiprocess_mode="livemax")
        for reason in SHADOW_DROP_REASONS:
            self.shadow_dropped.labels(reason)
        self._shadow_version: str | None = None

    # ShadowObserver (called from the shadow's thread and, for mirrored/dropped, the event loop)
    def on_shadow_mirrored(self, texts: int) -> None:
        self.shadow_mirrored.inc(texts)

    def on_shadow_scored(self, agree: bool) -> None:
        self.shadow_scored.inc()
        if not agree:
            self.shadow_disagreements.inc()

    def on_shadow_dropped(self, reason: str, texts: int) -> None:
        if reason not in SHADOW_DROP_REASONS:
            raise ValueError(f"unknown shadow drop reason {reason!r}")
        self.shadow_dropped.labels(reason).inc(texts)

    def on_shadow_failed(self, texts: int) -> None:
        self.shadow_failed.inc(texts)

    def on_shadow_load_failed(self) -> None:
        self.shadow_load_failures.inc()

    def on_shadow_queue(self, texts: int) -> None:
        self.shadow_queue_texts.set(texts)

    def on_shadow_version(self, version: str) -> None:
        if self._shadow_version is not None and self._shadow_version != version:
            self.shadow_version.labels(self._shadow_version).set(0)
        self.shadow_version.labels(version).set(1)
        self._shadow_version = version

    # BatchObserver
    def on_batch(self, version: str, texts: int, seconds: float) -> None:
        self.model_call_seconds.observe(seconds)
        self.batch_texts.observe(texts)

    def on_queue_depth(self, texts: int, tokens: int) -> None:
        self.queue_texts.set(texts)
        self.queue_tokens.set(tokens)

    def on_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(endpoint, str(status)).observe(seconds)

    def on_refused(self, reason: str) -> None:
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.refused.labels(reason).inc()

    def on_scored(self, labels: list[str]) -> None:
        for label in labels:
            self.texts_scored.labels(label).inc()

    def on_log_dropped(self, dropped_total: int) -> None:
        """Record the prediction log's running total of dropped records."""
        if dropped_total > self._dropped_seen:
            self.log_dropped.inc(dropped_total - self._dropped_seen)
            self._dropped_seen = dropped_total

    def on_reload_failed(self) -> None:
        self.reload_failures.inc()

    def on_parity(self, version: str, status: str, agreement: float | None, max_prob_delta: float | None) -> None:
        """Record a version's certificate check (status passed | failed | no_certificate; figures when checked)."""
        self.parity_passed.labels(version).set({"passed": 1, "failed": 0}.get(status, -1))
        if agreement is not None and max_prob_delta is not None:
            self.parity_agreement.labels(version).set(agreement)
            self.parity_prob_delta.labels(version).set(max_prob_delta)

    def set_version(self, name: str, version: str) -> None:
        if self._version is not None and self._version != (name, version):
            self.model_version.labels(*self._version).set(0)
        self.model_version.labels(name, version).set(1)
        self._version = (name, version)

    def close(self) -> None:
        """A stopping worker's live gauges (queue depth, version) leave the sum; its counters stay counted."""
        if multiprocess():
            mark_process_dead(os.getpid())

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of this process, or of every worker in multiprocess mode; with its content type."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
