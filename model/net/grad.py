"""The trainable GRAD head: coordinates, continuous grids, fusion decoder, refinement.

Input is the frozen backbone's feature map x (B x C x S x S); output is the refined
reconstruction x_hat from which the anomaly map is measured (see `model.net.scoring`).
"""

from __future__ import annotations

import torch
from torch import nn

from model.net.config import HeadConfig
from model.net.layers import BasicBlock, MBV3Block, init_weights, read_global_grid, read_local_grid
from model.net.refinement import refine


def build_decoder(cfg: HeadConfig) -> nn.Sequential:
    """Stride-1 CNN at 2C channels, then a 1x1 'recover' conv 2C -> C without bias."""
    width = 2 * cfg.channels
    spec = cfg.decoder
    if spec.block == "basic":
        blocks = [BasicBlock(width) for _ in range(spec.depth)]
    elif spec.block == "mbv3":
        expanded = round(spec.expand_ratio * cfg.channels)
        blocks = [MBV3Block(width, expanded) for _ in range(spec.depth)]
    else:  # pragma: no cover - guarded by HeadConfig
        raise ValueError(spec.block)
    return nn.Sequential(*blocks, nn.Conv2d(width, cfg.channels, 1, bias=False))


class GRADHead(nn.Module):
    """Continuous local and global normal memories read at learned coordinates."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, s = cfg.channels, cfg.feature_size
        # Local coordinates: per-position MLP as 1x1 convs, tanh-bounded to (-1, 1).
        self.local_coord = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.Tanh(), nn.Conv2d(c, 2, 1), nn.Tanh()
        )
        # Global coordinate: one per image from the pooled features.
        self.global_coord = nn.Sequential(nn.Linear(c, c), nn.Tanh(), nn.Linear(c, 2), nn.Tanh())
        self.local_grid = nn.Parameter(torch.empty(c, cfg.local_grid, cfg.local_grid))
        self.global_grid = nn.Parameter(torch.empty(1, c * s * s, cfg.global_grid, cfg.global_grid))
        self.decoder = build_decoder(cfg)
        init_weights(self)
        nn.init.xavier_normal_(self.local_grid)
        nn.init.xavier_normal_(self.global_grid)

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.local_grid, self.global_grid]

    def other_parameters(self) -> list[nn.Parameter]:
        grids = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in grids]

    def coordinates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.local_coord(x)
        # Coordinate jittering: training only, local coordinates only, decided once per batch.
        if self.training and self.cfg.jitter_prob > 0 and torch.rand(()) < self.cfg.jitter_prob:
            local = local + torch.randn_like(local) * self.cfg.jitter_std
        glob = self.global_coord(x.mean(dim=(2, 3)))
        return local, glob

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The normal reconstruction f_n, before refinement."""
        local, glob = self.coordinates(x)
        f_local = read_local_grid(self.local_grid, local)
        f_global = read_global_grid(
            self.global_grid, glob, self.cfg.channels, self.cfg.feature_size
        )
        return self.decoder(torch.cat([f_global, f_local], dim=1))

    def refine(self, f_n: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_hat from a reconstruction f_n, with this head's refinement settings."""
        return refine(
            f_n,
            x,
            self.cfg.refine_threshold,
            self.cfg.refine_weight_mask,
            self.cfg.refine_weight_cos,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.reconstruct(x), x)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
