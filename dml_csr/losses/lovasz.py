"""Lovasz-softmax loss (Berman, Triki and Blaschko, CVPR 2018), flat over all pixels of a batch.

For every class c, the Jaccard loss of the set M_c of mispredicted pixels is the submodular set
function  Delta_c(M) = |M| / |F_c u M|  (F_c: the pixels labelled c). Its Lovasz extension,
evaluated on the vector of errors m_i = |[y_i == c] - p_i(c)|, is

    sum_k m_(k) * (Delta_c({(1)..(k)}) - Delta_c({(1)..(k-1)})),

with (1), (2), ... the pixels sorted by decreasing error. The loss averages it over the classes
present in the batch (ignored pixels excluded).
"""
import torch
from torch import Tensor, nn

from .common import IGNORE_INDEX, safe_divide

__all__ = ["lovasz_softmax_flat", "LovaszSoftmaxLoss"]


def _jaccard_increments(fg_sorted: Tensor) -> Tensor:
    """Delta_c of each prefix minus Delta_c of the previous prefix, per row.

    Args:
        fg_sorted: (C, P) float, 1 where the k-th pixel by decreasing error belongs to class c.
    Returns:
        (C, P) increments g_k of the Jaccard loss along the sorted order.
    """
    n_fg = fg_sorted.sum(dim=1, keepdim=True)                 # |F_c|
    covered_fg = torch.cumsum(fg_sorted, dim=1)               # |F_c n prefix|
    covered_bg = torch.cumsum(1.0 - fg_sorted, dim=1)         # |prefix \ F_c|
    # prefix of length k: intersection of the prediction with F_c is what the prefix did not take.
    jaccard_loss = 1.0 - (n_fg - covered_fg) / (n_fg + covered_bg)  # denominator >= 1
    return torch.diff(jaccard_loss, dim=1, prepend=torch.zeros_like(jaccard_loss[:, :1]))


def lovasz_softmax_flat(probs: Tensor, label: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Lovasz-softmax over every pixel of the batch, averaged over the classes present.

    Args:
        probs: (N,C,H,W) softmax probabilities.
        label: (N,H,W) int64 class ids, ``ignore_index`` = ignore.
    Returns:
        Scalar loss; 0 (still attached to ``probs``) when no pixel is valid.
    """
    num_classes = probs.shape[1]
    probs = probs.float().transpose(0, 1).reshape(num_classes, -1)      # (C, P)
    label = label.reshape(-1)                                             # (P,)
    valid = label != ignore_index
    classes = torch.arange(num_classes, device=label.device).unsqueeze(1)
    fg = ((label.unsqueeze(0) == classes) & valid).float()                # (C, P)
    # Ignored pixels get error 0 and fg 0: they sort behind every positive error, and whatever
    # increment they receive is multiplied by their zero error, so they change nothing.
    errors = (fg - probs).abs() * valid
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    per_class = (errors_sorted * _jaccard_increments(fg.gather(1, order))).sum(dim=1)  # (C,)
    present = (fg.sum(dim=1) > 0).float()
    return safe_divide((per_class * present).sum(), present.sum())


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax on logits: softmax over the class dimension, then :func:`lovasz_softmax_flat`."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        return lovasz_softmax_flat(torch.softmax(logits.float(), dim=1), label, self.ignore_index)
