"""Self-distillation terms of the CSR stage (paper eq. 7).

    L_sd = alpha0 * (KL_parse + Lovasz_parse) + alpha1 * KL_binary + alpha2 * KL_category

KL_x = KL(teacher || student) of the softmax predictions, averaged over the valid pixels
(label != 255). Lovasz_parse is the Lovasz-softmax of the student's parsing probabilities against
the HARD label: eq. 7 pairs it with the ground truth, and a Lovasz extension needs a discrete
target to sort errors against.

Soft targets:
- "teacher" (paper): softmax(teacher_logits / T).
- "mixed" (release): softmax(((1 - a) * teacher_logits + a * one_hot(target)) / T) with
  a = 1 / (m + 1), m the cycle index (m = 1 for the first distillation cycle; m = 0 gives a = 1,
  i.e. softmax of the one-hot label alone).
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import IGNORE_INDEX, masked_mean
from .lovasz import lovasz_softmax_flat

__all__ = ["mix_with_one_hot", "DistillationKL", "DistillationParsingLoss"]


def mix_with_one_hot(teacher_logits: Tensor, target: Tensor, weight: float,
                     ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(1 - weight) * teacher_logits + weight * one_hot(target), the release's soft-target logits.

    Args:
        teacher_logits: (N,C,H,W); target: (N,H,W) int64 (ignored pixels get an all-zero one-hot).
    """
    ignored = target == ignore_index
    one_hot = F.one_hot(target.masked_fill(ignored, 0), teacher_logits.shape[1])
    one_hot = one_hot.permute(0, 3, 1, 2).to(teacher_logits.dtype) * (~ignored).unsqueeze(1)
    return (1.0 - weight) * teacher_logits + weight * one_hot


class DistillationKL(nn.Module):
    """Per-pixel KL(softmax(t / T) || softmax(s / T)), times T^2, averaged over valid pixels.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015);
    at the default T = 1 it is 1. The teacher side is detached.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, valid: Tensor) -> Tensor:
        """student_logits, teacher_logits: (N,C,H,W) at the label size; valid: (N,H,W) bool."""
        t = self.temperature
        log_student = F.log_softmax(student_logits.float() / t, dim=1)
        log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
        kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)   # (N,H,W)
        return t * t * masked_mean(kl, valid)


class DistillationParsingLoss(nn.Module):
    """First bracket of eq. 7: kl_weight * KL_parse + lovasz_weight * Lovasz_parse (hard label).

    Paper: kl_weight = lovasz_weight = 1 (alpha0 outside).
    """

    def __init__(self, kl_weight: float = 1.0, lovasz_weight: float = 1.0, temperature: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.kl_weight = kl_weight
        self.lovasz_weight = lovasz_weight
        self.kl = DistillationKL(temperature)
        self.ignore_index = ignore_index

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, label: Tensor) -> Dict[str, Tensor]:
        """Logits (N,K,H,W) at the label size (teacher already mixed if wanted); label (N,H,W).

        Returns {"parse": weighted sum, "parse_kl": KL, "parse_lovasz": Lovasz}.
        """
        kl = self.kl(student_logits, teacher_logits, label != self.ignore_index)
        lovasz = lovasz_softmax_flat(torch.softmax(student_logits.float(), dim=1), label,
                                     self.ignore_index)
        return {"parse": self.kl_weight * kl + self.lovasz_weight * lovasz,
                "parse_kl": kl, "parse_lovasz": lovasz}
