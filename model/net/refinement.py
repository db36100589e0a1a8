"""Feature refinement, the training loss, and how the refinement threshold is derived.

Pure tensor functions: the head calls them, tests check them against the spec's formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_mse(f_n: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over channels of (f_n - x)^2, per position: B x 1 x H x W."""
    return (f_n - x).pow(2).mean(dim=1, keepdim=True)


def refine(
    f_n: torch.Tensor,
    x: torch.Tensor,
    threshold: float,
    w_mask: float = 0.3,
    w_cos: float = 0.7,
) -> torch.Tensor:
    """Pull the reconstruction back to the input where the input already looks normal.

    S = w_mask * [mse <= threshold] + w_cos * cos(f_n, x); x_hat = S * x + (1 - S) * f_n.
    The mask is hard and carries no gradient; the cosine does.
    """
    with torch.no_grad():
        mask = (position_mse(f_n, x) <= threshold).to(x.dtype)
    cos = F.cosine_similarity(f_n, x, dim=1, eps=1e-8).unsqueeze(1)
    s = w_mask * mask + w_cos * cos
    return s * x + (1.0 - s) * f_n


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The only training loss: mean squared error between refined output and input."""
    return F.mse_loss(x_hat, x)


def feature_energy(features: torch.Tensor) -> float:
    """Mean per-position ||x||^2 / C over a set of feature maps (N x C x H x W)."""
    return float(features.double().pow(2).mean())


def derive_refine_threshold(features: torch.Tensor, ratio: float = 0.5) -> float:
    """Refinement threshold for the backbone in use, from normal training features alone.

    The spec's 10 is tied to EfficientNet-B4's feature scale. A per-position mse between a
    reconstruction and its input scales with the square of the features, so the threshold is
    set as a fixed fraction of the mean per-position energy ||x||^2 / C of the normal
    training features. The ratio 0.5 reproduces the threshold measured to work on
    EfficientNet-Lite0 (energy about 20, threshold 10) and carries over to any backbone, or to
    the same backbone at another input scale, without looking at test data.
    """
    if features.numel() == 0:
        raise ValueError("cannot derive a refinement threshold from no features")
    return ratio * feature_energy(features)


def mse_percentile(f_n: torch.Tensor, x: torch.Tensor, q: float = 99.0) -> float:
    """Percentile of per-position mse: the alternative rule (set after training)."""
    return float(torch.quantile(position_mse(f_n, x).flatten().double(), q / 100.0))
