"""The promotion gate's decisions on scores: not worse beyond a tolerance passes, worse is
refused with the reason, a class the active model serves must stay calibrated."""

from __future__ import annotations

import numpy as np
import pytest

from model.lifecycle.gate import ClassScores, Tolerances, cross_fitted_fpr, decide, model_metrics

RNG = np.random.default_rng(0)
NORMALS = np.exp(RNG.normal(0.0, 0.1, 40))  # around 1.0
ANOMALIES = np.exp(RNG.normal(1.0, 0.2, 12))  # around 2.7: well separated


def scores(normals=NORMALS, anomalies=ANOMALIES, served=None) -> ClassScores:
    return ClassScores(np.asarray(normals), np.asarray(anomalies), served)


def test_metrics_of_a_good_model():
    m = model_metrics(scores(), 0.01)
    assert m["auroc"] == 1.0 and m["recall"] == 1.0
    assert m["fpr"] <= 0.05 and m["n_normals"] == 40 and m["n_anomalies"] == 12
    no_anomalies = model_metrics(scores(anomalies=[]), 0.01)
    assert no_anomalies["recall"] is None and no_anomalies["auroc"] is None


def test_cross_fitted_fpr_is_out_of_sample():
    # A heavy tail the other half never saw is counted as false positives.
    normals = np.r_[np.ones(10), 50.0, np.ones(9), 50.0]
    assert cross_fitted_fpr(normals, 0.01) > 0
    assert cross_fitted_fpr(np.r_[1.0, 1.1, 0.9], 0.01) == 0.0  # few: in sample


def test_an_equal_or_better_candidate_passes():
    d = decide({"hazelnut": scores()}, {"hazelnut": scores()}, target_fpr=0.01)
    assert d["pass"] and d["classes"]["hazelnut"]["verdict"] == "ok"
    assert "not worse" in d["reasons"][0]
    overlapping = scores(anomalies=np.exp(RNG.normal(0.1, 0.1, 12)))
    better = decide({"hazelnut": scores()}, {"hazelnut": overlapping})
    assert better["pass"]


def test_a_worse_candidate_is_refused_and_the_report_says_why():
    blind = scores(anomalies=NORMALS[:12] * 0.99)  # cannot tell anomalies from normals
    d = decide({"hazelnut": blind}, {"hazelnut": scores()}, target_fpr=0.01)
    assert not d["pass"]
    entry = d["classes"]["hazelnut"]
    assert entry["verdict"] == "worse"
    text = " ".join(d["reasons"])
    assert "hazelnut" in text and "recall" in text and "AUROC" in text
    assert entry["candidate"]["auroc"] < 0.6 and entry["active"]["auroc"] == 1.0


def test_false_positives_beyond_the_tolerance_are_refused():
    # Normals with a tail the other half never saw: false positives out of sample.
    tail = np.r_[NORMALS[:37], 50.0, 50.0, 50.0]
    d = decide({"cookie": scores(tail, [])}, {"cookie": scores(NORMALS, [])})
    assert not d["pass"] and "false-positive rate" in d["reasons"][0]


@pytest.mark.parametrize(("tolerance", "passes"), [(0.0, False), (0.5, True)])
def test_tolerances_are_settings(tolerance, passes):
    slightly = scores(anomalies=np.r_[ANOMALIES[:10], NORMALS[:2]])  # misses 2 of 12
    tol = Tolerances(fpr=0.02, recall=tolerance, auroc=0.5)
    d = decide({"c": slightly}, {"c": scores()}, tolerances=tol)
    assert d["pass"] is passes
    assert d["tolerances"]["recall"] == tolerance


def test_a_class_the_active_model_serves_must_stay_calibrated():
    d = decide({"hazelnut": scores()}, {"hazelnut": scores()}, required={"hazelnut", "cookie"})
    assert not d["pass"]
    assert d["classes"]["cookie"]["verdict"] == "missing"
    assert any(r.startswith("cookie:") for r in d["reasons"])


def test_a_new_class_and_no_active_model():
    d = decide({"transistor": scores()}, None)
    assert d["pass"] and d["reasons"] == ["no active model to compare with"]
    assert "active" not in d["classes"]["transistor"]


def test_the_active_model_as_served_is_reported():
    d = decide({"c": scores()}, {"c": scores(served=1.5)})
    served = d["classes"]["c"]["active_as_served"]
    assert served["threshold"] == 1.5 and served["recall"] == 1.0


def test_a_difference_of_one_image_is_noise_unless_told_otherwise():
    normals = NORMALS[:12]
    one_more = np.r_[normals[:11], 50.0]  # one false positive more, out of 12
    d = decide({"c": scores(one_more, [])}, {"c": scores(normals, [])})
    assert d["pass"] and d["tolerances"]["noise_images"] == 1
    strict = decide(
        {"c": scores(one_more, [])},
        {"c": scores(normals, [])},
        tolerances=Tolerances(noise_images=0),
    )
    assert not strict["pass"] and "tolerance 0.020" in strict["reasons"][0]
    missed_one = scores(anomalies=np.r_[ANOMALIES[:11], 0.5])  # misses 1 of 12: noise
    assert decide({"c": missed_one}, {"c": scores()}, tolerances=Tolerances(auroc=0.5))["pass"]
