"""3D u-net after Cicek et al. 2016, with its config saved as JSON beside safetensors weights.

Per level: two 3x3x3 convolutions, each followed by normalisation and ReLU; 2x2x2
max-pooling down; transposed convolution (or trilinear up-sampling and a 1x1x1
convolution) up; skip concatenation; a final 1x1x1 convolution to the class logits.
Unlike the paper's valid convolutions we pad ("same"), so the output grid equals the
input grid; every spatial size must be divisible by ``2**depth``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .sequences import CLASS_NAMES, SEQUENCE_KEYS

NORMS = ("batch", "instance", "none")
UPSAMPLINGS = ("transpose", "trilinear")


@dataclass
class UNetConfig:
    in_channels: int = 6
    out_channels: int = 2
    depth: int = 3                 # number of 2x down-samplings
    base_channels: int = 16        # channels at the first level, doubled per level
    norm: str = "batch"            # batch | instance | none
    upsampling: str = "transpose"  # transpose | trilinear
    dropout: float = 0.0
    sequences: list = field(default_factory=lambda: list(SEQUENCE_KEYS))
    classes: list = field(default_factory=lambda: list(CLASS_NAMES))
    architecture: str = "UNet3D"
    patch_size: Optional[list] = None   # sliding-window patch (z, y, x) on the network grid
    spacing: Optional[list] = None      # (z, y, x) mm the model was trained at

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        if self.depth < 1 or self.base_channels < 1:
            raise ValueError("depth and base_channels must be positive")

    @property
    def divisor(self) -> int:
        return 2 ** self.depth


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """(conv 3x3x3 -> norm -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int, norm: str, dropout: float = 0.0):
        layers = [nn.Conv3d(cin, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=False),
                  nn.Conv3d(cout, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=False)]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int, upsampling: str):
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose3d(cin, cout, 2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                                    nn.Conv3d(cin, cout, 1))

    def forward(self, x):
        return self.up(x)


class UNet3D(nn.Module):
    """3D u-net: ``(N, in_channels, D, H, W) -> (N, out_channels, D, H, W)`` class logits."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else UNetConfig(**kwargs)
        c = self.config
        widths = [c.base_channels * 2 ** i for i in range(c.depth + 1)]
        self.encoders = nn.ModuleList()
        cin = c.in_channels
        for w in widths[:-1]:
            self.encoders.append(DoubleConv(cin, w, c.norm))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], c.norm, c.dropout)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(Up(w_low, w, c.upsampling))
            self.decoders.append(DoubleConv(2 * w, w, c.norm))
        self.head = nn.Conv3d(widths[0], c.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


_MOVED = ("save_model", "load_unet")


def __getattr__(name):
    """Deprecated: saving and loading moved to :mod:`.models` (this module is the architecture only)."""
    if name in _MOVED:
        import warnings

        from . import models

        warnings.warn(f"LiverTumorLRPLib.unet.{name} is deprecated; use LiverTumorLRPLib.models.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
