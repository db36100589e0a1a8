"""Anomaly map and image score, exactly as the spec's Scoring section defines them.

One batched function serves evaluation and the worker, so a production score equals the score
the benchmark measured. The box filters are separable (same result, a fraction of the cost).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAP_SMOOTH = 21  # mean filter on the 224 x 224 map, zero padding counted in the mean
SCORE_POOL = 32  # image score: max of this average pool, no padding


def box_filter(maps: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """k x k mean filter (stride 1, zero padding `pad` counted) as two 1-D passes."""
    y = F.avg_pool2d(maps, (k, 1), stride=1, padding=(pad, 0), count_include_pad=True)
    return F.avg_pool2d(y, (1, k), stride=1, padding=(0, pad), count_include_pad=True)


def distance_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-position L2 distance over channels at feature resolution: B x 1 x h x w."""
    return (x_hat.float() - x.float()).pow(2).sum(dim=1, keepdim=True).sqrt()


def smooth_map(d: torch.Tensor, image_size: int) -> torch.Tensor:
    """A distance map upsampled bilinearly (align_corners=True) and smoothed: B x S x S."""
    d = F.interpolate(d, size=(image_size, image_size), mode="bilinear", align_corners=True)
    return box_filter(d, MAP_SMOOTH, MAP_SMOOTH // 2)[:, 0]


def anomaly_maps(x: torch.Tensor, x_hat: torch.Tensor, image_size: int) -> torch.Tensor:
    """The spec's anomaly map: B x S x S."""
    return smooth_map(distance_map(x, x_hat), image_size)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Maximum of a 32 x 32 average pool (stride 1, no padding) of each map: B."""
    pooled = box_filter(maps.unsqueeze(1), SCORE_POOL, 0)
    return pooled.flatten(1).amax(dim=1)


def score_features(
    x: torch.Tensor, x_hat: torch.Tensor, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    maps = anomaly_maps(x, x_hat, image_size)
    return maps, image_scores(maps)
