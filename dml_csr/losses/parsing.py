"""Parsing loss (paper eq. 2): ce_weight * CE + lovasz_weight * Lovasz-softmax.

Paper: ce_weight = lovasz_weight = 1. Release: 0.5 and 0.5, and then its parsing term alone is
doubled twice, i.e. 2 and 2 (the ``released`` preset; docs/losses.md).
"""
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .common import IGNORE_INDEX, masked_mean, pixel_cross_entropy
from .lovasz import lovasz_softmax_flat

__all__ = ["ParsingLoss"]


class ParsingLoss(nn.Module):
    """Eq. 2: CE (mean over valid pixels) and Lovasz-softmax (classes present), weighted.

    Args:
        ce_weight: weight of the cross-entropy term.
        lovasz_weight: weight of the Lovasz-softmax term.
        ignore_index: label value excluded from both terms.
    """

    def __init__(self, ce_weight: float = 1.0, lovasz_weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ce_weight = ce_weight
        self.lovasz_weight = lovasz_weight
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, label: Tensor,
                pixel_ce: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """
        Args:
            logits: (N,K,H,W) parsing logits at the label size.
            label: (N,H,W) int64.
            pixel_ce: optional precomputed per-pixel CE (N,H,W) of these logits, to share it.
        Returns:
            {"parse": weighted sum, "parse_ce": CE, "parse_lovasz": Lovasz}; 0 when all ignored.
        """
        if pixel_ce is None:
            pixel_ce = pixel_cross_entropy(logits, label, self.ignore_index)
        ce = masked_mean(pixel_ce, label != self.ignore_index)
        lovasz = lovasz_softmax_flat(torch.softmax(logits.float(), dim=1), label, self.ignore_index)
        return {"parse": self.ce_weight * ce + self.lovasz_weight * lovasz,
                "parse_ce": ce, "parse_lovasz": lovasz}
