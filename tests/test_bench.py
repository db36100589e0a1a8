import pytest
import torch

from bench.throughput import measure, untrained_inspector_parts


def test_throughput_bench_builds_the_paper_configuration_and_measures():
    """B4 taps with the CRAD decoder, random weights: what a GPU session will time."""
    device = torch.device("cpu")
    backbone, head = untrained_inspector_parts("tf_efficientnet_b4", "crad", device)
    assert backbone.info.channels == 216
    assert sum(p.numel() for p in head.parameters()) / 1e6 > 15
    assert measure(backbone, head, batch=1, device=device, seconds=0.0) > 0


def test_throughput_bench_times_the_input_size_it_is_given():
    """A 256-pixel model needs 32 x 32 features: timing it at 224 would fail, not mislead."""
    device = torch.device("cpu")
    backbone, head = untrained_inspector_parts("tf_efficientnet_lite0", "crad-s", device, 256)
    assert head.cfg.feature_size == 32
    assert measure(backbone, head, batch=2, device=device, seconds=0.0, image_size=256) > 0
    with pytest.raises(RuntimeError):
        measure(backbone, head, batch=2, device=device, seconds=0.0, image_size=224)


def test_score_ablation_spec_variant_is_the_production_score(tiny_ckpt, sample_data):
    """The diagnostic compares other scores against the spec's; its 'spec' row must be exactly
    what evaluation and the worker compute, or the comparison means nothing."""
    import numpy as np

    from bench.score_ablation import SCORES, class_table, score_variants
    from model.data.mvtec import discover_classes, test_items
    from model.evaluation.run import score_items
    from model.inference.inspector import Inspector

    inspector = Inspector.from_checkpoint(tiny_ckpt, device="cpu")
    items = test_items(sample_data, discover_classes(sample_data)[:1])
    scores, maps, masks = score_variants(inspector, items, batch_size=4)
    prod_scores, prod_maps, prod_masks = score_items(inspector, items, batch_size=4)

    np.testing.assert_allclose(scores["spec"], prod_scores, rtol=1e-5)
    np.testing.assert_allclose(maps["refined"], prod_maps, rtol=1e-3)
    np.testing.assert_array_equal(masks, prod_masks)
    # The unrefined variant reads f_n, not x_hat: a bug that fed it x_hat would go unseen.
    assert not np.allclose(scores["unrefined"], scores["spec"])
    table = class_table(items, scores, maps, masks)
    assert set(table["image_auroc"]) == set(SCORES)
    defect_types = {t.defect_type for t in items} - {"good"}
    assert set(table["image_auroc"]["spec"]) == {"all", "folder"} | defect_types
    assert 0.0 <= table["pixel_auroc"]["unrefined"] <= 1.0


def test_seed_comparison_averages_each_configuration_over_its_own_runs(tmp_path):
    """Two configurations, two and one runs: each row must be the mean and sample sd of its
    own reports only, and a run lacking a class must not drag the mean to NaN."""
    import argparse
    import json

    from bench.seeds import parse_group, table

    def report(name: str, mean_img: float, mt: float | None) -> None:
        classes = {"cookie": {"image_auroc": 1.0}}
        if mt is not None:
            classes["magnetic_tile"] = {"image_auroc": mt, "image_auroc_by_defect": {"crack": mt}}
        body = {"mean": {"image_auroc": mean_img, "pixel_auroc": 0.9, "aupro": 0.8}}
        d = tmp_path / name / "eval"
        d.mkdir(parents=True)
        (d / "report.json").write_text(json.dumps({**body, "classes": classes}))

    report("a-seed0", 0.98, 0.94)
    report("a-seed1", 0.96, 0.96)
    report("b-seed0", 0.99, None)
    a = parse_group(f"a={tmp_path}/a-seed*/eval/report.json")
    b = parse_group(f"b={tmp_path}/b-seed*/eval/report.json")
    assert len(a.reports) == 2 and len(b.reports) == 1
    rows = table([a, b]).splitlines()
    cells_a = [c.strip() for c in rows[2].split("|")[1:-1]]
    cells_b = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert cells_a[:3] == ["a", "2", "0.970 ± 0.014 (0.960–0.980)"]
    assert cells_a[5] == "0.950 ± 0.014 (0.940–0.960)"  # magnetic_tile, from a's runs only
    assert cells_b[:3] == ["b", "1", "0.990"]
    assert cells_b[5] == "–"  # no magnetic_tile in b: shown as absent, not NaN
    with pytest.raises(argparse.ArgumentTypeError, match="no report matches"):
        parse_group(f"c={tmp_path}/nothing*/report.json")
    with pytest.raises(argparse.ArgumentTypeError, match="LABEL=GLOB"):
        parse_group("just-a-glob")


