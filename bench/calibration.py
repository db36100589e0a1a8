"""Calibration rules side by side on trained checkpoints: thresholds, test FPR and recall.

    python -m bench.calibration --data ../shared/data/industrial \
        --ckpt runs/lite0-40s30-seed1/model.safetensors runs/lite1-40s30-seed2/model.safetensors

A class with few normal images (cookie: 31, so 5 held out) gets its threshold from a log-normal
fitted to five scores, and one unusual normal image among them moves it a long way. This
rebuilds each checkpoint's held-out split from its recorded seed, checks that the production
rule reproduces the stored thresholds (so the split and the scores are the ones training used),
then fits each rule in RULES to the same held-out scores and measures every threshold on the
test images. Diagnostic only: production calibration is `model.calibration.calibrate`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.calibration import calibrate, lognormal_quantile
from model.config import TrainConfig
from model.data import split_heldout, test_items, train_images
from model.evaluate import image_labels, score_items
from model.images import read_image
from model.inference import Inspector

# MAD of a normal sample times this estimates its standard deviation.
MAD_TO_SD = 1.4826


def rule_production(s: np.ndarray, fpr: float) -> float:
    return calibrate(s, fpr).threshold


def rule_robust(s: np.ndarray, fpr: float) -> float:
    """Median and MAD of the log-scores: one outlying normal image cannot move them far."""
    logs = np.log(np.clip(s, 1e-12, None))
    centre = float(np.median(logs))
    spread = max(MAD_TO_SD * float(np.median(np.abs(logs - centre))), 1e-6)
    return lognormal_quantile(centre, spread, fpr)


RULES: dict[str, Callable[[np.ndarray, float], float]] = {
    "production (mean, sd of log-scores)": rule_production,
    "robust (median, MAD of log-scores)": rule_robust,
}


def heldout_scores(inspector: Inspector, data: Path) -> dict[str, np.ndarray]:
    """Each class's held-out normal scores, from the split the checkpoint was trained with."""
    meta = inspector.meta
    d = TrainConfig()
    _, held = split_heldout(
        train_images(data, list(meta.classes)),
        d.heldout_fraction,
        d.heldout_min,
        int(meta.training["seed"]),
    )
    out = {}
    for c in meta.classes:
        if len(held[c]) != meta.heldout_images[c]:
            raise SystemExit(
                f"{c}: {len(held[c])} held-out images, the checkpoint says "
                f"{meta.heldout_images[c]}: trained with another split or data"
            )
        chunks = [held[c][i : i + 32] for i in range(0, len(held[c]), 32)]
        out[c] = np.concatenate(
            [inspector.inspect([read_image(p) for p in ch], [c] * len(ch)).scores for ch in chunks]
        )
    return out


def compare(inspector: Inspector, data: Path) -> dict:
    held = heldout_scores(inspector, data)
    rows: dict = {}
    for c in inspector.meta.classes:
        stored = inspector.meta.calibration[c]
        fpr = stored.target_fpr
        reproduced = rule_production(held[c], fpr)
        if not math.isclose(reproduced, stored.threshold, rel_tol=1e-3):
            raise SystemExit(
                f"{c}: held-out scores give threshold {reproduced:.3f}, the checkpoint holds "
                f"{stored.threshold:.3f}: not the split or scoring training used"
            )
        items = test_items(data, [c])
        scores, _, masks = score_items(inspector, items)
        defect = image_labels(masks)
        rows[c] = {"heldout": len(held[c]), "heldout_max": float(held[c].max())}
        for name, rule in RULES.items():
            t = rule(held[c], fpr)
            rows[c][name] = {
                "threshold": t,
                "fpr": float((scores[~defect] > t).mean()),
                "recall": float((scores[defect] > t).mean()),
            }
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.calibration", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, nargs="+", required=True)
    p.add_argument("--json", type=Path, help="write the comparison here")
    args = p.parse_args(argv)
    report = {}
    print("| checkpoint | class | held out | rule | threshold | test FPR | test recall |")
    print("|---|---|---|---|---|---|---|")
    for ckpt in args.ckpt:
        inspector = Inspector.from_checkpoint(ckpt, device="cpu")
        rows = report[str(ckpt)] = compare(inspector, args.data)
        for c, r in rows.items():
            for name in RULES:
                m = r[name]
                print(
                    f"| {ckpt.parent.name} | {c} | {r['heldout']} | {name} | "
                    f"{m['threshold']:.2f} | {m['fpr']:.3f} | {m['recall']:.3f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
