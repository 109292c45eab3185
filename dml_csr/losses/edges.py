"""Edge prediction losses: binary edge weighted CE and category edge weighted CE (eq. 5 terms b, c).

Both are class-weighted cross-entropies with PyTorch's weighted-mean normalisation,

    L = sum_p w[y_p] * CE_p / sum_p w[y_p]     (p over the valid pixels; L = 0 if the sum is 0),

with weights recomputed from every batch's target:
- balanced (binary edge; project default for the category edge): with n_0 the pixels of target 0
  ("no edge") and n_e the pixels of any other target, w[0] = n_e / (n_0 + n_e) and
  w[j>0] = n_0 / (n_0 + n_e). This equals 0.5 * (mean CE over edge pixels) + 0.5 * (mean CE over
  non-edge pixels) when both sets are non-empty, and 0 when the batch has no edge pixel.
- frequency (the release's category edge weighting, docs/divergences.md): w[j] = n_j / n_valid, each
  class weighted by its own pixel frequency in the batch, so that
  L = sum_j n_j * S_j / sum_j n_j^2 with S_j the summed CE over pixels of class j.
"""
import torch
from torch import Tensor, nn

from .common import IGNORE_INDEX, pixel_cross_entropy, safe_divide

__all__ = ["class_weighted_cross_entropy", "class_counts", "balanced_edge_weights",
           "frequency_weights", "BinaryEdgeLoss", "CategoryEdgeLoss"]


def class_counts(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixel count per class (num_classes,) over the valid pixels of ``target``."""
    target = target.reshape(-1)
    target = target.masked_fill(target == ignore_index, num_classes)   # ignored -> extra bin
    return torch.bincount(target, minlength=num_classes + 1)[:num_classes].float()


def balanced_edge_weights(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Class 0 weighted by the edge fraction, every other class by the non-edge fraction."""
    counts = class_counts(target, num_classes, ignore_index)
    n_non_edge, n_edge = counts[0], counts[1:].sum()
    total = n_non_edge + n_edge
    weights = safe_divide(n_non_edge, total).repeat(num_classes)
    weights[0] = safe_divide(n_edge, total)
    return weights


def frequency_weights(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Each class weighted by its pixel frequency n_j / n_valid (the release)."""
    counts = class_counts(target, num_classes, ignore_index)
    return safe_divide(counts, counts.sum())


def class_weighted_cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor,
                                 ignore_index: int = IGNORE_INDEX) -> Tensor:
    """sum_p w[y_p] CE_p / sum_p w[y_p] over valid pixels; 0 when every weight is 0.

    Args:
        logits: (N,C,H,W); target: (N,H,W) int64; class_weights: (C,).
    """
    pixel_ce = pixel_cross_entropy(logits, target, ignore_index)
    valid = target != ignore_index
    pixel_weight = class_weights[target.masked_fill(~valid, 0)] * valid
    return safe_divide((pixel_weight * pixel_ce).sum(), pixel_weight.sum())


class BinaryEdgeLoss(nn.Module):
    """Binary edge weighted CE: edge pixels weighted by the non-edge fraction and vice versa."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, edge: Tensor) -> Tensor:
        """logits (N,2,H,W) at the label size; edge (N,H,W) int64 in {0, 1, ignore}."""
        with torch.no_grad():
            weights = balanced_edge_weights(edge, 2, self.ignore_index)
        return class_weighted_cross_entropy(logits, edge, weights, self.ignore_index)


class CategoryEdgeLoss(nn.Module):
    """Category edge weighted CE.

    Args:
        weighting: "balanced" (project default: target 0 vs every edge class, as the binary edge;
            background-edge pixels have target 0 and count as non-edge) or "frequency" (the
            release: each class weighted by its pixel frequency).
    """

    WEIGHTINGS = ("balanced", "frequency")

    def __init__(self, weighting: str = "balanced", ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"category edge weighting must be one of {self.WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, cat_edge: Tensor) -> Tensor:
        """logits (N,K,H,W) at the label size; cat_edge (N,H,W) int64 class id on edges, 0 elsewhere."""
        weight_fn = balanced_edge_weights if self.weighting == "balanced" else frequency_weights
        with torch.no_grad():
            weights = weight_fn(cat_edge, logits.shape[1], self.ignore_index)
        return class_weighted_cross_entropy(logits, cat_edge, weights, self.ignore_index)
