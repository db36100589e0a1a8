"""A trained head as a checkpoint: the head's configuration, its calibration on the held-out
images, and the metadata that lets `Inspector` rebuild and score it exactly as measured here.

The configuration is built once (`head_config_for`); the exported one differs only when the
refinement threshold is measured after training (`heldout-p99`), and then a separate head is
built with it for scoring, so no configuration is ever changed in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from model.core.clock import utc_now
from model.inference.checkpoint import content_version, save_checkpoint
from model.inference.inspector import head_config_from, head_fields, image_scores
from model.metrics.calibration import calibrate
from model.net.backbone import BackboneInfo
from model.net.config import HeadConfig, TrainConfig
from model.net.grad import GRADHead
from model.net.refinement import derive_refine_threshold, mse_percentile
from model.net.standardise import channel_statistics, standardise
from model.training.fit import History
from model.training.options import TrainOptions
from schemas import CheckpointMeta


def head_config_for(
    feats: torch.Tensor,
    cfg: TrainConfig,
    options: TrainOptions,
    stats: FeatureStats | None = None,
) -> HeadConfig:
    """The head to train on `feats` (N x C x S x S): the parent's shape, decoder, levers and
    threshold for a warm start, else the options' and a threshold derived from the features
    (in the head's working space: standardised with `stats` when the options standardise)."""
    jitter_prob = 0.5 if options.jitter else 0.0
    if options.init_from is None:
        basis = standardise(feats, *stats) if stats is not None else feats
        return HeadConfig(
            channels=feats.shape[1],
            feature_size=feats.shape[2],
            variant=options.variant,
            refine_threshold=derive_refine_threshold(basis, cfg.threshold_ratio),
            jitter_prob=jitter_prob,
            local_grid=options.local_grid,
            global_grid=options.global_grid,
            standardise=stats is not None,
            read_dropout=options.read_dropout,
            image_score=options.image_score,
        )
    parent = options.init_from[1]
    if (parent.channels, parent.feature_size) != (feats.shape[1], feats.shape[2]):
        raise ValueError(
            f"features are {feats.shape[1]} x {feats.shape[2]}, the model to warm-start "
            f"from expects {parent.channels} x {parent.feature_size}"
        )
    return replace(
        head_config_from(parent), jitter_prob=jitter_prob, read_dropout=options.read_dropout
    )


def threshold_rule_of(options: TrainOptions) -> str:
    """The refinement threshold's rule: the parent's for a warm start, else the options'."""
    parent = options.init_from[1] if options.init_from is not None else None
    return parent.refine_threshold_rule if parent is not None else options.threshold_rule


FeatureStats = tuple[torch.Tensor, torch.Tensor]  # per-channel mean and std


def feature_stats_for(feats: torch.Tensor, options: TrainOptions) -> FeatureStats | None:
    """The training features' per-channel statistics when a new head standardises (a warm
    start keeps its parent's, which travel in the parent's weights)."""
    if not options.standardise or options.init_from is not None:
        return None
    return channel_statistics(feats)


@dataclass(frozen=True)
class ExportPlan:
    """What every export of one training run shares."""

    head_cfg: HeadConfig
    held: dict[str, torch.Tensor]  # held-out features per class (calibration)
    train_counts: dict[str, int]
    cfg: TrainConfig
    options: TrainOptions
    backbone: BackboneInfo
    image_size: int
    device: torch.device
    # Set when a new head standardises its features: loaded into it before training.
    feature_stats: FeatureStats | None = None

    @property
    def classes(self) -> list[str]:
        return sorted(self.held)


def _scoring_head(plan: ExportPlan, state: dict[str, torch.Tensor]) -> GRADHead:
    """A head holding `state`, with the refinement threshold the checkpoint will record."""
    head = GRADHead(plan.head_cfg).to(plan.device)
    head.load_state_dict(state)
    head.eval()
    if threshold_rule_of(plan.options) != "heldout-p99" or plan.options.init_from is not None:
        return head
    with torch.no_grad():
        z = head.prepare(torch.cat([plan.held[c] for c in plan.classes]).to(plan.device))
        p99 = mse_percentile(head.reconstruct(z), z, 99.0)
    measured = GRADHead(replace(plan.head_cfg, refine_threshold=p99)).to(plan.device)
    measured.load_state_dict(state)
    return measured.eval()


def _training_record(plan: ExportPlan, history: History, last: bool) -> dict:
    cfg = plan.cfg
    selected = history[-1] if last else [r for r in history if r.get("selected")][-1]
    return {
        "epochs": len(history) if cfg.epochs else 0,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "jitter": plan.options.jitter,
        "read_dropout": plan.options.read_dropout,
        "schedule": cfg.schedule,
        "step_epochs": cfg.step_epochs,
        # The split rule, so the held-out images can be rebuilt (bench.calibration).
        "heldout_fraction": cfg.heldout_fraction,
        "heldout_min": cfg.heldout_min,
        "best_epoch": int(selected["epoch"]),
        "best_heldout_loss": float(selected["heldout_loss"]),
        "selection": "last" if last else "heldout",
        "feature_seconds": 0.0,
        "train_seconds": round(sum(r["seconds"] for r in history), 1),
        "device": str(plan.device),
        **plan.options.provenance,
    }


def checkpoint_meta(
    plan: ExportPlan, head: GRADHead, history: History, last: bool
) -> CheckpointMeta:
    """The metadata of `head` (calibrated on the held-out features), before its version."""
    scores = {
        c: image_scores(head, plan.held[c], plan.image_size, plan.device) for c in plan.classes
    }
    info, target = plan.backbone, plan.cfg.target_fpr
    return CheckpointMeta(
        version="",
        created_at=utc_now().isoformat(timespec="seconds"),
        backbone=info.name,
        backbone_weights_sha256=info.weights_sha256,
        taps=info.taps,
        tap_channels=info.tap_channels,
        tap_strides=info.reductions,
        grid_stride=info.grid_stride,
        image_size=plan.image_size,
        mean=info.mean,
        std=info.std,
        **head_fields(head.cfg),
        refine_threshold_rule=threshold_rule_of(plan.options),
        calibration={c: calibrate(scores[c], target) for c in plan.classes},
        global_calibration=calibrate(np.concatenate(list(scores.values())), target),
        classes=tuple(plan.classes),
        train_images=dict(plan.train_counts),
        heldout_images={c: len(plan.held[c]) for c in plan.classes},
        training=_training_record(plan, history, last),
    )


def export_checkpoint(
    plan: ExportPlan,
    state: dict[str, torch.Tensor],
    path: Path,
    history: History,
    last: bool = False,
) -> CheckpointMeta:
    """Calibrate the head in `state` on the held-out images and write a checkpoint (and its
    history beside it). `state` is the model of the last selected epoch in `history`, or with
    `last` the final epoch's model, exported whether or not the held-out loss chose it."""
    draft = checkpoint_meta(plan, _scoring_head(plan, state), history, last)
    tensors = {k: v.detach().cpu() for k, v in state.items()}
    meta = draft.model_copy(
        update={"version": content_version(tensors, draft.model_dump(mode="json"))}
    )
    save_checkpoint(path, tensors, meta)
    Path(str(path) + ".history.json").write_text(json.dumps(history, indent=1))
    return meta
