"""Stand-ins for trained weights, for parity tests and speed benchmarks without a checkpoint.

A freshly initialised network is a poor stand-in for a trained one when checking that an
inference rewrite (norm folding, an ONNX export, lower precision) keeps the outputs: its norms hold the
identity statistics (folding them is trivial), the DDGCN's fusion scalars are 0 (the graph
branches contribute nothing) and, with random running statistics, activations shrink or grow layer
by layer until the logits hardly depend on the image. :func:`randomise_norms` makes every norm a
non-trivial affine map; :func:`calibrate_norms` then sets the running statistics to those of real
activations (one training-mode pass), so that every layer sees unit-scale inputs as in a trained
network and an error anywhere reaches the logits.
"""
from typing import Optional

import torch
import torch.nn as nn

from ..layers.abn import ABN

__all__ = ["randomise_norms", "calibrate_norms"]

_NORMS = (ABN, nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every ABN / BatchNorm (about half of
    the weights negative, which ABN's ``|w| + eps`` must handle), and the DDGCN fusion scalars
    ``gamma`` = 0.7, ``gamma1`` = 0.5 (0 at initialisation). In place; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _NORMS):
            c = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            m.weight.copy_(torch.randn(c, generator=g))
            m.bias.copy_(torch.randn(c, generator=g) * 0.3)
        if isinstance(getattr(m, "gamma", None), nn.Parameter):
            m.gamma.fill_(0.7)
        if isinstance(getattr(m, "gamma1", None), nn.Parameter):
            m.gamma1.fill_(0.5)
    return model


@torch.no_grad()
def calibrate_norms(model: nn.Module, images: torch.Tensor,
                    weight_scale: Optional[float] = None) -> nn.Module:
    """Running statistics of every norm := the batch statistics of ``images`` (one forward pass in
    training mode with momentum 1; the model is left in eval mode). ``weight_scale`` rescales
    the norms' weights first (e.g. 0.5 keeps deep residual stacks from growing)."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS)]
    saved = [m.momentum for m in norms]
    if weight_scale is not None:
        for m in norms:
            m.weight.mul_(weight_scale)
    for m in norms:
        m.momentum = 1.0
    model.train()
    try:
        model(images)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model
