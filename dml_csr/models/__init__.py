"""Model families (one file each), the contract they keep, the registry, checkpoint I/O.

- ``contract.py``: ``ParsingModel`` (the base class: how any family is called, and the facts a
  family declares about itself as class attributes) and ``ParsingOutput`` (what every model
  returns).
- ``dml_csr.py``: the DML-CSR network with the release's state_dict names (its blocks and context
  modules are in ``dml_csr/layers/``); ``fp_liif.py``: FP-LIIF.
- ``registry.py``: ``model.name`` -> family, ``register_family`` (a family from your own file);
  ``checkpoint.py``: the checkpoint format, its one
  writer (``save_checkpoint``) and its one reader (``load_inference_model``).
"""
import logging

from .checkpoint import (ModelSpec, load_imagenet_backbone, load_inference_model,
                         load_model_weights, save_checkpoint)
from .contract import ParsingModel, ParsingOutput
from .dml_csr import DMLCSR
from .fp_liif import FPLIIF
from .registry import FAMILIES, build_model, family, model_kwargs_from_config, register_family

logger = logging.getLogger(__name__)

__all__ = ["DMLCSR", "FPLIIF", "ParsingModel", "ParsingOutput", "FAMILIES", "family",
           "build_model", "model_kwargs_from_config", "register_family", "ModelSpec",
           "load_inference_model", "save_checkpoint", "load_imagenet_backbone", "load_model_weights"]
