"""Prometheus metrics of one worker, in its own registry (several workers may share a process
in tests; a fleet is aggregated by Prometheus, not here)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.consumed = Counter(
            "grad_events_consumed", "Records read from the input topic", registry=r
        )
        self.processed = Counter(
            "grad_events_processed",
            "Events scored and published",
            ["verdict", "line", "product_class"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "grad_events_dead_lettered",
            "Records sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "grad_retries", "Transient failures retried with backoff", ["stage"], registry=r
        )
        self.commits = Counter("grad_offset_commits", "Offset commits", ["outcome"], registry=r)
        self.batch_size = Histogram(
            "grad_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "grad_stage_seconds",
            "Time per pipeline stage and batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "grad_end_to_end_seconds",
            "From captured_at to the result being published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "grad_model_info",
            "1 for each model version being served (role: active, or canary for some classes)",
            ["version", "role"],
            registry=r,
        )
        self.recorded = Counter(
            "grad_rows_recorded", "Inspection rows and labels written to SQL", ["kind"], registry=r
        )
        self.database_up = Gauge(
            "grad_database_up", "1 when the inspection database accepts writes", registry=r
        )
        self.state_store_up = Gauge(
            "grad_state_store_up", "1 when the shared state store (Redis) answers", registry=r
        )
        self.partitions = Gauge(
            "grad_assigned_partitions", "Input partitions assigned to this worker", registry=r
        )
        self.publish_failing = Gauge(
            "grad_publish_failing",
            "1 while a batch's results or dead letters keep being refused (retrying)",
            registry=r,
        )
        self.poisoned = Counter(
            "grad_poison_records",
            "Records dead-lettered by the crash-loop breaker without being processed again",
            registry=r,
        )
        self._drift_gauges(r)
        self.ready = Gauge("grad_ready", "1 when model loaded and partitions assigned", registry=r)

    def _drift_gauges(self, r: CollectorRegistry) -> None:
        """worker.drift: per class, recent passed parts against the calibration's normals."""
        self.drift = Gauge(
            "grad_score_drift",
            "Kolmogorov-Smirnov distance of recent passed parts' scores from the calibration's",
            ["product_class"],
            registry=r,
        )
        self.drift_parts = Gauge(
            "grad_score_drift_parts",
            "Passed parts the drift figure rests on (the last WORKER_DRIFT_WINDOW at most)",
            ["product_class"],
            registry=r,
        )
        self.drift_critical = Gauge(
            "grad_score_drift_critical",
            "The drift figure an unchanged line stays below 99 times in 100, at these counts",
            ["product_class"],
            registry=r,
        )

    def set_models(self, active: str, canaries: set[str]) -> None:
        self.model_info.clear()
        self.model_info.labels(version=active, role="active").set(1)
        for v in canaries:
            self.model_info.labels(version=v, role="canary").set(1)
