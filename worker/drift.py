"""Each class's drift figure, kept current from the results the worker publishes.

Per product class, the confidences of the last `window` parts the model passed, measured with
`model.metrics.drift` against the calibration they were scored under, and exported as
`grad_score_drift` (with the parts it rests on and the level chance stays below) for the alert
rules in deploy/. A new calibration for a class (a promotion, a recalibration) starts its
window afresh: scores judged against one threshold say nothing about another's reference.
Each worker measures what it scored; Prometheus shows one series per worker, and the rules take
the largest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from model.metrics.drift import drift
from schemas import ClassCalibration
from worker.metrics import WorkerMetrics


@dataclass
class _Window:
    calibration: ClassCalibration
    confidences: deque[float] = field(default_factory=deque)
    changed: bool = False


class DriftMonitor:
    def __init__(self, window: int, metrics: WorkerMetrics) -> None:
        self.window = window
        self.metrics = metrics
        self.classes: dict[str, _Window] = {}

    def observe(self, product_class: str, confidence: float, calibration: ClassCalibration) -> None:
        """One published result; only a passed part (confidence below 0.5) enters the window."""
        w = self.classes.get(product_class)
        if w is None or (w.calibration is not calibration and w.calibration != calibration):
            w = self.classes[product_class] = _Window(calibration, deque(maxlen=self.window))
            w.changed = True
        # An equal calibration re-read from the state store: keep it, so the next result's
        # check is the identity test above, not a comparison of every reference score.
        w.calibration = calibration
        if confidence < 0.5:
            w.confidences.append(confidence)
            w.changed = True

    def publish(self) -> None:
        """The gauges of every class whose window changed since the last call (once a batch)."""
        for product_class, w in self.classes.items():
            if not w.changed:
                continue
            d = drift(np.fromiter(w.confidences, np.float64), w.calibration)
            self.metrics.drift.labels(product_class=product_class).set(d.statistic)
            self.metrics.drift_parts.labels(product_class=product_class).set(d.recent)
            self.metrics.drift_critical.labels(product_class=product_class).set(d.critical)
            w.changed = False
