"""A small procedural inspection data set in MVTec layout, made on the spot.

The real images the project is benchmarked on may not be redistributed, so the embedded demo
and the tests that need no real data use these: two product classes (a woven texture and a
machined ring) whose normal variation is random but bounded, and defects (scratches, holes,
spots, notches) drawn with exact masks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SIZE = 256
CLASSES = ("fabric", "ring")


def _fabric(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    period = rng.uniform(9.0, 11.0)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    weave = np.sin(2 * np.pi * xx / period + phase[0]) * np.sin(2 * np.pi * yy / period + phase[1])
    base = 0.55 + 0.18 * weave + rng.normal(0, 0.03, (SIZE, SIZE))
    tint = np.array([0.75, 0.62, 0.45]) * rng.uniform(0.95, 1.05)
    return (np.clip(base[..., None] * tint, 0, 1) * 255).astype(np.uint8)


def _ring(rng: np.random.Generator) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 40, np.uint8) + rng.integers(
        0, 8, (SIZE, SIZE, 3), dtype=np.uint8
    )
    c = (SIZE // 2 + int(rng.integers(-6, 7)), SIZE // 2 + int(rng.integers(-6, 7)))
    cv2.circle(img, c, 90, (175, 178, 182), -1, cv2.LINE_AA)
    cv2.circle(img, c, 45, (40, 40, 40), -1, cv2.LINE_AA)
    cv2.circle(img, c, 68, (150, 152, 158), 2, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _defect(img: np.ndarray, kind: str, cls: str, rng: np.random.Generator) -> np.ndarray:
    """Draw a defect of `kind` into img (in place) and return its mask."""
    mask = np.zeros(img.shape[:2], np.uint8)
    lo, hi = (40, 216) if cls == "fabric" else (70, 186)
    p = tuple(int(v) for v in rng.integers(lo, hi, 2))
    if kind == "scratch":
        q = (p[0] + int(rng.integers(-60, 60)), p[1] + int(rng.integers(-60, 60)))
        colour = (25, 25, 25) if cls == "fabric" else (235, 235, 235)
        cv2.line(img, p, q, colour, 3, cv2.LINE_AA)
        cv2.line(mask, p, q, 255, 5)
    elif kind == "hole":
        r = int(rng.integers(8, 16))
        cv2.circle(img, p, r, (15, 12, 10), -1, cv2.LINE_AA)
        cv2.circle(mask, p, r + 1, 255, -1)
    elif kind == "spot":
        axes = (int(rng.integers(8, 18)), int(rng.integers(5, 12)))
        cv2.ellipse(img, p, axes, float(rng.uniform(0, 180)), 0, 360, (150, 60, 40), -1)
        cv2.ellipse(mask, p, axes, 0, 0, 360, 255, -1)
    return mask


DEFECTS = {"fabric": ("scratch", "hole", "spot"), "ring": ("scratch", "spot", "hole")}
DRAW = {"fabric": _fabric, "ring": _ring}


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), img)


def make_sample(
    root: Path, n_train: int = 40, n_test_good: int = 8, n_test_defect: int = 8, seed: int = 0
) -> Path:
    """Write the sample set under `root` (idempotent for the same arguments) and return it."""
    root = Path(root)
    for ci, cls in enumerate(CLASSES):
        rng = np.random.default_rng([seed, ci])
        draw = DRAW[cls]
        for i in range(n_train):
            write_png(root / cls / "train" / "good" / f"{i:03d}.png", draw(rng))
        for i in range(n_test_good):
            write_png(root / cls / "test" / "good" / f"{i:03d}.png", draw(rng))
        for i in range(n_test_defect):
            kind = DEFECTS[cls][i % len(DEFECTS[cls])]
            img = draw(rng)
            mask = _defect(img, kind, cls, rng)
            write_png(root / cls / "test" / kind / f"{i:03d}.png", img)
            write_png(root / cls / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m model.data.sample", description=__doc__.splitlines()[0]
    )
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(make_sample(args.out, n_train=args.train, seed=args.seed))


if __name__ == "__main__":
    main()
