import pytest
import torch

from model.net.refinement import derive_refine_threshold, reconstruction_loss, refine


def test_refine_matches_the_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 3) * 3
    f_n = x + torch.randn_like(x) * torch.linspace(0.1, 6, 9).view(1, 1, 3, 3)
    threshold = 4.0
    out = refine(f_n, x, threshold)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                xv, fv = x[b, :, i, j], f_n[b, :, i, j]
                mse = ((fv - xv) ** 2).mean()
                m = 1.0 if mse <= threshold else 0.0
                cos = torch.dot(fv, xv) / (fv.norm() * xv.norm())
                s = 0.3 * m + 0.7 * cos
                torch.testing.assert_close(out[b, :, i, j], s * xv + (1 - s) * fv)


def test_refine_mask_is_hard_both_ways():
    x = torch.ones(1, 4, 1, 2)
    f_n = torch.stack([torch.full((4,), 2.0), torch.full((4,), 0.5)], dim=-1).view(1, 4, 1, 2)
    # Position 0: mse 1; position 1: mse 0.25. Threshold 0.5 masks only position 1.
    out = refine(f_n, x, 0.5)
    s0, s1 = 0.7 * 1.0, 0.3 + 0.7 * 1.0  # cosines are 1 (parallel vectors)
    torch.testing.assert_close(out[0, :, 0, 0], s0 * x[0, :, 0, 0] + (1 - s0) * f_n[0, :, 0, 0])
    torch.testing.assert_close(out[0, :, 0, 1], s1 * x[0, :, 0, 1] + (1 - s1) * f_n[0, :, 0, 1])


def test_refine_gradient_flows_through_cosine_not_mask():
    torch.manual_seed(1)
    x = torch.randn(1, 8, 2, 2)
    f_n = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    refine(f_n, x, 100.0).sum().backward()
    assert f_n.grad is not None and torch.isfinite(f_n.grad).all()
    assert f_n.grad.abs().sum() > 0


def test_loss_is_mean_squared_error():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(reconstruction_loss(a, b), ((a - b) ** 2).mean())


def test_threshold_follows_the_feature_scale():
    torch.manual_seed(2)
    feats = torch.randn(4, 16, 7, 7).abs() * 2
    base = derive_refine_threshold(feats, 0.5)
    assert base == pytest.approx(0.5 * float((feats.double() ** 2).mean()))
    # mse scales with the square of the features, so must the threshold.
    assert derive_refine_threshold(feats * 3, 0.5) == pytest.approx(9 * base, rel=1e-6)
    with pytest.raises(ValueError):
        derive_refine_threshold(torch.empty(0, 16, 7, 7))


def test_threshold_rule_gives_about_ten_on_lite0(lite0, industrial):
    """On real images the rule lands near the threshold measured to work for Lite0 (10)."""
    from model.data.feature_cache import cached_features
    from model.data.mvtec import train_images

    paths = [p for ps in train_images(industrial).values() for p in ps[:8]]
    feats = cached_features(lite0, paths, 224, torch.device("cpu"), cache_dir=None)
    assert 6.0 < derive_refine_threshold(feats) < 15.0
