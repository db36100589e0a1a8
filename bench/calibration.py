"""Calibration rules side by side on trained checkpoints: thresholds, test FPR and recall.

    python -m bench.calibration --data ../shared/data/industrial \
        --ckpt runs/lite0-40s30-seed1/model.safetensors runs/lite1-40s30-seed2/model.safetensors

    python -m bench.calibration --data ../shared/data/industrial --ckpt runs/q/model.safetensors \
        --study magnetic_tile --sizes 5 8 12 20 40 --draws 2000

A class with few normal images (cookie: 31, so 5 held out) gets its threshold from a log-normal
fitted to five scores, and one unusual normal image among them moves it a long way. This
rebuilds each checkpoint's held-out split from its recorded seed, checks that the production
rule reproduces the stored thresholds (so the split and the scores are the ones training used),
then fits each rule in RULES to the same held-out scores and measures every threshold on the
test images.

Five test images cannot say how a rule behaves on five held-out scores; a class with many can.
`--study CLASS` draws many subsets of n of that class's held-out scores (without replacement),
fits every rule to each, and reports how the test false-positive rate and recall spread across
draws: how many normal images a class needs before its threshold can be trusted, and which rule
does best with few. Diagnostic only: production calibration is
`model.metrics.calibration.calibrate`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

from model.data.images import read_image
from model.data.mvtec import test_items, train_images
from model.evaluation.run import image_labels, score_items
from model.inference.inspector import Inspector
from model.metrics.calibration import calibrate, lognormal_quantile
from model.net.config import TrainConfig
from model.training.split import split_heldout

# MAD of a normal sample times this estimates its standard deviation.
MAD_TO_SD = 1.4826
# The shrunk rule's prior weight: the spread pooled over the other classes counts as this many
# of a class's own scores (degrees of freedom).
PRIOR_DOF = 20


Others = Sequence[np.ndarray]  # the model's other classes' held-out scores (pooled rules)


def rule_production(s: np.ndarray, fpr: float, others: Others = ()) -> float:
    return calibrate(s, fpr).threshold


def rule_robust(s: np.ndarray, fpr: float, others: Others = ()) -> float:
    """Median and MAD of the log-scores: one outlying normal image cannot move them far."""
    logs = np.log(np.clip(s, 1e-12, None))
    centre = float(np.median(logs))
    spread = max(MAD_TO_SD * float(np.median(np.abs(logs - centre))), 1e-6)
    return lognormal_quantile(centre, spread, fpr)


def rule_predictive(s: np.ndarray, fpr: float, others: Others = ()) -> float:
    """Student-t prediction bound on the next log-score: the plug-in fit treats the sample's
    mean and sd as exact, so on a handful of scores its expected false-positive rate is well
    above the target; this one widens the bound by exactly the estimation error of both."""
    logs = np.log(np.clip(s, 1e-12, None))
    n = logs.size
    sd = max(float(logs.std(ddof=1)), 1e-6)
    q = float(student_t.ppf(1.0 - fpr, df=n - 1))
    return math.exp(float(logs.mean()) + q * sd * math.sqrt(1.0 + 1.0 / n))


def log_stats(s: np.ndarray) -> tuple[float, float]:
    logs = np.log(np.clip(s, 1e-12, None))
    return float(logs.mean()), max(float(logs.std(ddof=1)), 1e-6)


def pooled_spread(classes: Others) -> tuple[float, int]:
    """The spread of log-scores within a class, pooled over classes (degrees of freedom
    weighted): in one unified model the classes' relative spreads are alike, and a spread
    pooled over every class is far steadier than one class's sd of five scores."""
    sums, dof = 0.0, 0
    for s in classes:
        if s.size >= 2:
            sums += (s.size - 1) * log_stats(s)[1] ** 2
            dof += s.size - 1
    return (math.sqrt(sums / dof) if dof else 1e-6), dof


def rule_shrunk(s: np.ndarray, fpr: float, others: Others = ()) -> float:
    """Log-normal with the class's spread shrunk toward the spread pooled over the model's other
    classes, as if the pool were PRIOR_DOF more of the class's own scores: five scores then
    set the class's location (a mean is steady on five) and barely its spread. The bound is
    for the next score, so the location's own error widens it by sqrt(1 + 1/n)."""
    mu, sd = log_stats(s)
    pooled, dof = pooled_spread(others)
    w = min(dof, PRIOR_DOF)
    spread = math.sqrt(((s.size - 1) * sd**2 + w * pooled**2) / (s.size - 1 + w))
    return lognormal_quantile(mu, spread * math.sqrt(1.0 + 1.0 / s.size), fpr)


def loo_residuals(s: np.ndarray) -> np.ndarray:
    """Each log-score against the mean and sd of the class's other scores: how far a new image
    of that class falls from statistics it was not part of (out of sample by construction)."""
    logs = np.log(np.clip(s, 1e-12, None))
    if logs.size < 3:
        return np.zeros(0)
    out = []
    for i in range(logs.size):
        rest = np.delete(logs, i)
        out.append((logs[i] - rest.mean()) / max(float(rest.std(ddof=1)), 1e-6))
    return np.asarray(out)


def rule_pooled_tail(s: np.ndarray, fpr: float, others: Others = ()) -> float:
    """The tail's shape pooled across classes: every class's leave-one-out standardised
    log-scores together, their (1 - fpr) quantile taken as the class's z, on its own mean and
    sd. A heavier tail than the log-normal's shows as a larger z for every class."""
    pooled = np.concatenate([loo_residuals(x) for x in (*others, s)])
    if pooled.size * fpr < 1:  # the pool cannot reach this tail: the log-normal's z
        return rule_production(s, fpr)
    mu, sd = log_stats(s)
    return math.exp(mu + float(np.quantile(pooled, 1.0 - fpr)) * sd)


