"""Small random networks shared by the engine tests."""
from __future__ import annotations

import torch
from torch import nn

from LiverTumorLRPLib.unet import UNet3D, UNetConfig


def randomise_norms(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give BatchNorm/InstanceNorm layers non-trivial statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d)):
            if m.affine:
                m.weight.data = torch.rand(m.weight.shape, generator=generator) + 0.5
                m.bias.data = (torch.rand(m.bias.shape, generator=generator) - 0.5) * 0.4
            if m.running_mean is not None:
                m.running_mean.data = (torch.rand(m.running_mean.shape, generator=generator) - 0.5)
                m.running_var.data = torch.rand(m.running_var.shape, generator=generator) + 0.5
    return model


def random_unet(seed: int = 0, depth: int = 2, base: int = 8, norm: str = "batch",
                upsampling: str = "transpose", dtype=torch.float64, zero_bias: bool = False,
                bn_eps: float | None = None) -> UNet3D:
    """``bn_eps=0`` for comparisons with zennit: its canonizer turns a merged BatchNorm into
    ``x / sqrt(1 + eps)`` rather than the identity, a relative error of eps/2 per layer."""
    torch.manual_seed(seed)
    model = UNet3D(UNetConfig(depth=depth, base_channels=base, norm=norm, upsampling=upsampling))
    randomise_norms(model, torch.Generator().manual_seed(seed + 1))
    if bn_eps is not None:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.eps = bn_eps
    if zero_bias:
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.data.zero_()
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.data.zero_()
    return model.eval().to(dtype)


def random_input(seed: int = 0, shape=(8, 8, 8), dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, 6) + tuple(shape), generator=g).to(dtype)
