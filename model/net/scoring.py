"""Anomaly map and image score, exactly as the spec's Scoring section defines them.

One batched function serves evaluation and the worker, so a production score equals the score
the benchmark measured. The box filters are separable (same result, a fraction of the cost).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 224  # the input size the spec's two windows are given for
MAP_SMOOTH = 21  # mean filter on the 224 x 224 map, zero padding counted in the mean
SCORE_POOL = 32  # image score: max of this average pool, no padding
# How a map becomes an image score: the spec's maximum of a 32 x 32 mean ("pool-max"), or the
# mean of the map's highest 1 % of pixels ("top-1pct", a lever: it follows the defect's own
# shape instead of a square, so a thin crack is not diluted by the normal pixels beside it).
SPEC_IMAGE_SCORE = "pool-max"
IMAGE_SCORES = (SPEC_IMAGE_SCORE, "top-1pct")
TOP_FRACTION = 0.01


def smooth_window(image_size: int) -> int:
    """The mean filter's width at this input size: 21 at 224, odd, scaled with the image.

    The windows are there to average over a fixed share of the product (about a tenth of its
    width), not over a fixed number of pixels; at another input size a 21-pixel filter would
    smooth less of the part and a 32-pixel pool would score smaller regions, changing what the
    score means along with the resolution.
    """
    return 2 * round((MAP_SMOOTH // 2) * image_size / REFERENCE_SIZE) + 1


def score_pool(image_size: int) -> int:
    """The score pool's width at this input size: 32 at 224, scaled with the image."""
    return max(1, round(SCORE_POOL * image_size / REFERENCE_SIZE))


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
    k = smooth_window(image_size)
    return box_filter(d, k, k // 2)[:, 0]


def anomaly_maps(x: torch.Tensor, x_hat: torch.Tensor, image_size: int) -> torch.Tensor:
    """The spec's anomaly map: B x S x S."""
    return smooth_map(distance_map(x, x_hat), image_size)


def top_count(image_size: int) -> int:
    """How many pixels the top-1pct score averages: 1 % of the map, at least one."""
    return max(1, round(TOP_FRACTION * image_size * image_size))


def image_scores(
    maps: torch.Tensor, image_size: int | None = None, rule: str = SPEC_IMAGE_SCORE
) -> torch.Tensor:
    """Each map's image score (B): by default the maximum of a 32 x 32 average pool (stride 1,
    no padding; scaled off 224); with rule "top-1pct" the mean of its highest 1 % of pixels.

    `image_size` (the maps' side) given as a number keeps the pool's width and the pixel count
    constants when the function is traced into an exported graph."""
    size = image_size if image_size is not None else maps.shape[-1]
    if rule == "top-1pct":
        return maps.flatten(1).topk(top_count(size), dim=1).values.mean(dim=1)
    if rule != SPEC_IMAGE_SCORE:
        raise ValueError(f"unknown image score {rule!r}; known: {IMAGE_SCORES}")
    pooled = box_filter(maps.unsqueeze(1), score_pool(size), 0)
    return pooled.flatten(1).amax(dim=1)


def score_features(
    x: torch.Tensor, x_hat: torch.Tensor, image_size: int, rule: str = SPEC_IMAGE_SCORE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The anomaly maps and image scores of features x against their reconstruction x_hat."""
    maps = anomaly_maps(x, x_hat, image_size)
    return maps, image_scores(maps, image_size, rule)