def test_calibration_bench_rebuilds_the_training_split_and_compares_rules(
    tiny_ckpt, sample_data, tmp_path
):
    """The comparison is only worth reading if its held-out scores are the ones training
    calibrated on: compare() refuses otherwise, so reaching the rows proves the rebuild. Saved
    scores compare the same without the checkpoint."""
    import numpy as np

    from bench.calibration import (
        RULES,
        compare,
        heldout_scores,
        load_scored,
        main,
        rule_production,
        rule_robust,
        save_scored,
        scored_classes,
    )
    from model.inference.inspector import Inspector

    inspector = Inspector.from_checkpoint(tiny_ckpt, device="cpu")
    scored = scored_classes(inspector, sample_data)
    rows = compare(scored)
    assert set(rows) == set(inspector.meta.classes)
    one = inspector.meta.classes[0]
    assert list(heldout_scores(inspector, sample_data, [one])) == [one]  # the study's one class
    for c, r in rows.items():
        assert r["heldout"] == inspector.meta.heldout_images[c]
        assert scored.classes[c].train.size == inspector.meta.train_images[c]
        prod = r[next(iter(RULES))]
        assert (
            abs(prod["threshold"] - inspector.meta.calibration[c].threshold)
            < 1e-2 * prod["threshold"]
        )
        assert 0.0 <= prod["fpr"] <= 1.0 and 0.0 <= prod["recall"] <= 1.0
    save_scored(scored, tmp_path / "s.json")
    assert compare(load_scored(tmp_path / "s.json")) == rows
    main(["--scores", str(tmp_path / "s.json"), "--json", str(tmp_path / "r.json")])
    assert (tmp_path / "r.json").is_file()
    # One outlying normal among five moves the production fit far and the robust one little.
    clean = np.array([10.0, 10.5, 11.0, 9.5, 10.2])
    spoilt = np.r_[clean[:4], 50.0]
    assert rule_production(spoilt, 0.01) > 2 * rule_production(clean, 0.01)
    assert rule_robust(spoilt, 0.01) < 1.3 * rule_robust(clean, 0.01)


def test_sample_size_study_measures_what_few_normal_images_cost():
    """On log-normal scores the plug-in fit's false-positive rate on five scores is well above
    its 1 % target (it treats the sample's mean and sd as exact); the Student-t bound meets it in
    expectation; every rule's threshold steadies as the sample grows."""
    import numpy as np

    from bench.calibration import sample_size_study

    rng = np.random.default_rng(3)
    held = rng.lognormal(0.0, 0.3, 3000)
    good = rng.lognormal(0.0, 0.3, 20000)
    defect = rng.lognormal(1.0, 0.3, 2000)
    rows = sample_size_study(held, good, defect, [5, 40], draws=1500, fpr=0.01, seed=1)
    prod, pred = "log-normal (mean, sd of log-scores)", "predictive (Student t bound)"
    assert rows[5][prod]["fpr_mean"] > 0.02
    assert abs(rows[5][pred]["fpr_mean"] - 0.01) < 0.003
    assert rows[5][pred]["recall_mean"] < rows[5][prod]["recall_mean"]  # the price of the bound
    for rule in (prod, pred, "robust (median, MAD of log-scores)"):
        spread = {n: rows[n][rule]["threshold_p90"] - rows[n][rule]["threshold_p10"] for n in rows}
        assert spread[40] < 0.6 * spread[5]
    assert 0.85 < rows[40][prod]["threshold_p10"] < 1.0 < rows[40][prod]["threshold_p90"] < 1.15
    with pytest.raises(ValueError, match="outside"):
        sample_size_study(held[:4], good, defect, [5], draws=2, fpr=0.01)


