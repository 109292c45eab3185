"""Model families and builders. Checkpoints are self-describing: ``model_name`` + ``model_kwargs``."""
import logging
from typing import Any, Dict, Optional

import torch.nn as nn

from .checkpoint import load_imagenet_backbone, load_model_weights
from .dml_csr import DMLCSR

logger = logging.getLogger(__name__)

__all__ = ["DMLCSR", "FPLIIF", "build_model", "model_kwargs_from_config", "build_model_from_checkpoint"]


def _fpliif_cls():
    from .fp_liif import FPLIIF
    return FPLIIF


def __getattr__(name):  # FPLIIF imported lazily
    if name == "FPLIIF":
        return _fpliif_cls()
    raise AttributeError(name)


def model_kwargs_from_config(model_cfg, num_classes: int) -> Dict[str, Any]:
    """Constructor keyword arguments of ``model_cfg.name`` (a ``ModelConfig``)."""
    if model_cfg.name == "dml_csr":
        return dict(num_classes=num_classes, layers=list(model_cfg.layers),
                    width_mult=model_cfg.width_mult, context=model_cfg.context,
                    norm_backend=model_cfg.norm_backend)
    if model_cfg.name == "fp_liif":
        return dict(num_classes=num_classes, **model_cfg.fp_liif)
    raise ValueError(f"unknown model {model_cfg.name!r}")


def build_model(name: str, kwargs: Dict[str, Any], with_edges: Optional[bool] = None) -> nn.Module:
    """Build model ``name`` (``dml_csr`` | ``fp_liif``); ``with_edges`` applies to DML-CSR only."""
    if name == "dml_csr":
        kw = dict(kwargs)
        if with_edges is not None:
            kw["with_edges"] = with_edges
        return DMLCSR(**kw)
    if name == "fp_liif":
        return _fpliif_cls()(**kwargs)
    raise ValueError(f"unknown model {name!r}; choose dml_csr or fp_liif")


def build_model_from_checkpoint(path: str, with_edges: bool = False, checkpoint: Optional[dict] = None):
    """Rebuild a model from one of our self-describing checkpoints and load its weights.

    Returns ``(model, checkpoint_dict)``. Default: the decoupled inference form (no edges).
    """
    from .checkpoint import load_checkpoint_file
    ckpt = checkpoint if checkpoint is not None else load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise ValueError(f"{path} is not a self-describing checkpoint (no 'model_name'); for a bare "
                         f"release state_dict build DMLCSR(num_classes) and use load_model_weights")
    model = build_model(ckpt["model_name"], ckpt["model_kwargs"], with_edges=with_edges)
    load_model_weights(model, ckpt, source=path)
    return model, ckpt
