"""Context embedding modules on C5, selectable by name: the paper's DDGCN and the ablations of
Tables 4 and 5 (docs/ablations.md).

==================  =====================================================================
name                module
==================  =====================================================================
``ddgcn``           DDGCNContext, the released DDGCN (the paper's method)
``baseline``        conv3x3 in -> channels // 2 + ABN (Tables 4-6 "Baseline"; 256 at full width)
``psp``             PSP as in EAGRNet: pools 1, 2, 3, 6 -> conv1x1 + ABN -> up, concat C5, conv3x3
``psp_pooling``     the same with the pooling removed (every branch at full resolution)
``dgcnet``          DGCNet (Zhang et al., BMVC 2019): DDGCN's graph with fixed relu(a + b) fusions
``dgcnet_pooling``  DGCNet whose spatial branch does not downsample (stride-1 depthwise convs)
==================  =====================================================================

``in_channels`` (C5) and ``channels`` come already scaled by DMLCSR's ``width_mult`` (2048 and 512
at full width); every module exposes ``out_channels``, the input width of the parsing head.
"""
from typing import Sequence

import torch
import torch.nn as nn

from .abn import ABN
from .blocks import NormLayer, conv_abn, upsample
from .gcn import DDualGCN

__all__ = ["build_context", "CONTEXT_MODULES", "DDGCNContext", "BaselineContext", "PSPContext",
           "DGCNetContext"]

CONTEXT_MODULES = ("ddgcn", "baseline", "psp", "psp_pooling", "dgcnet", "dgcnet_pooling")


class DDGCNContext(nn.Module):
    """Context embedding on C5: conva -> DDualGCN -> convb, then bottleneck over concat(C5, out)."""

    def __init__(self, in_channels: int = 2048, channels: int = 512, norm: NormLayer = ABN):
        super().__init__()
        self.conva = conv_abn(in_channels, channels, 3, norm)
        self.dualgcn = DDualGCN(channels, norm=norm)
        self.convb = conv_abn(channels, channels, 3, norm)
        self.bottleneck = conv_abn(in_channels + channels, channels, 3, norm)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convb(self.dualgcn(self.conva(x)))
        return self.bottleneck(torch.cat([x, out], dim=1))


class BaselineContext(nn.Module):
    """The ablation baseline: the context module replaced by conv3x3 -> channels // 2 + ABN."""

    def __init__(self, in_channels: int = 2048, channels: int = 512, norm: NormLayer = ABN):
        super().__init__()
        self.conv = conv_abn(in_channels, channels // 2, 3, norm)
        self.out_channels = channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PSPContext(nn.Module):
    """Pyramid pooling as in EAGRNet (its ``PSPModule``; key names follow it).

    Each of the ``sizes`` branches is [adaptive average pool to size x size] -> conv1x1 in ->
    channels + ABN, upsampled bilinearly (align_corners=True) back to C5's size; the branches and
    C5 are concatenated (branches first) and fused by conv3x3 -> channels + ABN.

    Args:
        pooling: False for "PSP-pooling": the pool of every branch is an ``nn.Identity`` (same
            keys and parameters, every branch at full resolution).
    """

    def __init__(self, in_channels: int = 2048, channels: int = 512, norm: NormLayer = ABN,
                 sizes: Sequence[int] = (1, 2, 3, 6), pooling: bool = True):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size) if pooling else nn.Identity(),
                          nn.Conv2d(in_channels, channels, 1, bias=False), norm(channels))
            for size in sizes)
        self.bottleneck = conv_abn(in_channels + len(sizes) * channels, channels, 3, norm)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        priors = [upsample(stage(x), size) for stage in self.stages]
        return self.bottleneck(torch.cat(priors + [x], dim=1))


class DGCNetContext(DDGCNContext):
    """DGCNet's head (conva -> dual GCN -> convb, bottleneck over concat(C5, out)): the DDGCN
    context with the dual-graph module's fusions fixed (``fusion="fixed"``, no gamma parameters).

    Args:
        local_stride: 2 = DGCNet (three stride-2 depthwise convs before the spatial graph);
            1 = "DGCNet-pooling" (the spatial graph at full resolution).
    """

    def __init__(self, in_channels: int = 2048, channels: int = 512, norm: NormLayer = ABN,
                 local_stride: int = 2):
        super().__init__(in_channels, channels, norm)
        self.dualgcn = DDualGCN(channels, norm=norm, fusion="fixed", local_stride=local_stride)


def build_context(name: str, in_channels: int, channels: int, norm: NormLayer) -> nn.Module:
    """Build the context module ``name`` on C5 (``in_channels``); it exposes ``out_channels``."""
    if name == "ddgcn":
        return DDGCNContext(in_channels, channels, norm)
    if name == "baseline":
        return BaselineContext(in_channels, channels, norm)
    if name in ("psp", "psp_pooling"):
        return PSPContext(in_channels, channels, norm, pooling=name == "psp")
    if name in ("dgcnet", "dgcnet_pooling"):
        return DGCNetContext(in_channels, channels, norm, local_stride=2 if name == "dgcnet" else 1)
    raise ValueError(f"unknown context module {name!r}; choose one of {CONTEXT_MODULES}")
