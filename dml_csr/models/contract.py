"""The one contract every model family keeps, so that nothing outside a family's file needs to know
which family it is calling.

    out = model(images)                        # training: the family's native output
    out = model(images, size=(H, W))           # inference: parsing logits at H x W
    out = model(images, coord=points)          # families that decode at any point (FP-LIIF)
    out.parsing, out.binary_edge, out.category_edge      # a ParsingOutput; absent heads are None

A family is a :class:`ParsingModel` subclass in its own file that declares every fact the rest of
the package needs about it as class attributes (as timm keeps ``classifier`` and ``first_conv`` in
a model's ``pretrained_cfg``): what it can do (``decodes_any_size``, ``imagenet_backbone``,
``has_edge_heads``), its state_dict landmarks (``classifier``, ``backbone_prefixes``,
``training_only_prefixes``), its int8 float layers (``float_layers``), its table row
(``table_row``), its quick-start config and a CPU-sized setting (``example_config``,
``tiny_args``); its constructor arguments are the config's ``model.args``, checked by
``check_args``. ``models/registry.py`` maps ``model.name`` to it; ``register_family`` adds a
family from outside the package. The layer classes it is built from declare their own norm
folding (``folded_norms``, ``temporary_activations``: ``deploy/fold.py``).
"""
import inspect
import re
from typing import Any, ClassVar, Dict, Mapping, NamedTuple, Optional, Tuple

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

    Class attributes a family declares (the defaults suit a family that has none of it):

    - ``family``: its registry name (``model.name``);
    - ``decodes_any_size``: logits at any output size and at query points;
    - ``imagenet_backbone``: takes the ImageNet ResNet-101 of ``model.pretrained``, whose
      tensors are the state_dict keys under ``backbone_prefixes``;
    - ``training_only_prefixes``: state_dict prefixes of heads only the training form has
      (DML-CSR's ``edge_layer.``): dropped when an inference-form model loads a training file;
    - ``classifier``: a pattern (``re.fullmatch``) of the final classifier's weight key, whose
      first dimension is the class count; several matches: the one with the largest number in
      it (FP-LIIF's ``decoder.N.weight``). Checkpoints of unknown origin are read with it;
    - ``float_layers``: a pattern of the top-level modules the int8 file keeps in float32
      (``deploy/quantize.py``; default: none);
    - ``table_row``: the row of its results in ``tools/make_tables.py`` (default: the family
      name with ``-`` for ``_``);
    - ``example_config``: the config its quick start trains (``configs/NAME.yaml``), and
      ``tiny_args``: ``model.args`` of a CPU-sized model (the tests' contract runs);
    - ``input_size``: (H, W) of the crops its benchmark configs feed it (``dml-csr complexity``
      measures a family named without a config or checkpoint at this size).
    """

    family: ClassVar[str] = ""
    decodes_any_size: ClassVar[bool] = False
    imagenet_backbone: ClassVar[bool] = False
    backbone_prefixes: ClassVar[Tuple[str, ...]] = ()
    training_only_prefixes: ClassVar[Tuple[str, ...]] = ()
    classifier: ClassVar[str] = ""
    float_layers: ClassVar[str] = ""
    table_row: ClassVar[str] = ""
    example_config: ClassVar[str] = "synthetic"
    tiny_args: ClassVar[Dict[str, Any]] = {}
    input_size: ClassVar[Tuple[int, int]] = (473, 473)
    num_classes: int

    @property
    def has_edge_heads(self) -> bool:
        """Whether ``forward`` returns edge logits (DML-CSR's training form)."""
        return False

    @classmethod
    def row(cls) -> str:
        """The results table row of this family (``table_row``, else from the family name)."""
        return cls.table_row or cls.family.replace("_", "-")

    @classmethod
    def classifier_key(cls, state: Mapping[str, Any]) -> Optional[str]:
        """The key of ``state`` holding the final classifier's weight (``classifier``), or None."""
        if not cls.classifier:
            return None
        found = [k for k in state if re.fullmatch(cls.classifier, k)]
        if not found:
            return None
        return max(found, key=lambda k: ([int(n) for n in re.findall(r"\d+", k)], k))

    @classmethod
    def arg_names(cls) -> Tuple[str, ...]:
        """The arguments ``model.args`` may set: the constructor's keyword arguments other than
        ``num_classes`` (from the data set) and ``with_edges`` (from the stage)."""
        params = inspect.signature(cls.__init__).parameters
        return tuple(n for n, p in params.items() if n not in ("self", "num_classes", "with_edges")
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @classmethod
    def default_args(cls) -> Dict[str, Any]:
        """The constructor's defaults of :meth:`arg_names` (what ``model.args`` left out means)."""
        params = inspect.signature(cls.__init__).parameters
        return {n: params[n].default for n in cls.arg_names()
                if params[n].default is not inspect.Parameter.empty}

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> Dict[str, Any]:
        """``model.args`` checked for this family: a ValueError names an argument it does not
        take (and the ones it does). Families check their values here too."""
        known = cls.arg_names()
        for name in args:
            if name not in known:
                raise ValueError(f"model.args.{name} is not an argument of the {cls.family!r} "
                                 f"family; its arguments: {list(known)}")
        return dict(args)

    @classmethod
    def kwargs_from_config(cls, model_cfg, num_classes: int) -> Dict[str, Any]:
        """Constructor keyword arguments from a ``ModelConfig``: ``num_classes`` and the checked
        ``model.args`` (the checkpoint stores them)."""
        return {"num_classes": num_classes, **cls.check_args(model_cfg.args)}

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
