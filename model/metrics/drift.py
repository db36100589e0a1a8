"""How far a class's recent normal parts have moved from the normal parts it was calibrated on.

The figure is the Kolmogorov-Smirnov distance D: the largest gap, over every score, between
the share of recent parts scoring at or below it and the share of the calibration's normal
images doing so. Chosen over a mean shift, a population stability index or a divergence
because:

- it needs no binning and no fitted shape, so it means the same on a class with 20 calibration
  images as on one with 2,000;
- it is unchanged by any increasing transform of the score, so it reads the same on raw
  scores, log scores and the confidence scale: one alert level serves every class, whatever
  its score range;
- it is bounded and readable: D = 0.3 means some score separates 30 % more of one set than of
  the other;
- its spread under no change is known (`critical_value`), so a figure from few parts or few
  calibration images can be told from noise, on the page and in the alert.

"Parts judged normal" are those the model passed: scores below the class threshold. Parts it
rejected may be defects, which the anomaly rate shows and which must not count as drift. The
calibration's normal scores are cut at the same threshold (its target false-positive share lies
above it), so a line that has not changed reads near 0 either way.

Reference: the calibration's stored normal scores (`ClassCalibration.reference`). A calibration
made before they were stored has only its summary; its reference is then the log-normal the
calibration itself assumes (median, log-scale spread), compared as a continuous distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.metrics.calibration import confidence
from schemas import ClassCalibration

# The false-alarm level of `critical_value`: a distance above it happens by chance once in 100
# comparisons of a line that has not changed.
ALPHA = 0.01


@dataclass(frozen=True)
class Drift:
    statistic: float  # D in [0, 1]
    recent: int  # parts judged normal that it was measured on
    reference: int  # calibration normal images it was compared with
    critical: float  # D a line that has not changed exceeds with probability ALPHA

    @property
    def significant(self) -> bool:
        return self.statistic > self.critical


def critical_value(n: int, m: int, alpha: float = ALPHA) -> float:
    """The asymptotic two-sample KS critical value c(alpha) * sqrt((n + m) / (n m))."""
    if n < 1 or m < 1:
        return 1.0
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def reference_confidences(cal: ClassCalibration) -> np.ndarray | None:
    """The calibration's normal images below its threshold, on the confidence scale, sorted;
    None when the calibration kept no scores."""
    if not cal.reference:
        return None
    c = np.sort(confidence(np.asarray(cal.reference, dtype=np.float64), cal))
    return c[c < 0.5]


def reference_cdf(cal: ClassCalibration, c: np.ndarray) -> np.ndarray:
    """Share of the calibration's normal images (below the threshold) whose confidence is at or
    below each of `c`."""
    c = np.asarray(c, dtype=np.float64)
    ref = reference_confidences(cal)
    if ref is not None and ref.size:
        return np.searchsorted(ref, c, side="right") / ref.size
    # Log-normal: log(score / median) / scale is standard normal; confidence is the logistic
    # of log(score / threshold) / scale, so z = logit(c) + log(threshold / median) / scale.
    shift = math.log(cal.threshold / max(cal.median, 1e-12)) / cal.scale
    clipped = np.clip(c, 1e-12, 1 - 1e-12)
    z = np.log(clipped / (1 - clipped)) + shift
    below = _phi(np.minimum(z, shift)) / max(_phi(np.asarray(shift)).item(), 1e-12)
    return np.where(c <= 0, 0.0, np.where(c >= 0.5, 1.0, below))


def drift(recent_confidence: np.ndarray, cal: ClassCalibration) -> Drift:
    """D between the confidences of recent parts judged normal and the calibration's normals.

    Confidences at or above 0.5 (rejected parts) are left out here, whoever passes them.
    """
    x = np.sort(np.asarray(recent_confidence, dtype=np.float64))
    x = x[x < 0.5]
    m = cal.n_images
    if x.size == 0:
        return Drift(0.0, 0, m, 1.0)
    n = x.size
    ref = reference_confidences(cal)
    if ref is not None and ref.size:
        # Two step functions: the largest gap is at one of the points of either set.
        points = np.concatenate([x, ref])
        mine = np.searchsorted(x, points, side="right") / n
        theirs = np.searchsorted(ref, points, side="right") / ref.size
        d = float(np.max(np.abs(mine - theirs)))
    else:
        # A continuous reference: the gap is largest just before or at a recent point.
        f = reference_cdf(cal, x)
        i = np.arange(1, n + 1)
        d = float(max(np.max(i / n - f), np.max(f - (i - 1) / n)))
    return Drift(d, n, m, critical_value(n, m))


def drift_from_histogram(edges: np.ndarray, counts: np.ndarray, cal: ClassCalibration) -> Drift:
    """D from counts of parts judged normal in confidence bins [edges[k], edges[k+1]).

    What a page computes from a database's aggregate instead of every score: the gap is read at
    the bin edges only, so it can read below `drift` by at most the largest bin's share.
    """
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    n = int(counts.sum())
    if n == 0:
        return Drift(0.0, 0, cal.n_images, 1.0)
    mine = np.cumsum(counts) / n  # share at or below each upper edge
    # A bin holds [lo, hi): at its upper edge compare with the reference just below the edge.
    theirs = reference_cdf(cal, np.nextafter(edges[1:], -np.inf))
    d = float(np.max(np.abs(mine - theirs)))
    return Drift(d, n, cal.n_images, critical_value(n, cal.n_images))


def _phi(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, elementwise (math.erf; no SciPy needed)."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return np.asarray(0.5 * (1 + erf(np.asarray(z, dtype=np.float64) / math.sqrt(2))))
