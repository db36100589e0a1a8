"""The trainable GRAD head: coordinates, continuous grids, fusion decoder, refinement.

Input is the frozen backbone's feature map x (B x C x S x S). The head works on `prepare(x)`,
the features in its working space (x itself, or x standardised per channel when the head is
configured so); `pair(x)` gives that target z and the refined reconstruction x_hat of it, the
two the loss and the anomaly map compare (see `model.net.scoring`). Callers use `pair`, so no
path can compare a reconstruction with features of the other space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.net.config import HeadConfig
from model.net.layers import BasicBlock, MBV3Block, init_weights, read_global_grid, read_local_grid
from model.net.refinement import refine
from model.net.standardise import standardise


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
        if cfg.standardise:  # buffers, so they travel in the checkpoint with the weights
            self.register_buffer("feature_mean", torch.zeros(c))
            self.register_buffer("feature_std", torch.ones(c))

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training features' per-channel statistics (`channel_statistics`)."""
        if not self.cfg.standardise:
            raise ValueError("this head does not standardise its features")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features in the head's working space."""
        if not self.cfg.standardise:
            return x
        return standardise(x, self.feature_mean.to(x.dtype), self.feature_std.to(x.dtype))

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

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """The normal reconstruction f_n of prepared features z, before refinement."""
        local, glob = self.coordinates(z)
        f_local = read_local_grid(self.local_grid, local)
        f_global = read_global_grid(
            self.global_grid, glob, self.cfg.channels, self.cfg.feature_size
        )
        fused = torch.cat([f_global, f_local], dim=1)
        if self.cfg.read_dropout > 0:  # the noisy bottleneck: training only, identity in eval
            fused = F.dropout(fused, self.cfg.read_dropout, training=self.training)
        return self.decoder(fused)

    def refine(self, f_n: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_hat from a reconstruction f_n, with this head's refinement settings."""
        return refine(
            f_n,
            x,
            self.cfg.refine_threshold,
            self.cfg.refine_weight_mask,
            self.cfg.refine_weight_cos,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat of prepared features z (`prepare`); `pair` is the call for raw features."""
        return self.refine(self.reconstruct(z), z)

    def pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, x_hat) for the backbone's features x: the target in the working space and its
        refined reconstruction, what the loss and the anomaly map compare."""
        z = self.prepare(x)
        return z, self(z)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
