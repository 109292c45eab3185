"""Context embedding modules selectable by name (the paper's DDGCN and the ablations of Table 5)."""
from typing import Callable

import torch.nn as nn

from .dml_csr import DDGCNContext

__all__ = ["build_context", "CONTEXT_MODULES"]

CONTEXT_MODULES = ("ddgcn",)


def build_context(name: str, in_channels: int, channels: int, norm: Callable[[int], nn.Module]) -> nn.Module:
    """Build the context module ``name`` on C5 (``in_channels``); it exposes ``out_channels``."""
    if name == "ddgcn":
        return DDGCNContext(in_channels, channels, norm)
    raise ValueError(f"unknown context module {name!r}; choose one of {CONTEXT_MODULES}")