@pytest.mark.integration
def test_review_bench_times_every_page_on_the_index_it_names(tmp_path):
    """bench.review on a few thousand rows: every page kind timed over HTTP, and the plan it
    reports is the queue reading its index (what the million-row figures rest on)."""
    import json

    from bench.review import main
    from tests.databases import SETTINGS, postgres_unavailable

    if (reason := postgres_unavailable()) is not None:
        pytest.skip(reason)
    out = tmp_path / "review.json"
    main(
        [
            "--rows",
            "3000",
            "--requests",
            "3",
            "--postgres",
            SETTINGS.postgres_url,
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["rows"] == 3000
    assert {
        "queue, first page",
        "queue, next page (deep)",
        "inspection page",
        "class page, 7 days",
        "class page, 30 days",
        "class index, 7 days",
        "models page",
    } <= set(result["pages"])
    assert all(p["p50_ms"] > 0 and p["p95_ms"] >= p["p50_ms"] for p in result["pages"].values())
    assert "ix_inspections_review_queue" in result["queue_plan"]


def test_pooled_rules_borrow_the_other_classes_spread_and_tail():
    """A class of five scores with one outlier: the plug-in fit's threshold follows the
    outlier, the spread shrunk toward the other classes' barely does; without other classes
    the shrunk rule is the plug-in fit widened for the next score. A pool whose tail is heavier
    than a log-normal's lifts the pooled-tail threshold above the plug-in one; the conformal
    rule is the maximum."""
    import numpy as np

    from bench.calibration import (
        ClassScores,
        Context,
        rule_lognormal,
        rule_max,
        rule_pooled_tail,
        rule_shrunk,
        sample_size_study,
    )
    from model.metrics.calibration import lognormal_quantile

    def pool(held: list[np.ndarray]) -> Context:
        return Context([ClassScores(h) for h in held])

    rng = np.random.default_rng(5)
    others = pool([rng.lognormal(m, 0.3, 60) for m in (1.0, 2.0, 3.0)])
    spoilt = np.exp(np.array([0.0, 0.1, -0.1, 0.05, 1.5]))
    assert rule_shrunk(spoilt, 0.01, others) < 0.6 * rule_lognormal(spoilt, 0.01)
    logs = np.log(spoilt)
    alone = lognormal_quantile(logs.mean(), logs.std(ddof=1) * np.sqrt(1 + 1 / 5), 0.01)
    assert rule_shrunk(spoilt, 0.01) == pytest.approx(alone)
    heavy = pool([np.exp(0.3 * rng.standard_t(2, 200) + m) for m in (1.0, 2.0)])
    clean = rng.lognormal(0.0, 0.3, 40)
    assert rule_pooled_tail(clean, 0.01, heavy) > 1.2 * rule_lognormal(clean, 0.01)
    assert rule_pooled_tail(clean[:5], 0.01) == rule_lognormal(clean[:5], 0.01)  # no pool
    assert rule_max(clean, 0.01) == clean.max()
    # Commissioning on five scores: borrowing the spread brings the false-positive rate
    # near its target and steadies the threshold.
    held, good = rng.lognormal(0.0, 0.3, 3000), rng.lognormal(0.0, 0.3, 20000)
    defect = rng.lognormal(1.0, 0.3, 2000)
    rows = sample_size_study(held, good, defect, [5], 1500, 0.01, seed=2, ctx=others)[5]
    prod, shrunk = (
        rows["log-normal (mean, sd of log-scores)"],
        rows["shrunk spread (pooled over classes)"],
    )
    assert prod["fpr_mean"] > 0.02 and shrunk["fpr_mean"] < 0.015
    spread = {k: r["threshold_p90"] - r["threshold_p10"] for k, r in (("p", prod), ("s", shrunk))}
    assert spread["s"] < 0.7 * spread["p"]


def test_out_of_sample_rules_read_the_class_own_spread_and_the_other_classes_margin():
    """Commissioning where later normals sit higher than the held-out capture (shift 1 sd,
    spread x1.2) on every class: the production fit on the held-out scores alone overshoots its
    1 % target several-fold on the later images, the margin rule learnt on the *other* classes
    lands near it. A class whose spread is a quarter of the others' keeps its own with the
    training-spread rule (the shrunk rule borrows the others' and overshoots the threshold,
    as it did on cookie). Five held-out scores: the training spread steadies the threshold."""
    import numpy as np

    from bench.calibration import (
        ClassScores,
        Context,
        drift_of,
        pooled_drift,
        rule_lognormal,
        rule_margin,
        rule_shrunk,
        rule_train_spread,
        sample_size_study,
    )

    rng = np.random.default_rng(11)

    def cls(mu: float, sd: float, n_held: int) -> ClassScores:
        # in-sample training scores sit lower and tighter than held-out ones (x0.8 spread)
        return ClassScores(
            held=rng.lognormal(mu, sd, n_held),
            train=rng.lognormal(mu - 0.3 * sd, 0.8 * sd, 4 * n_held),
            later=rng.lognormal(mu + sd, 1.2 * sd, 400),
        )

    others = [cls(m, 0.4, 200) for m in (1.0, 2.0)]
    shift, ratio = drift_of(others[0].held, others[0].later)
    assert shift == pytest.approx(1.0, abs=0.2) and ratio == pytest.approx(1.2, abs=0.15)
    assert pooled_drift([(o.held, o.later) for o in others], 10) == pytest.approx(
        (1.0, 1.2), abs=0.2
    )
    assert pooled_drift([(o.held, o.later[:5]) for o in others], 10) is None  # too few later
    new = cls(0.0, 0.4, 200)
    ctx = Context(others, new.train)
    fpr_of = {
        name: float((new.later > rule(new.held, 0.01, ctx)).mean())
        for name, rule in (("production", rule_lognormal), ("margin", rule_margin))
    }
    assert fpr_of["production"] > 0.05
    assert fpr_of["margin"] < 0.025
    assert rule_margin(new.held, 0.01) == rule_lognormal(new.held, 0.01)  # nothing to learn from
    # A tight class among wide ones: its own training spread, not the others'.
    tight = cls(0.0, 0.1, 40)
    tight_ctx = Context(others, tight.train)
    own = rule_train_spread(tight.held[:5], 0.01, tight_ctx)
    borrowed = rule_shrunk(tight.held[:5], 0.01, tight_ctx)
    reference = rule_lognormal(tight.held, 0.01)
    assert abs(np.log(own / reference)) < abs(np.log(borrowed / reference))
    assert rule_train_spread(tight.held[:5], 0.01) == rule_lognormal(tight.held[:5], 0.01)
    rows = sample_size_study(
        tight.held, tight.later, tight.later * 3, [5], 800, 0.01, seed=4, ctx=tight_ctx
    )[5]
    prod, trained = rows["log-normal (mean, sd of log-scores)"], rows["own training spread"]
    width = {k: r["threshold_p90"] - r["threshold_p10"] for k, r in (("p", prod), ("t", trained))}
    assert width["t"] < 0.6 * width["p"]


def test_rules_are_summarised_over_checkpoints_per_class():
    """A rule is judged over several models: the summary shows each class's false-positive
    rate and recall as the mean with the range, one row per rule."""
    from bench.calibration import RULES, across

    def rows(fpr: float, recall: float) -> dict:
        return {"mt": {name: {"fpr": fpr, "recall": recall, "threshold": 1.0} for name in RULES}}

    lines = across({"a": rows(0.01, 0.5), "b": rows(0.03, 0.7)})
    assert lines[1] == "| rule | mt FPR / recall |"
    first = lines[3]
    assert first.startswith(f"| {next(iter(RULES))} |")
    assert "0.020 (0.010–0.030) / 0.600 (0.500–0.700)" in first
    assert len(lines) == 3 + len(RULES)


def test_calibration_bench_accepts_scores_stored_under_either_production_rule():
    """Checkpoints calibrated before the exponential tail hold log-normal thresholds (the
    committed scores in bench/calibration/): compare() reproduces either, refuses any other."""
    import numpy as np

    from bench.calibration import ClassScores, Scored, compare, rule_lognormal, rule_production

    held = np.exp(0.3 * np.random.default_rng(1).laplace(size=40))  # a heavy tail: they differ
    cls = ClassScores(held, later=held * 1.01)
    defects = {"mt": held * 3}
    for rule in (rule_production, rule_lognormal):
        scored = Scored("x", {"mt": cls}, defects, {"mt": (rule(held, 0.01), 0.01)})
        assert compare(scored)["mt"]["heldout"] == 40
    assert rule_production(held, 0.01) != pytest.approx(rule_lognormal(held, 0.01))
    with pytest.raises(SystemExit, match="not the split"):
        compare(Scored("x", {"mt": cls}, defects, {"mt": (held.max() * 2, 0.01)}))
