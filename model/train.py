"""`python -m model.train --data DIR --out CKPT`: one unified GRAD model for every class.

Reads `train/good` of each class only. A seeded share of it is held out: the epoch with the
lowest held-out reconstruction loss is kept, and the per-class thresholds are calibrated on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.data.feature_cache import cached_features
from model.data.mvtec import split_heldout, train_images
from model.inference.checkpoint import content_version, save_checkpoint
from model.inference.inspector import head_scores, resolve_device
from model.metrics.calibration import calibrate, calibration_report
from model.net.backbone import BackboneInfo, build_backbone
from model.net.config import DECODERS, DEFAULT_VARIANT, HeadConfig, TrainConfig
from model.net.grad import GRADHead, count_trainable
from model.net.refinement import derive_refine_threshold, mse_percentile, reconstruction_loss
from model.settings import ModelSettings
from schemas import CheckpointMeta

THRESHOLD_RULES = ("energy", "heldout-p99")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def heldout_loss(head: GRADHead, feats: torch.Tensor, device: torch.device, bs: int = 64) -> float:
    head.eval()
    total = 0.0
    for i in range(0, len(feats), bs):
        x = feats[i : i + bs].to(device)
        total += float(reconstruction_loss(head(x), x)) * len(x)
    return total / len(feats)


SCHEDULES = ("step", "cosine")


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule for both parameter groups (they keep their ratio)."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_epochs, gamma=cfg.step_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}")


def fit_head(
    head: GRADHead,
    feats: torch.Tensor,
    held: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator,
    on_epoch: Callable[[int, dict[str, torch.Tensor], list[dict[str, float]]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """The reference optimisation; returns the best state by held-out loss and the history.

    `on_epoch(epoch, best_state_so_far, history)` runs after every epoch (snapshots).
    """
    opt = torch.optim.AdamW(
        [
            {"params": head.grid_parameters(), "lr": cfg.lr_grid},
            {"params": head.other_parameters(), "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    sched = build_scheduler(opt, cfg)
    n = len(feats)
    best, best_state, history = float("inf"), None, []
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch")
    for epoch in bar:
        head.train()
        t0, seen, running = time.perf_counter(), 0, 0.0
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            x = feats[idx].to(device, non_blocking=True)
            loss = reconstruction_loss(head(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.clip_norm)
            opt.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        sched.step()
        row = {
            "epoch": epoch + 1,
            "loss": running / max(seen, 1),
            "seconds": time.perf_counter() - t0,
        }
        if (epoch + 1) % cfg.select_every == 0 or epoch + 1 == cfg.epochs:
            row["heldout_loss"] = heldout_loss(head, held, device)
            if row["heldout_loss"] < best:
                best = row["heldout_loss"]
                best_state = copy.deepcopy(head.state_dict())
                row["selected"] = 1.0
            bar.set_postfix(loss=f"{row['loss']:.4f}", heldout=f"{row['heldout_loss']:.4f}")
        history.append(row)
        if on_epoch is not None and best_state is not None:
            on_epoch(epoch + 1, best_state, history)
    assert best_state is not None
    return best_state, history


def train(
    data: Path,
    out: Path,
    cfg: TrainConfig,
    settings: ModelSettings,
    variant: str = DEFAULT_VARIANT,
    classes: list[str] | None = None,
    threshold_rule: str = "energy",
    jitter: bool = True,
    snapshot_every: int = 0,
    keep_last: bool = False,
) -> CheckpointMeta:
    """Train, select by held-out loss, calibrate, save to `out`; returns its metadata.

    With `snapshot_every=K`, the best-so-far model is also exported every K epochs as
    `<out stem>-e<epoch>.safetensors`: one run then measures several training lengths.
    With `keep_last`, the final epoch's model is also exported as `<out stem>-last.safetensors`,
    so the held-out selection can be checked against simply training longer, on the same run.
    """
    started = time.perf_counter()
    gen = seed_everything(cfg.seed)
    device = resolve_device(settings.device)
    size = settings.image_size
    train_set, held_set = split_heldout(
        train_images(data, classes), cfg.heldout_fraction, cfg.heldout_min, cfg.seed
    )
    names = sorted(train_set)
    backbone = build_backbone(settings.backbone, settings.backbone_weights).to(device)
    cache = settings.cache_dir
    feats = {
        c: cached_features(backbone, train_set[c], size, device, cache, f"train {c}") for c in names
    }
    held = {
        c: cached_features(backbone, held_set[c], size, device, cache, f"held-out {c}")
        for c in names
    }
    return train_from_features(
        feats,
        held,
        out,
        cfg,
        backbone.info,
        size,
        device,
        variant=variant,
        threshold_rule=threshold_rule,
        jitter=jitter,
        snapshot_every=snapshot_every,
        keep_last=keep_last,
        feature_seconds=time.perf_counter() - started,
        gen=gen,
    )


def train_from_features(
    train_feats: dict[str, torch.Tensor],
    held_feats: dict[str, torch.Tensor],
    out: Path,
    cfg: TrainConfig,
    backbone_info: BackboneInfo,
    image_size: int,
    device: torch.device,
    *,
    variant: str = DEFAULT_VARIANT,
    threshold_rule: str = "energy",
    jitter: bool = True,
    snapshot_every: int = 0,
    keep_last: bool = False,
    init_from: tuple[dict[str, torch.Tensor], CheckpointMeta] | None = None,
    feature_seconds: float = 0.0,
    gen: torch.Generator | None = None,
    provenance: dict[str, float | int | str | bool | None] | None = None,
) -> CheckpointMeta:
    """Train the head on backbone features given per class (N x C x S x S each), select by
    held-out loss, calibrate every class on its held-out features, save to `out`.

    `init_from=(tensors, meta)` warm-starts from a trained model (a fine-tune): its head shape,
    decoder variant and refinement threshold are kept, `variant` and `threshold_rule` are
    ignored. `cfg.epochs == 0` trains nothing: the initial head (the parent's weights, or an
    untrained one) is exported, calibrated on the held-out features. `provenance` is added to
    the checkpoint's `training` record.
    """
    if gen is None:
        gen = seed_everything(cfg.seed)
    names = sorted(train_feats)
    if sorted(held_feats) != names:
        raise ValueError("train and held-out features must cover the same classes")
    size = image_size
    feats = torch.cat([train_feats[c] for c in names])
    held = held_feats
    held_all = torch.cat([held[c] for c in names])

    parent = init_from[1] if init_from is not None else None
    if parent is not None:
        if (parent.channels, parent.feature_size) != (feats.shape[1], feats.shape[2]):
            raise ValueError(
                f"features are {feats.shape[1]} x {feats.shape[2]}, the model to warm-start "
                f"from expects {parent.channels} x {parent.feature_size}"
            )
        variant, threshold_rule = parent.variant, parent.refine_threshold_rule
        threshold = parent.refine_threshold
    else:
        threshold = derive_refine_threshold(feats, cfg.threshold_ratio)
    head_cfg = HeadConfig(
        channels=feats.shape[1],
        feature_size=feats.shape[2],
        variant=variant,
        refine_threshold=threshold,
        jitter_prob=0.5 if jitter else 0.0,
        **(
            {"local_grid": parent.local_grid, "global_grid": parent.global_grid}
            if parent is not None
            else {}
        ),
    )
    head = GRADHead(head_cfg).to(device)
    if init_from is not None:
        head.load_state_dict(init_from[0], strict=True)
    start = f"warm start from {parent.version}" if parent is not None else "from scratch"
    tqdm.write(
        f"GRAD {variant}: {count_trainable(head) / 1e6:.2f} M trainable parameters, "
        f"{len(feats)} training and {len(held_all)} held-out images over {len(names)} classes, "
        f"refinement threshold {threshold:.3f} ({threshold_rule}), {start}"
    )

    def export(
        state: dict[str, torch.Tensor],
        path: Path,
        history: list[dict],
        last: bool = False,
    ) -> CheckpointMeta:
        """Calibrate the head in `state` on the held-out images and write a checkpoint.

        `state` is the model of the last selected epoch in `history`, or with `last` the final
        epoch's model, exported whether or not the held-out loss chose it.
        """
        head.load_state_dict(state)
        head.eval()
        cfg_out = head_cfg
        if threshold_rule == "heldout-p99" and parent is None:
            with torch.no_grad():
                x = held_all.to(device)
                p99 = mse_percentile(head.reconstruct(x), x, 99.0)
            cfg_out = HeadConfig(**{**asdict(head_cfg), "refine_threshold": p99})
        head.cfg = cfg_out
        scores = {c: head_scores(head, held[c].to(device), size)[1].cpu().numpy() for c in names}
        head.cfg = head_cfg
        selected = history[-1] if last else [r for r in history if r.get("selected")][-1]
        info = backbone_info
        draft = CheckpointMeta(
            version="",
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            backbone=info.name,
            backbone_weights_sha256=info.weights_sha256,
            taps=info.taps,
            tap_channels=info.tap_channels,
            image_size=size,
            mean=info.mean,
            std=info.std,
            variant=variant,
            channels=cfg_out.channels,
            feature_size=cfg_out.feature_size,
            local_grid=cfg_out.local_grid,
            global_grid=cfg_out.global_grid,
            refine_threshold=cfg_out.refine_threshold,
            refine_threshold_rule=threshold_rule,
            calibration={c: calibrate(scores[c], cfg.target_fpr) for c in names},
            global_calibration=calibrate(np.concatenate(list(scores.values())), cfg.target_fpr),
            classes=tuple(names),
            train_images={c: len(train_feats[c]) for c in names},
            heldout_images={c: len(held[c]) for c in names},
            training={
                "epochs": len(history) if cfg.epochs else 0,
                "batch_size": cfg.batch_size,
                "seed": cfg.seed,
                "jitter": jitter,
                "schedule": cfg.schedule,
                "step_epochs": cfg.step_epochs,
                # The split rule, so the held-out images can be rebuilt (bench.calibration).
                "heldout_fraction": cfg.heldout_fraction,
                "heldout_min": cfg.heldout_min,
                "best_epoch": int(selected["epoch"]),
                "best_heldout_loss": float(selected["heldout_loss"]),
                "selection": "last" if last else "heldout",
                "feature_seconds": round(feature_seconds, 1),
                "train_seconds": round(sum(r["seconds"] for r in history), 1),
                "device": str(device),
                **(provenance or {}),
            },
        )
        tensors = {k: v.detach().cpu() for k, v in state.items()}
        meta = draft.model_copy(
            update={"version": content_version(tensors, draft.model_dump(mode="json"))}
        )
        save_checkpoint(path, tensors, meta)
        Path(str(path) + ".history.json").write_text(json.dumps(history, indent=1))
        return meta

    def snapshot(epoch: int, best: dict[str, torch.Tensor], history: list[dict]) -> None:
        if snapshot_every and epoch % snapshot_every == 0 and epoch < cfg.epochs:
            live = copy.deepcopy(head.state_dict())
            export(best, out.with_name(f"{out.stem}-e{epoch}{out.suffix}"), history)
            head.load_state_dict(live)
            head.train()

    if cfg.epochs == 0:  # nothing to fit: the initial head as it is, calibrated
        best_state = copy.deepcopy(head.state_dict())
        history = [
            {
                "epoch": 0,
                "loss": float("nan"),
                "seconds": 0.0,
                "heldout_loss": heldout_loss(head, held_all, device),
                "selected": 1.0,
            }
        ]
    else:
        best_state, history = fit_head(head, feats, held_all, cfg, device, gen, snapshot)
        if keep_last:
            final = copy.deepcopy(head.state_dict())
            export(final, out.with_name(f"{out.stem}-last{out.suffix}"), history, last=True)
    return export(best_state, out, history)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout directory")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument(
        "--epochs",
        type=int,
        help="default: the spec's length for the decoder (grad 100, crad and crad-s 50)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--variant", choices=sorted(DECODERS), default=DEFAULT_VARIANT)
    p.add_argument("--classes", nargs="*", help="train on these classes only")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="learning-rate schedule: the spec's StepLR, or cosine annealing over --epochs",
    )
    p.add_argument("--step-epochs", type=int, default=d.step_epochs, help="StepLR period")
    p.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction)
    p.add_argument(
        "--heldout-min",
        type=int,
        default=d.heldout_min,
        help="held-out images per class at least (capped at half the class)",
    )
    p.add_argument("--target-fpr", type=float, default=d.target_fpr)
    p.add_argument(
        "--threshold-ratio",
        type=float,
        default=d.threshold_ratio,
        help="refinement threshold as a fraction of the mean feature energy",
    )
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="energy")
    p.add_argument("--no-jitter", action="store_true", help="ablation: disable coordinate jitter")
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="also export the best-so-far model every N epochs",
    )
    p.add_argument(
        "--keep-last",
        action="store_true",
        help="also export the final epoch's model (as <out>-last) beside the selected one",
    )
    p.add_argument("--backbone", help="timm architecture (default from GRAD_BACKBONE)")
    p.add_argument("--backbone-weights", type=Path, help="weights file for the backbone")
    p.add_argument(
        "--image-size",
        type=int,
        help="input side in pixels, a multiple of 16 (default from GRAD_IMAGE_SIZE: 224)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "backbone": args.backbone,
            "backbone_weights": args.backbone_weights,
            "image_size": args.image_size,
            "device": args.device,
        }.items()
        if v is not None
    }
    settings = ModelSettings(**overrides)
    meta = train(
        args.data,
        args.out,
        config_from_args(args),
        settings,
        args.variant,
        args.classes,
        args.threshold_rule,
        jitter=not args.no_jitter,
        snapshot_every=args.snapshot_every,
        keep_last=args.keep_last,
    )
    print(
        f"wrote {args.out} (version {meta.version}, best epoch {meta.training['best_epoch']}, "
        f"{meta.training['train_seconds']} s training)"
    )
    for line in calibration_report(meta.calibration):
        print(line)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The schedule a command line asked for; its length is the decoder's unless given."""
    return TrainConfig(
        epochs=args.epochs if args.epochs is not None else DECODERS[args.variant].reference_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        step_epochs=args.step_epochs,
        schedule=args.schedule,
        heldout_fraction=args.heldout_fraction,
        heldout_min=args.heldout_min,
        target_fpr=args.target_fpr,
        threshold_ratio=args.threshold_ratio,
    )


if __name__ == "__main__":
    main()
