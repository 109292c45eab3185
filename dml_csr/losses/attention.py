"""Edge attention losses (paper eqs. 3 and 4): the parsing CE re-weighted on edge pixels.

Both take the per-pixel parsing cross-entropy map (N,H,W) of the parsing logits against the label
(0 at ignored pixels, see ``common.pixel_cross_entropy``) and only the edge LABELS, so they also
apply to models without an edge head.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .common import IGNORE_INDEX, safe_divide

__all__ = ["BinaryEdgeAttentionLoss", "CategoryEdgeAttentionLoss"]


class BinaryEdgeAttentionLoss(nn.Module):
    """Eq. 3: (1/N) sum_i (1/b_i) sum_{p in E_i} CE_p.

    E_i are the binary-edge pixels of image i with a valid label, b_i = |E_i|. An image without
    edge pixels contributes 0 and still counts in N (the 1/N of eq. 3 is the batch size).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, pixel_ce: Tensor, label: Tensor, edge: Tensor) -> Tensor:
        """pixel_ce, label, edge: (N,H,W)."""
        on_edge = ((edge == 1) & (label != self.ignore_index)).float()
        per_image = safe_divide((pixel_ce * on_edge).sum(dim=(1, 2)), on_edge.sum(dim=(1, 2)))
        return per_image.mean()


class CategoryEdgeAttentionLoss(nn.Module):
    """Category edge attention loss.

    mode="eq4" (paper, eq. 4): (1/(N*C)) sum_i sum_j (w_j / c_ij) sum_{p in E_ij} CE_p, where E_ij are
    the pixels of image i on a binary edge (edge == 1) whose category edge id is j, c_ij = |E_ij|,
    and absent (i, j) pairs contribute 0. Class 0 edges (background side of a boundary) carry id 0
    in ``cat_edge`` exactly like non-edge pixels, so the binary edge map tells them apart. With
    ``include_background=True`` j runs over all K classes and C = K; otherwise j = 1..K-1 and
    C = K - 1.

    mode="released" (the release's ``Criterion``): the CE of every category-edge pixel multiplied
    by its class id value, divided by the number of category-edge pixels of ITS image, summed
    over the batch and divided by N:
    (1/N) sum_i sum_{p in i: cat_p > 0} cat_p * CE_p / #{p in i: cat_p > 0}. An image without
    category-edge pixels contributes 0 (the release divides 0 by 0 there). ``class_weights``,
    ``include_background`` and ``edge`` play no part in it (class 0 edges get factor 0 anyway).

    Args:
        mode: "eq4" or "released" (the values of the ``loss.category_attention_mode`` key).
        class_weights: w_j per class (length K), default all 1; lifts tail classes in eq. 4.
        include_background: count class 0 edges in eq. 4 (default True).
    """

    MODES = ("eq4", "released")

    def __init__(self, mode: str = "eq4", class_weights: Optional[Sequence[float]] = None,
                 include_background: bool = True, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"category attention mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.include_background = include_background
        self.ignore_index = ignore_index
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, pixel_ce: Tensor, label: Tensor, edge: Optional[Tensor], cat_edge: Tensor,
                num_classes: int) -> Tensor:
        """pixel_ce, label, edge, cat_edge: (N,H,W); num_classes: K."""
        valid = (label != self.ignore_index) & (cat_edge != self.ignore_index)
        if self.mode == "released":
            on_edge = (valid & (cat_edge > 0)).float()
            weighted = (pixel_ce * cat_edge.float() * on_edge).sum(dim=(1, 2))
            return safe_divide(weighted, on_edge.sum(dim=(1, 2))).mean()

        if edge is None:
            raise ValueError("eq. 4 needs the binary edge map to separate background edges")
        weights = self.class_weights
        if weights is None:
            weights = pixel_ce.new_ones(num_classes)
        elif weights.numel() != num_classes:
            raise ValueError(f"class_weights has {weights.numel()} entries for {num_classes} classes")
        else:
            weights = weights.to(pixel_ce.device)   # the loss module is often left on the CPU
        on_edge = (valid & (edge == 1)).float()
        # flat index i * K + j of the pair (i, j) each pixel belongs to; off-edge pixels add 0
        image = torch.arange(cat_edge.shape[0], device=cat_edge.device).view(-1, 1, 1)
        pair = (image * num_classes + cat_edge.masked_fill(on_edge == 0, 0)).flatten()
        ce_sum = pixel_ce.new_zeros(cat_edge.shape[0] * num_classes)
        ce_sum = ce_sum.scatter_add(0, pair, (pixel_ce * on_edge).flatten())       # sum over E_ij
        count = torch.zeros_like(ce_sum).scatter_add_(0, pair, on_edge.flatten())  # c_ij
        ce_sum, count = ce_sum.view(-1, num_classes), count.view(-1, num_classes)
        per_pair = safe_divide(ce_sum, count) * weights                    # (N, K)
        if not self.include_background:
            per_pair = per_pair[:, 1:]
        return per_pair.sum() / per_pair.numel()                          # 1/(N*C)
