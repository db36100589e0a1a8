"""Per-channel feature standardisation: the head's working space when the lever is on.

A frozen backbone's channels differ widely in scale (on EfficientNet-Lite0 the stride-8 and
stride-16 taps' standard deviations span more than an order of magnitude), so the MSE loss, the
refinement threshold and the anomaly map are dominated by a few loud channels. Standardising
each channel with the mean and standard deviation of the *training* features (never test data)
gives every channel an equal say. The statistics travel in the checkpoint as the head's buffers,
so every runtime standardises with the same numbers.

Pure tensor functions; `model.net.grad.GRADHead` holds the statistics.
"""

from __future__ import annotations

import torch

# A channel whose spread is below this share of the median channel's is treated as if it had
# that spread: a channel (nearly) constant on the training images is not amplified without
# bound when it moves on a test image; its deviations still count, at most 100x louder than
# the typical channel's.
STD_FLOOR = 1e-2
CHUNK = 64  # images per pass: the sums run in float64 without a float64 copy of the whole set


@torch.no_grad()
def channel_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation per channel of N x C x H x W features, over
    images and positions, as float32 tensors of length C; the spread floored (`STD_FLOOR`)."""
    if features.ndim != 4 or features.shape[0] == 0:
        raise ValueError(f"expected N x C x H x W features with N > 0, got {tuple(features.shape)}")
    c = features.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(features), CHUNK):
        x = features[i : i + CHUNK].to(torch.float64)
        total += x.sum(dim=(0, 2, 3)).cpu()
        squares += x.pow(2).sum(dim=(0, 2, 3)).cpu()
    n = features.shape[0] * features.shape[2] * features.shape[3]
    mean = total / n
    std = (squares / n - mean.pow(2)).clamp_min(0.0).sqrt()
    std = std.clamp_min(STD_FLOOR * float(std.median()))
    return mean.float(), std.float()


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel of B x C x H x W features."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