def rule_max(s: np.ndarray, fpr: float, others: Others = ()) -> float:
    """The highest held-out score: the conformal bound, a false-positive rate of at most
    1 / (n + 1) on exchangeable scores, whatever their distribution; it is what n normals
    can promise, and no rule can promise less without assuming a shape."""
    return float(np.max(s))


Rule = Callable[[np.ndarray, float, Others], float]
RULES: dict[str, Rule] = {
    "production (mean, sd of log-scores)": rule_production,
    "robust (median, MAD of log-scores)": rule_robust,
    "predictive (Student t bound)": rule_predictive,
    "shrunk spread (pooled over classes)": rule_shrunk,
    "pooled tail (leave-one-out, all classes)": rule_pooled_tail,
    "max of held-out (conformal)": rule_max,
}


def heldout_scores(
    inspector: Inspector, data: Path, classes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Held-out normal scores of `classes` (default all), from the split the checkpoint was
    trained with."""
    meta = inspector.meta
    d = TrainConfig()  # checkpoints from before the split rule was recorded used its defaults
    _, held = split_heldout(
        train_images(data, list(meta.classes)),
        float(meta.training.get("heldout_fraction", d.heldout_fraction)),
        int(meta.training.get("heldout_min", d.heldout_min)),
        int(meta.training["seed"]),
    )
    out = {}
    for c in classes or meta.classes:
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
        others = [held[k] for k in held if k != c]
        for name, rule in RULES.items():
            t = rule(held[c], fpr, others)
            rows[c][name] = {
                "threshold": t,
                "fpr": float((scores[~defect] > t).mean()),
                "recall": float((scores[defect] > t).mean()),
            }
    return rows


def sample_size_study(
    held: np.ndarray,
    good: np.ndarray,
    defect: np.ndarray,
    sizes: list[int],
    draws: int,
    fpr: float,
    seed: int = 0,
    others: Others = (),
) -> dict[int, dict[str, dict[str, float]]]:
    """Per sample size n and rule: spread over `draws` random n-subsets of the held-out scores
    (the pooled rules also see `others`, the model's other classes' held-out scores, as a
    class being commissioned on a line would: the model's classes are known by then).

    Threshold is reported against the production rule on all held-out scores, so 1.00 is "as if
    the class had every image"; FPR and recall are measured on the test images `good` and
    `defect`. Percentiles across draws, because the question is how bad an unlucky line gets.
    """
    rng = np.random.default_rng(seed)
    reference = rule_production(held, fpr)
    out: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        if not 2 <= n <= held.size:
            raise ValueError(f"sample size {n} outside 2..{held.size} held-out scores")
        subsets = [rng.choice(held, size=n, replace=False) for _ in range(draws)]
        out[n] = {}
        for name, rule in RULES.items():
            t = np.array([rule(sub, fpr, others) for sub in subsets])
            f = (good[None, :] > t[:, None]).mean(axis=1)
            r = (defect[None, :] > t[:, None]).mean(axis=1)
            ratio = t / reference
            out[n][name] = {
                "threshold_p10": float(np.percentile(ratio, 10)),
                "threshold_p90": float(np.percentile(ratio, 90)),
                "fpr_mean": float(f.mean()),
                "fpr_p90": float(np.percentile(f, 90)),
                "recall_mean": float(r.mean()),
                "recall_p10": float(np.percentile(r, 10)),
            }
    return out


def study(
    inspector: Inspector,
    data: Path,
    held: dict[str, np.ndarray],
    cls: str,
    sizes: list[int],
    draws: int,
) -> dict:
    """The sample-size study of one class (sizes past its held-out count are left out), the
    pooled rules seeing the other classes' held-out scores (`held`: every class's)."""
    if cls not in inspector.meta.classes:
        raise SystemExit(f"--study {cls}: not a class of this checkpoint")
    scores, _, masks = score_items(inspector, test_items(data, [cls]))
    defect = image_labels(masks)
    fpr = inspector.meta.calibration[cls].target_fpr
    others = [held[k] for k in held if k != cls]
    fit = [n for n in sizes if n <= held[cls].size] or [held[cls].size]
    return sample_size_study(
        held[cls], scores[~defect], scores[defect], fit, draws, fpr, others=others
    )


def print_study(name: str, cls: str, rows: dict[int, dict[str, dict[str, float]]]) -> None:
    print(f"\n{name}, {cls}: threshold against all held-out scores (p10–p90), test FPR, recall")
    print("| held out | rule | threshold p10–p90 | FPR mean | FPR p90 | recall mean | recall p10 |")
    print("|---|---|---|---|---|---|---|")
    for n, by_rule in rows.items():
        for rule, m in by_rule.items():
            print(
                f"| {n} | {rule} | {m['threshold_p10']:.2f}–{m['threshold_p90']:.2f} | "
                f"{m['fpr_mean']:.3f} | {m['fpr_p90']:.3f} | {m['recall_mean']:.3f} | "
                f"{m['recall_p10']:.3f} |"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.calibration", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, nargs="+", required=True)
    p.add_argument("--json", type=Path, help="write the comparison here")
    p.add_argument("--study", metavar="CLASS", nargs="+", help="sample-size study on these classes")
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 8, 12, 20, 40])
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args(argv)
    report: dict = {}
    if args.study:
        for ckpt in args.ckpt:
            inspector = Inspector.from_checkpoint(ckpt, device="cpu")
            held = heldout_scores(inspector, args.data)  # once: every study pools them all
            for cls in args.study:
                rows = study(inspector, args.data, held, cls, args.sizes, args.draws)
                report.setdefault(str(ckpt), {})[cls] = rows
                print_study(ckpt.parent.name, cls, rows)
    else:
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
