"""The drift figure (model.metrics.drift) and the worker's per-class monitor (worker.drift)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from model.metrics.calibration import calibrate, confidence, reference_points
from model.metrics.drift import critical_value, drift, drift_from_histogram, reference_cdf
from schemas.model_state import REFERENCE_POINTS
from worker.drift import DriftMonitor
from worker.metrics import WorkerMetrics

RNG = np.random.default_rng(7)


def normals(n: int, rng: np.random.Generator = RNG, median: float = 20.0) -> np.ndarray:
    """Right-skewed positive scores, like a class's normal image scores."""
    return median * np.exp(0.25 * rng.standard_normal(n))


def passed(cal, scores: np.ndarray) -> np.ndarray:
    c = confidence(scores, cal)
    return c[c < 0.5]


def test_the_figure_is_the_two_sample_ks_distance_of_the_passed_parts() -> None:
    cal = calibrate(normals(300))
    recent = normals(400) * 1.1
    ref = np.asarray(cal.reference)
    expected = stats.ks_2samp(recent[recent <= cal.threshold], ref[ref <= cal.threshold])
    d = drift(confidence(recent, cal), cal)
    assert d.statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert d.recent == int((recent <= cal.threshold).sum()) and d.reference == 300


def test_an_unchanged_line_stays_below_the_critical_value_and_a_shifted_one_does_not() -> None:
    rng = np.random.default_rng(1)
    cal = calibrate(normals(200, rng))
    alarms = sum(drift(passed(cal, normals(500, rng)), cal).significant for _ in range(200))
    assert alarms <= 8  # 1 % expected; 8 of 200 would happen by chance about once in 1,000
    shifted = [drift(passed(cal, normals(500, rng) * 1.15), cal) for _ in range(20)]
    assert all(d.significant for d in shifted)
    assert min(d.statistic for d in shifted) > 0.2


def test_the_figure_does_not_depend_on_the_score_range() -> None:
    """Same shapes, scores ten times larger: the same D, so one alert level fits every class."""
    rng = np.random.default_rng(3)
    base, recent = normals(150, rng), normals(300, rng) * 1.05
    a = drift(confidence(recent, calibrate(base)), calibrate(base))
    b = drift(confidence(recent * 10, calibrate(base * 10)), calibrate(base * 10))
    assert a.statistic == pytest.approx(b.statistic, abs=1e-9)


def test_without_stored_scores_the_calibrations_own_lognormal_is_the_reference() -> None:
    rng = np.random.default_rng(5)
    full = calibrate(normals(400, rng))
    summary = full.model_copy(update={"reference": ()})
    same = drift(passed(full, normals(500, rng)), summary)
    moved = drift(passed(full, normals(500, rng) * 1.2), summary)
    assert not same.significant and moved.significant
    # The one-sample distance against the same truncated log-normal, computed by SciPy.
    x = passed(full, normals(300, rng))
    mu, cut = math.log(summary.median), summary.threshold
    scores = summary.threshold * np.exp(summary.scale * np.log(x / (1 - x)))
    trunc = stats.lognorm(s=summary.scale, scale=math.exp(mu))

    def cdf(s: np.ndarray) -> np.ndarray:
        return trunc.cdf(s) / trunc.cdf(cut)

    expected = stats.kstest(scores, cdf).statistic
    assert drift(x, summary).statistic == pytest.approx(expected, abs=1e-6)
    assert reference_cdf(summary, np.array([0.0, 0.5]))[1] == pytest.approx(1.0)


def test_the_histogram_figure_reads_below_the_exact_one_by_at_most_a_bin() -> None:
    cal = calibrate(normals(250))
    recent = passed(cal, normals(600) * 1.07)
    edges = np.linspace(0, 0.5, 101)
    counts, _ = np.histogram(recent, edges)
    exact, binned = drift(recent, cal), drift_from_histogram(edges, counts, cal)
    largest_bin = counts.max() / counts.sum()
    assert binned.recent == exact.recent
    assert exact.statistic - largest_bin - 1e-9 <= binned.statistic <= exact.statistic + 1e-9
    assert binned.critical == pytest.approx(exact.critical)


def test_no_parts_is_no_drift_and_never_significant() -> None:
    cal = calibrate(normals(50))
    for d in (drift(np.array([0.7, 0.9]), cal), drift_from_histogram([0, 0.5], [0], cal)):
        assert d.statistic == 0 and d.recent == 0 and not d.significant


def test_critical_value_is_the_asymptotic_ks_bound() -> None:
    assert critical_value(500, 100) == pytest.approx(1.628 * math.sqrt(600 / 50_000), rel=1e-3)
    assert critical_value(0, 10) == 1.0


def test_a_calibration_keeps_its_scores_sorted_and_bounded() -> None:
    few = normals(30)
    assert calibrate(few).reference == tuple(sorted(few))
    many = normals(5000)
    ref = reference_points(many)
    assert len(ref) == REFERENCE_POINTS and list(ref) == sorted(ref)
    assert ref[0] == many.min() and ref[-1] == many.max()


def test_the_monitor_windows_passed_parts_per_class_and_restarts_on_a_new_calibration() -> None:
    metrics = WorkerMetrics()
    monitor = DriftMonitor(window=50, metrics=metrics)
    cal = calibrate(normals(100))
    for c in confidence(normals(80), cal):
        monitor.observe("screw", float(c), cal)
    monitor.observe("screw", 0.9, cal)  # a rejected part never enters the window
    monitor.publish()

    def gauge(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"product_class": "screw"})

    assert gauge("grad_score_drift_parts") == 50
    window = list(monitor.classes["screw"].confidences)
    assert gauge("grad_score_drift") == pytest.approx(drift(np.array(window), cal).statistic)
    assert gauge("grad_score_drift_critical") == pytest.approx(critical_value(50, 100))

    recalibrated = calibrate(normals(120))
    monitor.observe("screw", 0.2, recalibrated)
    monitor.publish()
    assert gauge("grad_score_drift_parts") == 1
