"""The one seeded held-out split of a class's normal images.

Training from a folder and retraining from the record both hold a share of each class's normal
images out: the held-out loss selects the epoch, the held-out scores calibrate the threshold,
and the gate compares models on them. The rule is the same for both, so it is written once:
at least `minimum` held out (calibration needs a few even for small classes), at most half (the
head needs images to learn from), the draw seeded by (seed, class) so that a rerun, or a run
with other classes, holds out the same images.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class TooFewNormals(ValueError):
    """A class has too few normal images to hold any out; the message names the class."""


def heldout_size(n: int, fraction: float, minimum: int, product_class: str) -> int:
    """How many of a class's `n` normal images are held out."""
    if minimum < 2:  # a setting error, not a data one: say so rather than blame a class
        raise ValueError(f"held-out minimum {minimum}: calibration needs at least 2 images")
    k = min(max(minimum, round(fraction * n)), n // 2)
    if k < 2:
        raise TooFewNormals(
            f"class {product_class!r} has {n} usable normal images; at least 4 needed"
        )
    return k


def split_tiers(
    tiers: Sequence[Sequence[T]], fraction: float, minimum: int, seed: int, product_class: str
) -> tuple[list[T], list[T]]:
    """Seeded (train, held out) split of one class's images given in tiers: each tier is
    shuffled, the held-out images are drawn from the first tiers first."""
    rng = random.Random(f"{seed}:{product_class}")
    pool: list[T] = []
    for tier in tiers:
        shuffled = list(tier)
        rng.shuffle(shuffled)
        pool += shuffled
    k = heldout_size(len(pool), fraction, minimum, product_class)
    return pool[k:], pool[:k]


def split_heldout(
    images: dict[str, list[Path]], fraction: float, minimum: int, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Seeded per-class split of image files into (train, held out), each sorted."""
    train, held = {}, {}
    for c, paths in images.items():
        t, h = split_tiers([paths], fraction, minimum, seed, c)
        train[c], held[c] = sorted(t), sorted(h)
    return train, held
