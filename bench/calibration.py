"""Calibration rules side by side on trained checkpoints: thresholds, test FPR and recall.

    python -m bench.calibration --data ../shared/data/industrial \
        --ckpt runs/lite0-40s30-seed1/model.safetensors runs/lite1-40s30-seed2/model.safetensors

    python -m bench.calibration --data ../shared/data/industrial --ckpt runs/q/model.safetensors \
        --study magnetic_tile --sizes 5 8 12 20 40 --draws 2000 --save-scores bench/calibration

    python -m bench.calibration --scores bench/calibration/*.json    # again, without scoring

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

Out of sample. The held-out images come from the same capture as the training images; a line's
later images do not, so a rule judged on held-out scores alone is optimistic. Every class's
test normals ("good") stand in for the later images here, and a rule may lean on the *other*
classes' held-out, training and later scores, never on the class's own later ones: each class
is commissioned as if it were new to a model that has seen the others (leave one class out).
Each run first prints, per class, how far the held-out scores sit from the training images'
(scored in sample) and the later normals from the held-out, in units of the held-out spread,
and ends with every rule over all the checkpoints given. `--save-scores` keeps each
checkpoint's scores as JSON (committed under `bench/calibration/`: checkpoints do not outlive
a session here, and a new rule is then judged on every model already scored).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
from scipy.stats import t as student_t

from model.data.images import read_image
from model.data.mvtec import test_items, train_images
from model.evaluation.run import image_labels, score_items
from model.inference.inspector import Inspector
from model.metrics.calibration import (
    STEADY_COUNT,
    calibrate,
    exponential_tail_quantile,
    lognormal_quantile,
)
from model.net.config import TrainConfig
from model.training.split import split_heldout

# MAD of a normal sample times this estimates its standard deviation.
MAD_TO_SD = 1.4826
# The shrunk rule's prior weight: the spread pooled over the other classes counts as this many
# of a class's own scores (degrees of freedom).
PRIOR_DOF = 20
# A class's later normals inform the pooled margin only when there are at least this many.
MIN_LATER = 10


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True)
class ClassScores:
    """One class's normal scores: held out (calibration), its training images scored in sample
    by the model they trained, and later normal images (the test set's good ones)."""

    held: np.ndarray
    train: np.ndarray = field(default_factory=_empty)
    later: np.ndarray = field(default_factory=_empty)


@dataclass(frozen=True)
class Context:
    """What a class being commissioned can lean on besides its own held-out scores: its own
    training images' scores, and the model's other classes (never its own later images)."""

    others: Sequence[ClassScores] = ()
    own_train: np.ndarray = field(default_factory=_empty)

    @property
    def others_held(self) -> list[np.ndarray]:
        return [o.held for o in self.others]


NONE = Context()


@dataclass(frozen=True)
class Scored:
    """One checkpoint's scores, everything the rules are judged on: per class its normal
    scores, its test defects' scores and the stored calibration (threshold, target rate).
    Saved as JSON (`save_scored`), so rules can be compared again without the checkpoint."""

    name: str
    classes: dict[str, ClassScores]
    defects: dict[str, np.ndarray]
    stored: dict[str, tuple[float, float]]


def save_scored(scored: Scored, path: Path) -> None:
    doc = {
        "name": scored.name,
        "classes": {
            c: {
                "held": v.held.tolist(),
                "train": v.train.tolist(),
                "later": v.later.tolist(),
                "defect": scored.defects[c].tolist(),
                "threshold": scored.stored[c][0],
                "target_fpr": scored.stored[c][1],
            }
            for c, v in scored.classes.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) + "\n")


def load_scored(path: Path) -> Scored:
    doc = json.loads(path.read_text())
    cls = doc["classes"]
    arr = np.asarray
    return Scored(
        doc["name"],
        {c: ClassScores(arr(v["held"]), arr(v["train"]), arr(v["later"])) for c, v in cls.items()},
        {c: arr(v["defect"]) for c, v in cls.items()},
        {c: (float(v["threshold"]), float(v["target_fpr"])) for c, v in cls.items()},
    )


def rule_production(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """What training stores (`calibrate`): from STEADY_COUNT normals the higher of the
    exponential tail and the log-normal fit, the log-normal fit below."""
    return calibrate(s, fpr).threshold


def rule_exponential_tail(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """The exponential tail over the top fifth of the log-scores alone (log-normal below
    STEADY_COUNT, as production)."""
    if s.size < STEADY_COUNT:
        return rule_lognormal(s, fpr)
    return exponential_tail_quantile(np.log(np.clip(s, 1e-12, None)), fpr)


def rule_lognormal(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """A log-normal fitted to all the scores (production until 2026-12-08, and the family the
    shrunk, margin and training-spread rules adjust)."""
    return lognormal_quantile(*log_stats(s), fpr)


def rule_robust(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """Median and MAD of the log-scores: one outlying normal image cannot move them far."""
    logs = np.log(np.clip(s, 1e-12, None))
    centre = float(np.median(logs))
    spread = max(MAD_TO_SD * float(np.median(np.abs(logs - centre))), 1e-6)
    return lognormal_quantile(centre, spread, fpr)


def rule_predictive(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
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


def pooled_spread(classes: Sequence[np.ndarray]) -> tuple[float, int]:
    """The spread of log-scores within a class, pooled over classes (degrees of freedom
    weighted): in one unified model the classes' relative spreads are alike, and a spread
    pooled over every class is far steadier than one class's sd of five scores."""
    sums, dof = 0.0, 0
    for s in classes:
        if s.size >= 2:
            sums += (s.size - 1) * log_stats(s)[1] ** 2
            dof += s.size - 1
    return (math.sqrt(sums / dof) if dof else 1e-6), dof


def rule_shrunk(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """Log-normal with the class's spread shrunk toward the spread pooled over the model's other
    classes, as if the pool were PRIOR_DOF more of the class's own scores: five scores then
    set the class's location (a mean is steady on five) and barely its spread. The bound is
    for the next score, so the location's own error widens it by sqrt(1 + 1/n)."""
    mu, sd = log_stats(s)
    pooled, dof = pooled_spread(ctx.others_held)
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


def rule_pooled_tail(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """The tail's shape pooled across classes: every class's leave-one-out standardised
    log-scores together, their (1 - fpr) quantile taken as the class's z, on its own mean and
    sd. A heavier tail than the log-normal's shows as a larger z for every class."""
    pooled = np.concatenate([loo_residuals(x) for x in (*ctx.others_held, s)])
    if pooled.size * fpr < 1:  # the pool cannot reach this tail: the log-normal's z
        return rule_lognormal(s, fpr)
    mu, sd = log_stats(s)
    return math.exp(mu + float(np.quantile(pooled, 1.0 - fpr)) * sd)


def rule_max(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """The highest held-out score: the conformal bound, a false-positive rate of at most
    1 / (n + 1) on exchangeable scores, whatever their distribution; it is what n normals
    can promise, and no rule can promise less without assuming a shape."""
    return float(np.max(s))


def drift_of(base: np.ndarray, later: np.ndarray) -> tuple[float, float]:
    """Where `later`'s log-scores sit against `base`'s: the shift of the mean in units of
    `base`'s spread, and the ratio of the spreads."""
    mb, sb = log_stats(base)
    ml, sl = log_stats(later)
    return (ml - mb) / sb, sl / sb


def pooled_drift(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], minimum: int
) -> tuple[float, float] | None:
    """`drift_of` pooled over classes, each weighted by the smaller of its two samples (the
    ratio geometrically); None when no class has `minimum` scores on both sides."""
    kept = [(b, x) for b, x in pairs if min(b.size, x.size) >= max(minimum, 2)]
    rows = [(*drift_of(b, x), min(b.size, x.size)) for b, x in kept]
    if not rows:
        return None
    w = np.array([r[2] for r in rows], dtype=np.float64)
    shift = float(np.average([r[0] for r in rows], weights=w))
    ratio = math.exp(float(np.average(np.log([r[1] for r in rows]), weights=w)))
    return shift, ratio


def _z(fpr: float) -> float:
    return NormalDist().inv_cdf(1.0 - fpr)


def own_spread(s: np.ndarray, ctx: Context) -> float | None:
    """The class's spread of log-scores read off its own training images (many, where the
    held-out sliver is a handful), widened by how much wider held-out scores were than
    in-sample ones on the other classes; None without enough training scores."""
    if ctx.own_train.size < 3:
        return None
    widening = pooled_drift([(o.train, o.held) for o in ctx.others], 3)
    return log_stats(ctx.own_train)[1] * (widening[1] if widening else 1.0)


def rule_train_spread(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """Location from the class's held-out scores (a mean is steady on five), spread from its
    own training images (`own_spread`), the bound for the next score (sqrt(1 + 1/n)). Unlike
    the shrunk rule it borrows no other class's spread, only how in-sample scores relate to
    held-out ones, which is a property of the model rather than of a product."""
    spread = own_spread(s, ctx)
    if spread is None:
        return rule_lognormal(s, fpr)
    return lognormal_quantile(log_stats(s)[0], spread * math.sqrt(1.0 + 1.0 / s.size), fpr)


def later_margin(ctx: Context) -> tuple[float, float] | None:
    """How the other classes' later normals sat against their held-out ones (shift in
    held-out spreads, widening): the capture-to-line margin a held-out fit misses."""
    return pooled_drift([(o.held, o.later) for o in ctx.others], MIN_LATER)


def rule_margin(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """The log-normal fit moved by the held-out-to-later margin measured on the other
    classes: mu + sd (shift + z * widening)."""
    margin = later_margin(ctx)
    if margin is None:
        return rule_lognormal(s, fpr)
    mu, sd = log_stats(s)
    return math.exp(mu + sd * (margin[0] + _z(fpr) * margin[1]))


def rule_train_spread_margin(s: np.ndarray, fpr: float, ctx: Context = NONE) -> float:
    """Both: the class's own training spread and the other classes' later margin."""
    spread, margin = own_spread(s, ctx), later_margin(ctx)
    if margin is None:
        return rule_train_spread(s, fpr, ctx)
    if spread is None:
        return rule_margin(s, fpr, ctx)
    sd = spread * math.sqrt(1.0 + 1.0 / s.size)
    return math.exp(log_stats(s)[0] + sd * (margin[0] + _z(fpr) * margin[1]))


Rule = Callable[[np.ndarray, float, Context], float]
RULES: dict[str, Rule] = {
    "production (higher of the two from 20 normals)": rule_production,
    "exponential tail (top fifth of log-scores)": rule_exponential_tail,
    "log-normal (mean, sd of log-scores)": rule_lognormal,
    "robust (median, MAD of log-scores)": rule_robust,
    "predictive (Student t bound)": rule_predictive,
    "shrunk spread (pooled over classes)": rule_shrunk,
    "pooled tail (leave-one-out, all classes)": rule_pooled_tail,
    "max of held-out (conformal)": rule_max,
    "own training spread": rule_train_spread,
    "later margin (other classes)": rule_margin,
    "own training spread + later margin": rule_train_spread_margin,
}


Split = tuple[dict[str, list[Path]], dict[str, list[Path]]]


def rebuild_split(inspector: Inspector, data: Path) -> Split:
    """The (train, held-out) split the checkpoint was trained with, from its recorded seed;
    refused when the held-out counts differ from the checkpoint's (other data or split)."""
    meta = inspector.meta
    d = TrainConfig()  # checkpoints from before the split rule was recorded used its defaults
    train, held = split_heldout(
        train_images(data, list(meta.classes)),
        float(meta.training.get("heldout_fraction", d.heldout_fraction)),
        int(meta.training.get("heldout_min", d.heldout_min)),
        int(meta.training["seed"]),
    )
    for c in meta.classes:
        if len(held[c]) != meta.heldout_images[c]:
            raise SystemExit(
                f"{c}: {len(held[c])} held-out images, the checkpoint says "
                f"{meta.heldout_images[c]}: trained with another split or data"
            )
    return train, held


def score_paths(inspector: Inspector, paths: list[Path], cls: str) -> np.ndarray:
    """Scores of `paths` as `cls`, 32 at a time (an empty list gives an empty array)."""
    chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]
    return np.concatenate(
        [np.zeros(0)]
        + [inspector.inspect([read_image(p) for p in ch], [cls] * len(ch)).scores for ch in chunks]
    )


def heldout_scores(
    inspector: Inspector, data: Path, classes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Held-out normal scores of `classes` (default all), from the split the checkpoint was
    trained with."""
    _, held = rebuild_split(inspector, data)
    return {c: score_paths(inspector, held[c], c) for c in classes or inspector.meta.classes}


def scored_classes(inspector: Inspector, data: Path, name: str = "") -> Scored:
    """Every class's normal scores (held out, training in sample, later: the test set's good
    images) and its test defects' scores. Each image is scored once per checkpoint."""
    train, held = rebuild_split(inspector, data)
    scores, defects = {}, {}
    for c in inspector.meta.classes:
        test, _, masks = score_items(inspector, test_items(data, [c]))
        defect = image_labels(masks)
        scores[c] = ClassScores(
            score_paths(inspector, held[c], c), score_paths(inspector, train[c], c), test[~defect]
        )
        defects[c] = test[defect]
    stored = {c: (k.threshold, k.target_fpr) for c, k in inspector.meta.calibration.items()}
    return Scored(name or inspector.version, scores, defects, stored)


def context_for(cls: str, scores: dict[str, ClassScores]) -> Context:
    """Leave one class out: the class's own training scores, every other class in full."""
    return Context([v for k, v in scores.items() if k != cls], scores[cls].train)


def compare(scored: Scored) -> dict:
    """Every rule fitted to each class's held-out scores, judged on its later normals and
    defects; refused unless production reproduces the stored thresholds (so the split and the
    scores are the ones training calibrated on)."""
    scores, defects = scored.classes, scored.defects
    rows: dict = {}
    for c, v in scores.items():
        threshold, fpr = scored.stored[c]
        # a checkpoint calibrated before 2026-12-08 holds the log-normal threshold
        reproduced = rule_production(v.held, fpr)
        if not math.isclose(reproduced, threshold, rel_tol=1e-3):
            reproduced = rule_lognormal(v.held, fpr)
        if not math.isclose(reproduced, threshold, rel_tol=1e-3):
            raise SystemExit(
                f"{c}: held-out scores give threshold {reproduced:.3f}, the checkpoint holds "
                f"{threshold:.3f}: not the split or scoring training used"
            )
        rows[c] = {"heldout": len(v.held), "heldout_max": float(v.held.max())}
        ctx = context_for(c, scores)
        for name, rule in RULES.items():
            t = rule(v.held, fpr, ctx)
            rows[c][name] = {
                "threshold": t,
                "fpr": float((v.later > t).mean()) if v.later.size else math.nan,
                "recall": float((defects[c] > t).mean()) if defects[c].size else math.nan,
            }
    return rows


def shift_table(scores: dict[str, ClassScores], fpr: dict[str, float]) -> list[str]:
    """Per class: held-out against training (in sample) and later against held-out, in
    held-out spreads, and the production threshold's false-positive rate on the later ones."""
    lines = [
        "| class | train / held out / later | held out vs train: shift, sd ratio "
        "| later vs held out: shift, sd ratio | later above production threshold |",
        "|---|---|---|---|---|",
    ]
    for c, v in scores.items():
        ht = drift_of(v.train, v.held) if min(v.train.size, v.held.size) >= 2 else (math.nan,) * 2
        lh = drift_of(v.held, v.later) if min(v.held.size, v.later.size) >= 2 else (math.nan,) * 2
        t = rule_production(v.held, fpr[c])
        above = float((v.later > t).mean()) if v.later.size else math.nan
        lines.append(
            f"| {c} | {v.train.size} / {v.held.size} / {v.later.size} | {ht[0]:+.2f}, {ht[1]:.2f} "
            f"| {lh[0]:+.2f}, {lh[1]:.2f} | {above:.3f} |"
        )
    return lines


def sample_size_study(
    held: np.ndarray,
    good: np.ndarray,
    defect: np.ndarray,
    sizes: list[int],
    draws: int,
    fpr: float,
    seed: int = 0,
    ctx: Context = NONE,
) -> dict[int, dict[str, dict[str, float]]]:
    """Per sample size n and rule: spread over `draws` random n-subsets of the held-out scores
    (the pooled rules also see `ctx`: the model's other classes, as a class being commissioned
    on a line would, since the model's classes are known by then, and the class's own training
    scores, drawn in the proportion the split gives them to n held-out images).

    Threshold is reported against the production rule on all held-out scores, so 1.00 is "as if
    the class had every image"; FPR and recall are measured on the test images `good` and
    `defect`. Percentiles across draws, because the question is how bad an unlucky line gets.
    """
    rng = np.random.default_rng(seed)
    reference = rule_production(held, fpr)
    own = ctx.own_train
    out: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        if not 2 <= n <= held.size:
            raise ValueError(f"sample size {n} outside 2..{held.size} held-out scores")
        m = min(own.size, max(3, round(n * own.size / held.size))) if own.size else 0
        subsets = [
            (rng.choice(held, size=n, replace=False), rng.choice(own, size=m, replace=False))
            for _ in range(draws)
        ]
        out[n] = {}
        for name, rule in RULES.items():
            t = np.array([rule(sub, fpr, Context(ctx.others, tr)) for sub, tr in subsets])
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


def study(scored: Scored, cls: str, sizes: list[int], draws: int) -> dict:
    """The sample-size study of one class (sizes past its held-out count are left out), the
    pooled rules seeing the other classes in full and the class's own training scores."""
    if cls not in scored.classes:
        raise SystemExit(f"--study {cls}: not a class of {scored.name}")
    v = scored.classes[cls]
    fpr = scored.stored[cls][1]
    fit = [n for n in sizes if n <= v.held.size] or [v.held.size]
    ctx = context_for(cls, scored.classes)
    return sample_size_study(v.held, v.later, scored.defects[cls], fit, draws, fpr, ctx=ctx)


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


def across(compared: dict[str, dict]) -> list[str]:
    """Each rule over every checkpoint compared: per class, the test false-positive rate and
    recall at its threshold, mean and range (a rule is judged over models, not on one)."""
    classes = sorted({c for rows in compared.values() for c in rows})
    head = " | ".join(f"{c} FPR / recall" for c in classes)
    lines = [
        f"\nrules over {len(compared)} checkpoint(s): mean (min–max)",
        f"| rule | {head} |",
        "|---|" + "---|" * len(classes),
    ]
    for name in RULES:
        cells = []
        for c in classes:
            got = [rows[c][name] for rows in compared.values() if c in rows]
            f, r = (np.array([g[k] for g in got]) for k in ("fpr", "recall"))
            cells.append(f"{_spread(f)} / {_spread(r)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _spread(v: np.ndarray) -> str:
    return f"{v.mean():.3f}" if v.size == 1 else f"{v.mean():.3f} ({v.min():.3f}–{v.max():.3f})"


def sources(args: argparse.Namespace) -> Iterator[Scored]:
    """Each checkpoint scored (its scores saved when asked), or each saved file read."""
    for path in args.scores or []:
        yield load_scored(path)
    for ckpt in args.ckpt or []:
        name = f"{ckpt.parent.parent.name}-{ckpt.parent.name}"  # runs/levers/ARM/seed-N
        scored = scored_classes(Inspector.from_checkpoint(ckpt, device="cpu"), args.data, name)
        if args.save_scores:
            save_scored(scored, args.save_scores / f"{name}.json")
        yield scored


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.calibration", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, help="the checkpoints' data set (with --ckpt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, nargs="+", help="checkpoints to score")
    src.add_argument("--scores", type=Path, nargs="+", help="scores saved by --save-scores")
    p.add_argument("--save-scores", type=Path, metavar="DIR", help="keep each one's scores here")
    p.add_argument("--json", type=Path, help="write the comparison here")
    p.add_argument("--study", metavar="CLASS", nargs="+", help="sample-size study on these classes")
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 8, 12, 20, 40])
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args(argv)
    if args.ckpt and args.data is None:
        p.error("--ckpt needs --data")
    report: dict = {}
    for scored in sources(args):
        fpr = {c: f for c, (_, f) in scored.stored.items()}
        print(f"\n{scored.name}: where held-out and later normals sit")
        print("\n".join(shift_table(scored.classes, fpr)))
        rows = compare(scored)
        report[scored.name] = {"compare": rows, "study": {}}
        print("\n| checkpoint | class | held out | rule | threshold | test FPR | test recall |")
        print("|---|---|---|---|---|---|---|")
        for c, r in rows.items():
            for name in RULES:
                m = r[name]
                print(
                    f"| {scored.name} | {c} | {r['heldout']} | {name} | "
                    f"{m['threshold']:.2f} | {m['fpr']:.3f} | {m['recall']:.3f} |"
                )
        for cls in args.study or []:
            report[scored.name]["study"][cls] = study(scored, cls, args.sizes, args.draws)
            print_study(scored.name, cls, report[scored.name]["study"][cls])
    print("\n".join(across({k: v["compare"] for k, v in report.items()})))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
