"""Model families (one file each), the contract they keep, the registry, checkpoint I/O.

- ``contract.py``: ``ParsingModel`` (the base class) and ``ParsingOutput`` (what every model
  returns): the one way to call any family.
- ``dml_csr.py``: the DML-CSR network with the release's state_dict names (its blocks and context
  modules are in ``dml_csr/layers/``); ``fp_liif.py``: FP-LIIF.
- ``registry.py``: ``model.name`` -> family; ``checkpoint.py``: the checkpoint format, its one
  writer (``save_checkpoint``) and its one reader (``load_inference_model``).
"""
import logging

from .checkpoint import (ModelSpec, load_imagenet_backbone, load_inference_model,
                         load_model_weights, save_checkpoint)
from .contract import ParsingModel, ParsingOutput
from .dml_csr import DMLCSR
from .fp_liif import FPLIIF
from .registry import FAMILIES, build_model, family, model_kwargs_from_config

logger = logging.getLogger(__name__)

__all__ = ["DMLCSR", "FPLIIF", "ParsingModel", "ParsingOutput", "FAMILIES", "family",
           "build_model", "model_kwargs_from_config", "ModelSpec", "load_inference_model",
           "save_checkpoint", "load_imagenet_backbone", "load_model_weights"]
