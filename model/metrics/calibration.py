"""Per-class decision thresholds from normal images only.

A line rarely has labelled defects when it starts, so the threshold is set from held-out normal
scores at a target false-positive rate, by one of three methods, whichever the count supports:

- `empirical`: with enough scores that the tail beyond the threshold holds MIN_TAIL_COUNT of
  them, the quantile itself.
- `exponential tail` or `lognormal`: from STEADY_COUNT scores, the higher of two
  extrapolations, and `method` names the one that set it: an exponential tail fitted to the top
  TAIL_FRACTION of the log-scores (peaks over a threshold, the excesses exponential: a Pareto
  tail on the scores) and a log-normal fitted to all of them. Neither shape holds on every
  model: measured out of sample (`bench.calibration`, bench/RESULTS.md "Calibration: the
  heavier of two tails"), the log-normal fit realised 1.5-2.6 % false positives at a 1 % target
  on magnetic_tile under three screening models where the exponential tail realised 0.0-1.0 %,
  and on the standardised default decoder it was the other way round (0.5 % against 2.6 %). The
  higher of the two met the target on all four; what it costs is recall, where the lower one
  had bought it with false alarms it did not promise.
- `lognormal`: below STEADY_COUNT, the log-normal fit alone (a tail of four images holds no
  shape); such a threshold is provisional and says so.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from schemas import ClassCalibration
from schemas.model_state import DEFAULT_TARGET_FPR, REFERENCE_POINTS, STEADY_COUNT

# The empirical quantile is trusted once the tail it cuts holds at least this many scores.
MIN_TAIL_COUNT = 10

# The exponential tail is fitted to the scores above this upper fraction's edge (the 80th
# percentile): low enough that 20 normals give it four excesses, high enough that the body of
# the distribution does not set the tail's slope (0.1 read 0.6-3.1 %, noisier at 20 normals).
TAIL_FRACTION = 0.2

# Below STEADY_COUNT normal scores a class's threshold is provisional (`ClassCalibration.steady`;
# the measurement behind the count is beside it in `schemas.model_state`).


def lognormal_quantile(mu: float, sigma: float, tail: float) -> float:
    """The score a log-normal(mu, sigma) exceeds with probability `tail`."""
    return math.exp(mu + NormalDist().inv_cdf(1.0 - tail) * sigma)


def exponential_tail_quantile(logs: np.ndarray, tail: float) -> float:
    """The score exceeded with probability `tail` (below TAIL_FRACTION), extrapolated from the
    log-scores above their (1 - TAIL_FRACTION) quantile u: the excesses over u taken as
    exponential with their mean b (its maximum-likelihood scale), so
    P(log s > u + x) = p_u * exp(-x / b), where p_u is the fraction above u."""
    u = float(np.quantile(logs, 1.0 - TAIL_FRACTION))
    excess = logs[logs > u] - u
    if not excess.size:  # the top of the scores all tie: nothing above u to extrapolate
        return math.exp(u)
    p_u = excess.size / logs.size
    b = max(float(excess.mean()), 1e-6)
    return math.exp(u + b * math.log(p_u / tail))


def calibrate(scores: np.ndarray, target_fpr: float = DEFAULT_TARGET_FPR) -> ClassCalibration:
    """Threshold, score statistics and confidence scale from normal scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size < 2:
        raise ValueError("calibration needs at least two normal scores")
    if not 0 < target_fpr < 1:
        raise ValueError("target_fpr must lie in (0, 1)")
    logs = np.log(np.clip(s, 1e-12, None))
    mu, sigma = float(logs.mean()), float(logs.std(ddof=1))
    sigma = max(sigma, 1e-6)
    if s.size * target_fpr >= MIN_TAIL_COUNT:
        threshold = float(np.quantile(s, 1.0 - target_fpr, method="higher"))
        method = "empirical"
    elif s.size >= STEADY_COUNT and target_fpr < TAIL_FRACTION / 2:
        tail = exponential_tail_quantile(logs, target_fpr)
        body = lognormal_quantile(mu, sigma, target_fpr)
        threshold, method = (tail, "exponential tail") if tail >= body else (body, "lognormal")
    else:
        threshold = lognormal_quantile(mu, sigma, target_fpr)
        method = "lognormal"
    return ClassCalibration(
        threshold=threshold,
        scale=sigma,
        target_fpr=target_fpr,
        n_images=int(s.size),
        mean=float(s.mean()),
        std=float(s.std(ddof=1)),
        median=float(np.median(s)),
        q99=float(np.quantile(s, 0.99)),
        max=float(s.max()),
        method=method,
        reference=reference_points(s),
    )


def reference_points(scores: np.ndarray) -> tuple[float, ...]:
    """The normal scores drift is measured against: all of them, sorted, or past
    REFERENCE_POINTS that many evenly spaced quantiles (the same distribution, a bounded size)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size > REFERENCE_POINTS:
        s = np.quantile(s, np.linspace(0.0, 1.0, REFERENCE_POINTS))
    return tuple(float(v) for v in s)


def confidence(scores: np.ndarray | float, cal: ClassCalibration) -> np.ndarray:
    """Confidence that an image is anomalous: a logistic in log-score, 0.5 at the threshold.

    The scale is the spread of normal log-scores, so one normal standard deviation above the
    threshold reads about 0.73 whatever the class's score range.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, None)
    z = (np.log(s) - math.log(cal.threshold)) / cal.scale
    return 1.0 / (1.0 + np.exp(-z))


def calibration_report(calibration: dict[str, ClassCalibration]) -> list[str]:
    """One line per class for the operator, flagging thresholds set on few normal images."""
    lines = []
    for c, cal in sorted(calibration.items()):
        line = (
            f"{c}: threshold {cal.threshold:.2f} at {cal.target_fpr:.1%} false positives, "
            f"from {cal.n_images} held-out normal images ({cal.method})"
        )
        if not cal.steady:
            line += (
                f"; provisional (fewer than {STEADY_COUNT}): the realised false-positive rate may "
                "be several times the target, recalibrate once the line has recorded more "
                "normal images (python -m model.retrain)"
            )
        lines.append(line)
    return lines
