"""Helpers shared by the loss families: output unpacking, resizing, per-pixel CE, safe means."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.schemas import IGNORE_INDEX
from ..layers.blocks import upsample
from ..models.contract import ParsingOutput

__all__ = ["IGNORE_INDEX", "split_outputs", "resize_logits", "pixel_cross_entropy", "masked_mean",
           "safe_divide"]

ModelOutputs = Union[Tensor, Sequence[Optional[Tensor]]]


def split_outputs(outputs: ModelOutputs) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """A model's outputs as (parsing, binary edge, category edge) logits.

    Takes the ``ParsingOutput`` every model family returns; also, for tests and hand-built
    inputs, the parsing logits alone or a sequence ``(parsing[, binary_edge[, category_edge]])``.
    Missing heads come back as None.
    """
    if isinstance(outputs, Tensor):
        return ParsingOutput(outputs)
    outputs = list(outputs)
    if not 1 <= len(outputs) <= 3 or outputs[0] is None:
        raise ValueError("model outputs must be a ParsingOutput, parsing logits or (parsing, "
                         f"binary_edge, category_edge), got a sequence of {len(outputs)}")
    return ParsingOutput(*outputs)


def resize_logits(logits: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=True) resize of (N,C,h,w) logits to ``size``, computed in float32."""
    logits = logits.float()  # cumulative sums and softmax in half precision lose counts
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return upsample(logits, tuple(size))


def pixel_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-pixel CE (N,H,W) of logits (N,C,H,W) against int64 targets; 0 at ignored pixels."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0 (num is 0 there by construction in every caller).

    No host synchronisation and no NaN in the forward or backward pass.
    """
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask`` (same shape); 0 when the mask is empty."""
    mask = mask.to(values.dtype)
    return safe_divide((values * mask).sum(), mask.sum())
