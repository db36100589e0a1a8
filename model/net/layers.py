"""Building blocks of the GRAD head: grid reads, decoder blocks, initialisation.

Kept free of configuration so each piece can be tested on its own and reused by every decoder
variant in `model.net.config.DECODERS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def read_local_grid(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Read a shared C x g x g grid at one coordinate per position.

    grid: C x g x g; coords: B x 2 x H x W in (-1, 1) as (x, y). Returns B x C x H x W.
    Bilinear, align_corners=False, zero padding, as the spec fixes them.
    """
    b = coords.shape[0]
    g = grid.unsqueeze(0).expand(b, -1, -1, -1)
    return F.grid_sample(
        g, coords.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=False
    )


def read_global_grid(
    grid: torch.Tensor, coords: torch.Tensor, channels: int, size: int
) -> torch.Tensor:
    """Read a grid whose every node is a whole C x size x size map, once per image.

    grid: 1 x (C*size*size) x g x g; coords: B x 2. The read is reshaped channel-major to
    B x C x size x size. One grid_sample over a 1 x B sampling grid reads all images at once.
    """
    b = coords.shape[0]
    out = F.grid_sample(
        grid, coords.view(1, b, 1, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # 1 x (C*H*W) x B x 1
    return out[0, :, :, 0].t().reshape(b, channels, size, size)


class BasicBlock(nn.Module):
    """ResNet basic block at constant width (GRAD's first decoder)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + x)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excitation: reduction 4, ReLU inside, hard-sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.relu(self.reduce(s)))
        return x * F.hardsigmoid(s)


class MBV3Block(nn.Module):
    """MobileNetV3 bottleneck at constant width, in the order the spec lists.

    1x1 expand to E, BN, h-swish, depthwise 3x3, BN, SE, h-swish, 1x1 project, BN, residual.
    """

    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(channels, expanded, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(expanded)
        self.conv_dw = nn.Conv2d(expanded, expanded, 3, padding=1, groups=expanded, bias=False)
        self.bn2 = nn.BatchNorm2d(expanded)
        self.se = SqueezeExcite(expanded)
        self.conv_pwl = nn.Conv2d(expanded, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.bn1(self.conv_pw(x)))
        y = self.bn2(self.conv_dw(y))
        y = F.hardswish(self.se(y))
        y = self.bn3(self.conv_pwl(y))
        return y + x


def init_weights(module: nn.Module) -> None:
    """Spec initialisation: conv/linear N(0, 0.01) with zero bias; BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
