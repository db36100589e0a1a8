"""The reference optimisation of the head: AdamW with two learning rates (grids and the rest),
a per-epoch schedule, gradient clipping, and selection of the epoch with the lowest held-out
reconstruction loss."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from model.net.config import TrainConfig
from model.net.grad import GRADHead
from model.net.refinement import reconstruction_loss

SCHEDULES = ("step", "cosine")

History = list[dict[str, float]]
OnEpoch = Callable[[int, dict[str, torch.Tensor], History], None]


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
        z, x_hat = head.pair(x)
        total += float(reconstruction_loss(x_hat, z)) * len(x)
    return total / len(feats)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule for both parameter groups (they keep their ratio)."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_epochs, gamma=cfg.step_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}")


def _optimizer(head: GRADHead, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [
            {"params": head.grid_parameters(), "lr": cfg.lr_grid},
            {"params": head.other_parameters(), "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )


def _epoch(
    head: GRADHead,
    feats: torch.Tensor,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator,
) -> tuple[float, int]:
    """One pass over the training features in a seeded order: (summed loss, images seen)."""
    head.train()
    seen, running = 0, 0.0
    order = torch.randperm(len(feats), generator=gen)
    for i in range(0, len(feats), cfg.batch_size):
        idx = order[i : i + cfg.batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a single sample
            continue
        x = feats[idx].to(device, non_blocking=True)
        z, x_hat = head.pair(x)
        loss = reconstruction_loss(x_hat, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.clip_norm)
        opt.step()
        running += loss.item() * len(idx)
        seen += len(idx)
    return running, seen


def fit_head(
    head: GRADHead,
    feats: torch.Tensor,
    held: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator,
    on_epoch: OnEpoch | None = None,
) -> tuple[dict[str, torch.Tensor], History]:
    """The reference optimisation; returns the best state by held-out loss and the history.

    `on_epoch(epoch, best_state_so_far, history)` runs after every epoch (snapshots).
    """
    opt = _optimizer(head, cfg)
    sched = build_scheduler(opt, cfg)
    best, best_state, history = float("inf"), None, []
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        running, seen = _epoch(head, feats, opt, cfg, device, gen)
        sched.step()
        row = {"epoch": epoch + 1, "loss": running / max(seen, 1)}
        row["seconds"] = time.perf_counter() - t0
        if (epoch + 1) % cfg.select_every == 0 or epoch + 1 == cfg.epochs:
            row["heldout_loss"] = heldout_loss(head, held, device)
            if row["heldout_loss"] < best:
                best = row["heldout_loss"]
                best_state = copy.deepcopy(head.state_dict())
                row["selected"] = 1.0
            bar.set_postfix(loss=f"{row['loss']:.4f}", heldout=f"{row['heldout_loss']:.4f}")
        else:
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        history.append(row)
        if on_epoch is not None and best_state is not None:
            on_epoch(epoch + 1, best_state, history)
    assert best_state is not None
    return best_state, history


def untrained_history(head: GRADHead, held: torch.Tensor, device: torch.device) -> History:
    """The history of a run that trains nothing (`epochs == 0`): the initial head, selected."""
    return [
        {
            "epoch": 0,
            "loss": float("nan"),
            "seconds": 0.0,
            "heldout_loss": heldout_loss(head, held, device),
            "selected": 1.0,
        }
    ]
