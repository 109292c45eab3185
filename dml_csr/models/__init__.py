"""Model families (one file each), the contract they keep, the registry, checkpoint I/O.

- ``contract.py``: ``ParsingModel`` (the base class) and ``ParsingOutput`` (what every model
  returns): the one way to call any family.
- ``dml_csr.py``: the DML-CSR network with the release's state_dict names (its blocks and context
  modules are in ``dml_csr/layers/``); ``fp_liif.py``: FP-LIIF.
- ``registry.py``: ``model.name`` -> family; ``checkpoint.py``: reading and writing weights.
"""
import logging
from typing import Optional

from .checkpoint import load_imagenet_backbone, load_model_weights
from .contract import ParsingModel, ParsingOutput
from .dml_csr import DMLCSR
from .fp_liif import FPLIIF
from .registry import FAMILIES, build_model, family, model_kwargs_from_config

logger = logging.getLogger(__name__)

__all__ = ["DMLCSR", "FPLIIF", "ParsingModel", "ParsingOutput", "FAMILIES", "family",
           "build_model", "model_kwargs_from_config", "build_model_from_checkpoint",
           "load_imagenet_backbone", "load_model_weights"]


def build_model_from_checkpoint(path: str, training: bool = False, checkpoint: Optional[dict] = None):
    """Rebuild a model from one of our self-describing checkpoints and load its weights.

    Returns ``(model, checkpoint_dict)``. Default: the decoupled inference form (no edges).
    """
    from .checkpoint import load_checkpoint_file
    ckpt = checkpoint if checkpoint is not None else load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise ValueError(f"{path} is not a self-describing checkpoint (no 'model_name'); for a bare "
                         f"release state_dict build DMLCSR(num_classes) and use load_model_weights")
    model = build_model(ckpt["model_name"], ckpt["model_kwargs"], training=training)
    load_model_weights(model, ckpt, source=path)
    return model, ckpt
