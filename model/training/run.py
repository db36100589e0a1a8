"""Training runs: `train` from an MVTec-layout folder, `train_from_features` from features in
memory (what the retraining uses, on images read back from the record).

Both hold out a seeded share of each class, select the epoch by held-out loss, calibrate every
class on its held-out scores and write one checkpoint for all classes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from model.data.feature_cache import FeatureSettings, cached_features
from model.data.mvtec import train_images
from model.inference.inspector import resolve_device
from model.net.backbone import BackboneInfo, build_backbone
from model.net.config import TrainConfig
from model.net.grad import GRADHead, count_trainable
from model.training.export import (
    ExportPlan,
    export_checkpoint,
    feature_stats_for,
    head_config_for,
    threshold_rule_of,
)
from model.training.fit import History, fit_head, seed_everything, untrained_history
from model.training.options import TrainOptions
from model.training.split import split_heldout
from schemas import CheckpointMeta


def train(
    data: Path,
    out: Path,
    cfg: TrainConfig,
    settings: FeatureSettings,
    options: TrainOptions | None = None,
    classes: list[str] | None = None,
) -> CheckpointMeta:
    """Train, select by held-out loss, calibrate, save to `out`; returns its metadata."""
    started = time.perf_counter()
    gen = seed_everything(cfg.seed)  # before the backbone is built, as every run so far
    device = resolve_device(settings.device)
    size = settings.image_size
    train_set, held_set = split_heldout(
        train_images(data, classes), cfg.heldout_fraction, cfg.heldout_min, cfg.seed
    )
    backbone = build_backbone(
        settings.backbone, settings.backbone_weights, settings.tap_strides, settings.grid_stride
    ).to(device)

    def features(sets: dict[str, list[Path]], what: str) -> dict[str, torch.Tensor]:
        return {
            c: cached_features(backbone, sets[c], size, device, settings.cache_dir, f"{what} {c}")
            for c in sorted(sets)
        }

    feats, held = features(train_set, "train"), features(held_set, "held-out")
    options = options or TrainOptions()
    seconds = {"feature_seconds": round(time.perf_counter() - started, 1)}
    options = replace(options, provenance={**seconds, **options.provenance})
    plan = make_plan(feats, held, cfg, backbone.info, size, device, options)
    return fit_and_export(plan, feats, out, gen)


def train_from_features(
    train_feats: dict[str, torch.Tensor],
    held_feats: dict[str, torch.Tensor],
    out: Path,
    cfg: TrainConfig,
    backbone_info: BackboneInfo,
    image_size: int,
    device: torch.device,
    options: TrainOptions | None = None,
) -> CheckpointMeta:
    """Train the head on backbone features given per class (N x C x S x S each), select by
    held-out loss, calibrate every class on its held-out features, save to `out`.

    `cfg.epochs == 0` trains nothing: the initial head (the parent's weights, or an untrained
    one) is exported, calibrated on the held-out features.
    """
    gen = seed_everything(cfg.seed)
    plan = make_plan(train_feats, held_feats, cfg, backbone_info, image_size, device, options)
    return fit_and_export(plan, train_feats, out, gen)


def make_plan(
    train_feats: dict[str, torch.Tensor],
    held_feats: dict[str, torch.Tensor],
    cfg: TrainConfig,
    backbone_info: BackboneInfo,
    image_size: int,
    device: torch.device,
    options: TrainOptions | None,
) -> ExportPlan:
    """What the run's exports share, the head's configuration first."""
    names = sorted(train_feats)
    if sorted(held_feats) != names:
        raise ValueError("train and held-out features must cover the same classes")
    options = options or TrainOptions()
    every = torch.cat([train_feats[c] for c in names])
    stats = feature_stats_for(every, options)
    return ExportPlan(
        head_cfg=head_config_for(every, cfg, options, stats),
        held={c: held_feats[c] for c in names},
        train_counts={c: len(train_feats[c]) for c in names},
        cfg=cfg,
        options=options,
        backbone=backbone_info,
        image_size=image_size,
        device=device,
        feature_stats=stats,
    )


def _announce(head: GRADHead, plan: ExportPlan, images: int) -> None:
    parent = plan.options.init_from
    start = f"warm start from {parent[1].version}" if parent is not None else "from scratch"
    held = sum(len(f) for f in plan.held.values())
    tqdm.write(
        f"GRAD {plan.head_cfg.variant}: {count_trainable(head) / 1e6:.2f} M trainable "
        f"parameters, {images} training and {held} held-out images over {len(plan.held)} "
        f"classes, refinement threshold {plan.head_cfg.refine_threshold:.3f} "
        f"({threshold_rule_of(plan.options)}), {start}; {lever_summary(plan)}"
    )


def lever_summary(plan: ExportPlan) -> str:
    """The levers this run trains with, in the words of `model.train`'s options."""
    h, b = plan.head_cfg, plan.backbone
    taps = "+".join(str(r) for r in b.reductions)
    return (
        f"taps {taps} on the stride-{b.grid_stride} grid ({h.feature_size} x {h.feature_size}), "
        f"grids {h.local_grid}/{h.global_grid}, standardise {'on' if h.standardise else 'off'}, "
        f"read dropout {h.read_dropout:g}, image score {h.image_score}"
    )


def fit_and_export(
    plan: ExportPlan, train_feats: dict[str, torch.Tensor], out: Path, gen: torch.Generator
) -> CheckpointMeta:
    """Build the head (warm-started when asked), fit it, export the selected epoch (and the
    snapshots and last epoch the options ask for)."""
    options, cfg, device = plan.options, plan.cfg, plan.device
    feats = torch.cat([train_feats[c] for c in plan.classes])
    held_all = torch.cat([plan.held[c] for c in plan.classes])
    head = GRADHead(plan.head_cfg).to(device)
    if options.init_from is not None:
        head.load_state_dict(options.init_from[0], strict=True)
    elif plan.feature_stats is not None:
        head.set_feature_statistics(*(s.to(device) for s in plan.feature_stats))
    _announce(head, plan, len(feats))
    if cfg.epochs == 0:  # nothing to fit: the initial head as it is, calibrated
        history = untrained_history(head, held_all, device)
        return export_checkpoint(plan, copy.deepcopy(head.state_dict()), out, history)

    def snapshot(epoch: int, best: dict[str, torch.Tensor], history: History) -> None:
        if options.snapshot_every and epoch % options.snapshot_every == 0 and epoch < cfg.epochs:
            path = out.with_name(f"{out.stem}-e{epoch}{out.suffix}")
            export_checkpoint(plan, best, path, history)

    best_state, history = fit_head(head, feats, held_all, cfg, device, gen, snapshot)
    if options.keep_last:
        final = copy.deepcopy(head.state_dict())
        last = out.with_name(f"{out.stem}-last{out.suffix}")
        export_checkpoint(plan, final, last, history, last=True)
    return export_checkpoint(plan, best_state, out, history)
