import torch

from bench.throughput import measure, untrained_inspector_parts


def test_throughput_bench_builds_the_paper_configuration_and_measures():
    """B4 taps with the CRAD decoder, random weights: what a GPU session will time."""
    device = torch.device("cpu")
    backbone, head = untrained_inspector_parts("tf_efficientnet_b4", "crad", device)
    assert backbone.info.channels == 216
    assert sum(p.numel() for p in head.parameters()) / 1e6 > 15
    assert measure(backbone, head, batch=1, device=device, seconds=0.0) > 0


def test_score_ablation_spec_variant_is_the_production_score(tiny_ckpt, sample_data):
    """The diagnostic compares other scores against the spec's; its 'spec' row must be exactly
    what evaluation and the worker compute, or the comparison means nothing."""
    import numpy as np

    from bench.score_ablation import SCORES, class_table, score_variants
    from model.data import discover_classes, test_items
    from model.evaluate import score_items
    from model.inference import Inspector

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
