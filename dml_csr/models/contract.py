"""The one contract every model family keeps, so that nothing outside a family's file needs to know
which family it is calling.

    out = model(images)                        # training: the family's native output
    out = model(images, size=(H, W))           # inference: parsing logits at H x W
    out = model(images, coord=points)          # families that decode at any point (FP-LIIF)
    out.parsing, out.binary_edge, out.category_edge      # a ParsingOutput; absent heads are None

A family is a :class:`ParsingModel` subclass in its own file that declares what it can do
(``decodes_any_size``, ``imagenet_backbone``, ``has_edge_heads``) and how its constructor
arguments come from the config (``kwargs_from_config``); ``models/registry.py`` maps the config's
``model.name`` to it.
"""
from typing import Any, ClassVar, Dict, NamedTuple, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..layers.blocks import upsample

__all__ = ["ParsingOutput", "ParsingModel", "resize_logits_to"]


class ParsingOutput(NamedTuple):
    """What every model returns: parsing logits (N, K, h, w) and, where the model has edge heads
    (DML-CSR's training form), the binary (N, 2, h, w) and category (N, K, h, w) edge logits."""

    parsing: Tensor
    binary_edge: Optional[Tensor] = None
    category_edge: Optional[Tensor] = None


def resize_logits_to(logits: Tensor, size: Optional[Tuple[int, int]]) -> Tensor:
    """Bilinear (align_corners=True, the release's protocol) resize of (N, K, h, w) to ``size``."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return upsample(logits, tuple(int(s) for s in size))


class ParsingModel(nn.Module):
    """Base class of the model families.

    ``forward(images, size=None, coord=None) -> ParsingOutput``:

    - ``size=None``: the family's native output grid (what the training losses take; they
      upsample to the label size themselves);
    - ``size=(H, W)``: the parsing logits at H x W (a grid model upsamples bilinearly, an implicit
      decoder decodes there directly); edge logits, if any, stay on their native grid;
    - ``coord`` (N, Q, 2): (x, y) pixel centres in [-1, 1]; parsing logits at those points only,
      as (N, K, 1, Q). Only for ``decodes_any_size`` families.

    Class attributes a family declares: ``family`` (its registry name), ``decodes_any_size``
    (logits at any output size and at query points), ``imagenet_backbone`` (takes the ImageNet
    ResNet-101 of ``model.pretrained``).
    """

    family: ClassVar[str] = ""
    decodes_any_size: ClassVar[bool] = False
    imagenet_backbone: ClassVar[bool] = False
    num_classes: int

    @property
    def has_edge_heads(self) -> bool:
        """Whether ``forward`` returns edge logits (DML-CSR's training form)."""
        return False

    @classmethod
    def kwargs_from_config(cls, model_cfg, num_classes: int) -> Dict[str, Any]:
        """Constructor keyword arguments from a ``ModelConfig`` (the checkpoint stores them)."""
        raise NotImplementedError

    @classmethod
    def build(cls, kwargs: Dict[str, Any], training: bool = False) -> "ParsingModel":
        """The model of ``kwargs``; ``training=True`` adds the heads that only training uses."""
        return cls(**kwargs)

    def check_coord(self, coord: Optional[Tensor]) -> None:
        if coord is not None and not self.decodes_any_size:
            raise ValueError(f"{type(self).__name__} predicts a fixed grid: query points need a "
                             f"family that decodes at any size (model.name fp_liif)")

    def export_logits(self, images: Tensor, size: Optional[Tuple[int, int]]) -> Tensor:
        """The parsing logits that an exported (ONNX) graph computes, in one pass."""
        return self(images, size=size).parsing
