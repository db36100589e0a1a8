import numpy as np
import pytest

from model.metrics.calibration import STEADY_COUNT, calibrate, confidence


def realised_fpr(draw, n: int, rng: np.random.Generator, methods: set[str]) -> float:
    """Mean false-positive rate on fresh scores of thresholds calibrated on n of them."""
    fprs = []
    for _ in range(200):
        cal = calibrate(draw(n), target_fpr=0.01)
        assert cal.method in methods
        fprs.append(float((draw(5000) > cal.threshold).mean()))
    return float(np.mean(fprs))


@pytest.mark.parametrize("n", [20, 60, 300])
def test_thresholds_hit_target_fpr_on_log_normal_scores(n):
    """Below STEADY_COUNT the log-normal fit, from it the higher of the exponential tail and the
    log-normal fit: on scores that are log-normal both realise the target, averaged over
    calibration sets (the higher one errs toward fewer false alarms; small-sample bias aside)."""
    rng = np.random.default_rng(n)
    both = {"exponential tail", "lognormal"}
    assert 0.004 < realised_fpr(lambda k: rng.lognormal(1.0, 0.3, k), n, rng, both) < 0.02
    if n == 20:
        few = realised_fpr(lambda k: rng.lognormal(1.0, 0.3, k), n - 1, rng, {"lognormal"})
        assert 0.007 < few < 0.02


def test_exponential_tail_holds_where_the_log_normal_tail_is_too_light():
    """Log-scores with exponential tails (Laplace), like the screening models': the log-normal
    fit realises about twice its 1 % target, the exponential tail (the higher there) the
    target. Where the tail is lighter than a log-normal's, the log-normal sets the threshold."""
    from model.metrics.calibration import exponential_tail_quantile, lognormal_quantile

    rng = np.random.default_rng(0)

    def draw(k: int) -> np.ndarray:
        return np.exp(1.0 + 0.2 * rng.laplace(size=k))

    assert 0.007 < realised_fpr(draw, 300, rng, {"exponential tail", "lognormal"}) < 0.014
    lognormal = []
    for _ in range(200):
        logs = np.log(draw(300))
        t = lognormal_quantile(logs.mean(), logs.std(ddof=1), 0.01)
        lognormal.append(float((draw(5000) > t).mean()))
    assert np.mean(lognormal) > 0.016
    # The formula: u + b log(p_u / tail) over the top fifth, b the mean excess.
    logs = np.log(draw(100))
    u = np.quantile(logs, 0.8)
    excess = logs[logs > u] - u
    expected = np.exp(u + excess.mean() * np.log(excess.size / 100 / 0.01))
    assert exponential_tail_quantile(logs, 0.01) == pytest.approx(expected)
    tied = calibrate(np.full(STEADY_COUNT, 3.0))  # nothing above the 80th percentile
    assert tied.threshold == pytest.approx(3.0, rel=1e-5)
    # A tail lighter than the log-normal's (scores bunched below a ceiling): the log-normal sets it.
    bunched = np.exp(1.0 - 0.3 * rng.exponential(size=200))
    cal = calibrate(bunched, 0.01)
    logs = np.log(bunched)
    assert cal.method == "lognormal" and cal.threshold == pytest.approx(
        np.exp(logs.mean() + 2.3263479 * logs.std(ddof=1)), rel=1e-4
    )
    assert cal.threshold > exponential_tail_quantile(logs, 0.01)


def test_empirical_threshold_with_many_scores():
    rng = np.random.default_rng(0)
    scores = rng.gamma(4.0, 1.0, 5000)  # not log-normal: the empirical quantile must be used
    cal = calibrate(scores, target_fpr=0.01)
    assert cal.method == "empirical"
    fresh = rng.gamma(4.0, 1.0, 200_000)
    assert (fresh > cal.threshold).mean() == pytest.approx(0.01, abs=0.002)


def test_statistics_and_confidence():
    scores = np.array([1.0, 1.2, 0.9, 1.1, 1.05, 0.95])
    cal = calibrate(scores, target_fpr=0.05)
    assert cal.n_images == 6 and cal.max == 1.2
    assert cal.mean == pytest.approx(scores.mean())
    assert cal.threshold > cal.max * 0.95
    assert confidence(cal.threshold, cal) == pytest.approx(0.5)
    c = confidence(np.array([0.5, cal.threshold, 5.0]), cal)
    assert c[0] < 0.5 < c[2] and np.all(np.diff(c) > 0)


def test_calibration_refuses_too_little_data():
    with pytest.raises(ValueError):
        calibrate(np.array([1.0]))
    with pytest.raises(ValueError):
        calibrate(np.array([1.0, 2.0]), target_fpr=0)


def test_report_flags_classes_calibrated_on_few_normal_images():
    from model.metrics.calibration import calibration_report

    rng = np.random.default_rng(0)
    few = calibrate(rng.lognormal(3.0, 0.2, 5))
    many = calibrate(rng.lognormal(2.3, 0.2, 114))
    lines = calibration_report({"magnetic_tile": many, "cookie": few})
    assert [line.split(":")[0] for line in lines] == ["cookie", "magnetic_tile"]
    assert "from 5 held-out normal images (lognormal)" in lines[0]
    assert f"provisional (fewer than {STEADY_COUNT})" in lines[0]
    assert "fewer than" not in lines[1] and "from 114 held-out" in lines[1]
    assert "(exponential tail)" in lines[1]
    assert not few.steady and many.steady


def test_a_threshold_is_steady_from_steady_count_normal_images_on():
    """The flag the results and the review station show: set at calibration, and derived for a
    calibration stored before it existed (its JSON without the field)."""
    from schemas import ClassCalibration
    from schemas.model_state import STEADY_COUNT

    rng = np.random.default_rng(1)
    assert calibrate(rng.lognormal(1.0, 0.2, STEADY_COUNT)).steady
    assert not calibrate(rng.lognormal(1.0, 0.2, STEADY_COUNT - 1)).steady
    for n in (STEADY_COUNT - 1, STEADY_COUNT):
        stored = calibrate(rng.lognormal(1.0, 0.2, n)).model_dump(mode="json")
        del stored["steady"]
        assert ClassCalibration.model_validate(stored).steady is (n >= STEADY_COUNT)
