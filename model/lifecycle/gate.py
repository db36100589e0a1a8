"""The promotion gate: is a retrained candidate at least as good as the model it would replace?

Pure comparison logic on scores; the retrain job computes the scores. Per class, both models
score the same held-out normal images of the window and the same operator-confirmed anomalies,
and each model's threshold is recalibrated on those normals at the target false-positive rate
(the threshold the candidate will ship with, and the one the active model would get), so the
two are compared on equal terms:

- false-positive rate at the calibrated threshold, measured out of sample: each normal is
  checked against a threshold calibrated on the others (10-fold cross-fitting; leave-one-out
  on fewer images);
- recall on the confirmed anomalies at the calibrated threshold, when there are any;
- image AUROC (normals against confirmed anomalies), when both kinds exist.

The candidate passes a class when none of these is worse than the active model's by more than
its tolerance or than one image can account for (`noise_images`), whichever is larger: on 12
held-out normals one false positive more is a rate of 0.083, which says nothing about a model,
and one anomaly of 8 ranked below every normal costs 0.125 of AUROC. It is promoted when it
passes every class, and every class the active model serves calibrated is calibrated by the
candidate too. The active model as it serves now (its current threshold) is reported beside,
for information: it is how the line fares today.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from model.metrics.calibration import calibrate
from model.metrics.curves import auroc
from schemas.model_state import DEFAULT_TARGET_FPR


@dataclass(frozen=True)
class Tolerances:
    fpr: float = 0.02
    recall: float = 0.05
    auroc: float = 0.02
    # A difference this many images can account for is noise, never held against the
    # candidate: each tolerance is at least what `noise_images` images can change the figure
    # by (a rate on n images: 1/n each; AUROC: 1/min(normals, anomalies) each, at most).
    noise_images: int = 1

    def at_least_noise(self, tolerance: float, n: int) -> float:
        return max(tolerance, self.noise_images / n) if n else tolerance


@dataclass(frozen=True)
class ClassScores:
    """One model's image scores on a class's held-out normals and confirmed anomalies (the same
    images, in the same order, for both models)."""

    normals: np.ndarray
    anomalies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    served_threshold: float | None = None  # the threshold this model serves the class with now


def _f(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def cross_fitted_fpr(normals: np.ndarray, target_fpr: float, folds: int = 10) -> float:
    """Share of normals above a threshold calibrated without them: `folds`-fold cross-fitting
    (leave-one-out below `folds` images; folds by position, so both models get the same). With
    fewer than 4 normals, the in-sample rate."""
    s = np.asarray(normals, dtype=np.float64)
    if s.size < 4:
        return float((s > calibrate(s, target_fpr).threshold).mean())
    k = min(folds, s.size)
    fold = np.arange(s.size) % k
    over = sum(
        int((s[fold == f] > calibrate(s[fold != f], target_fpr).threshold).sum()) for f in range(k)
    )
    return over / s.size


def model_metrics(scores: ClassScores, target_fpr: float) -> dict[str, float | int | None]:
    """The figures the gate compares, for one model on one class."""
    normals = np.asarray(scores.normals, dtype=np.float64)
    anomalies = np.asarray(scores.anomalies, dtype=np.float64)
    if normals.size < 2:
        raise ValueError("the gate needs at least two held-out normal images per class")
    threshold = calibrate(normals, target_fpr).threshold
    out: dict[str, float | int | None] = {
        "n_normals": int(normals.size),
        "n_anomalies": int(anomalies.size),
        "threshold": threshold,
        "fpr": cross_fitted_fpr(normals, target_fpr),
        "recall": float((anomalies > threshold).mean()) if anomalies.size else None,
        "auroc": None,
        "normal_median": float(np.median(normals)),
    }
    if anomalies.size:
        labels = np.r_[np.zeros(normals.size, bool), np.ones(anomalies.size, bool)]
        out["auroc"] = _f(auroc(labels, np.r_[normals, anomalies]))
    return out


def served_metrics(scores: ClassScores) -> dict[str, float | None] | None:
    """The model at the threshold it serves with now (information, not compared)."""
    t = scores.served_threshold
    if t is None:
        return None
    a = np.asarray(scores.anomalies, dtype=np.float64)
    return {
        "threshold": float(t),
        "fpr": float((np.asarray(scores.normals) > t).mean()),
        "recall": float((a > t).mean()) if a.size else None,
    }


def compare_class(
    cand: Mapping[str, float | int | None],
    act: Mapping[str, float | int | None],
    tol: Tolerances,
) -> list[str]:
    """Why the candidate is worse than the active model on this class ([] when it is not)."""
    why = []
    cf, af = cand["fpr"], act["fpr"]
    assert cf is not None and af is not None
    n_normals, n_anomalies = int(cand["n_normals"] or 0), int(cand["n_anomalies"] or 0)
    t = tol.at_least_noise(tol.fpr, n_normals)
    if cf > af + t + 1e-12:
        why.append(
            f"false-positive rate {cf:.3f} against {af:.3f} for the active model "
            f"(tolerance {t:.3f})"
        )
    cr, ar = cand.get("recall"), act.get("recall")
    t = tol.at_least_noise(tol.recall, n_anomalies)
    if cr is not None and ar is not None and cr < ar - t - 1e-12:
        why.append(
            f"recall on confirmed anomalies {cr:.3f} against {ar:.3f} for the active model "
            f"(tolerance {t:.3f})"
        )
    ca, aa = cand.get("auroc"), act.get("auroc")
    t = tol.at_least_noise(tol.auroc, min(n_normals, n_anomalies))
    if ca is not None and aa is not None and ca < aa - t - 1e-12:
        why.append(
            f"image AUROC {ca:.3f} against {aa:.3f} for the active model (tolerance {t:.3f})"
        )
    return why


def decide(
    candidate: Mapping[str, ClassScores],
    active: Mapping[str, ClassScores] | None,
    *,
    required: set[str] | frozenset[str] = frozenset(),
    target_fpr: float = DEFAULT_TARGET_FPR,
    tolerances: Tolerances | None = None,
) -> dict:
    """The gate's verdict: `{"pass": bool, "reasons": [...], "classes": {...}}`.

    `candidate`: per class the candidate's scores; `active`: the active model's on the same
    images (None: there is no active model, nothing to compare with). `required`: classes the
    active model serves calibrated, which the candidate must calibrate too.
    """
    tol = tolerances or Tolerances()
    classes: dict[str, dict] = {}
    reasons: list[str] = []
    for c in sorted(candidate):
        entry: dict = {"candidate": model_metrics(candidate[c], target_fpr)}
        if active is not None and c in active:
            entry["active"] = model_metrics(active[c], target_fpr)
            entry["active_as_served"] = served_metrics(active[c])
            why = compare_class(entry["candidate"], entry["active"], tol)
        else:
            why = []
        entry["verdict"] = "worse" if why else "ok"
        entry["reasons"] = why
        reasons += [f"{c}: {w}" for w in why]
        classes[c] = entry
    for c in sorted(set(required) - set(candidate)):
        why = [
            "served calibrated by the active model, but the candidate has no calibration for it "
            "(too few usable normal images of it in the window)"
        ]
        classes[c] = {"verdict": "missing", "reasons": why}
        reasons += [f"{c}: {w}" for w in why]
    passed = not reasons
    if passed:
        if active is None:
            summary = "no active model to compare with"
        else:
            summary = (
                "not worse than the active model beyond the tolerances on any class "
                f"({', '.join(sorted(candidate))})"
            )
        reasons = [summary]
    return {
        "pass": passed,
        "reasons": reasons,
        "tolerances": {
            "fpr": tol.fpr,
            "recall": tol.recall,
            "auroc": tol.auroc,
            "noise_images": tol.noise_images,
        },
        "target_fpr": target_fpr,
        "classes": classes,
    }
