"""Convolution building blocks of the DML-CSR network, with the release's module names.

- ``upsample``: bilinear resize with ``align_corners=True`` (the release's everywhere);
- ``conv_abn``: conv + ABN as ``Sequential`` (keys ``.0.weight`` / ``.1.*``);
- ``Bottleneck``: the ResNet bottleneck with ABN (keys ``conv{1,2,3}``, ``bn{1,2,3}``).

``NormLayer`` is what every block takes as ``norm``: ``channels -> nn.Module`` (an ABN).
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .abn import ABN, running_stats_frozen

__all__ = ["NormLayer", "upsample", "conv_abn", "Bottleneck"]

NormLayer = Callable[[int], nn.Module]


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` with ``align_corners=True``."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def conv_abn(cin: int, cout: int, kernel: int, norm: NormLayer, stride: int = 1,
             dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Sequential:
    """conv (bias-free by default) + ABN, as ``Sequential`` so keys read ``.0.weight`` / ``.1.*``."""
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, groups=groups,
                  bias=bias),
        norm(cout))


def checkpoint_stage(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` with activation checkpointing: only ``x`` is kept, and the forward pass runs
    again in the backward pass, without updating the ABN running statistics a second time."""
    calls = []

    def run(inp):
        if calls:                                   # the recomputation
            with running_stats_frozen():
                return layer(inp)
        calls.append(1)
        return layer(inp)
    return checkpoint(run, x, use_reentrant=False)


class Bottleneck(nn.Module):
    """ResNet bottleneck; every ABN (including ``bn3``, before the residual add) applies
    leaky_relu(0.01) as in the release, followed by ReLU where the release applies one."""

    expansion = 4
    # norm folding (deploy/fold.py): (conv, norm, a ReLU follows the norm); activations that
    # only ever see a temporary (safe in place at inference)
    folded_norms = (("conv1", "bn1", True), ("conv2", "bn2", True), ("conv3", "bn3", False))
    temporary_activations = ("relu",)

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, norm: NormLayer = ABN):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.training and torch.is_grad_enabled() and getattr(self.bn3, "_use_memory", bool)():
            # memory-saving training: bn3's output (4x the channels, used only by the add) is
            # recomputed from conv3's input in the backward pass instead of kept
            out = checkpoint_stage(self._expand, out)
        else:
            out = self._expand(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)
