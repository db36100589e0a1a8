import numpy as np
import pytest

from model.metrics.curves import aupro, auroc, roc_curve


def mann_whitney(labels, scores):
    pos, neg = scores[labels], scores[~labels]
    gt = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return gt / (len(pos) * len(neg))


def test_auroc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(800) < 0.3
    scores = np.round(rng.normal(size=800) + labels, 1)  # many ties
    assert auroc(labels, scores) == pytest.approx(mann_whitney(labels, scores))
    assert auroc(labels, -scores) == pytest.approx(1 - mann_whitney(labels, scores))
    assert np.isnan(auroc(np.ones(5, bool), np.arange(5.0)))


def test_roc_curve_ends():
    fpr, tpr = roc_curve(np.array([0, 1, 1, 0], bool), np.array([0.1, 0.9, 0.4, 0.5]))
    assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_aupro_bounds_and_region_weighting():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 64, 64), bool)
    masks[0, 5:30, 5:30] = True  # a large region
    masks[1, 40:43, 40:43] = True  # a small one
    perfect = masks.astype(float) + 0.01 * rng.random(masks.shape)
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert aupro(masks, -perfect) < 0.01
    many = np.zeros((30, 64, 64), bool)
    many[:, 20:40, 10:30] = True
    # Random maps: PRO equals FPR on average, so the normalised area is 0.3 / 2.
    assert aupro(many, rng.random(many.shape)) == pytest.approx(0.15, abs=0.02)
    # Finding only the large region gives PRO 0.5 from the start (every region weighs the
    # same), plus the random-ranking share of the small one: 0.5 + 0.5 * 0.15.
    only_large = np.zeros(masks.shape)
    only_large[0, 5:30, 5:30] = 1
    assert aupro(masks, only_large + 1e-3 * rng.random(masks.shape)) == pytest.approx(
        0.575, abs=0.03
    )
