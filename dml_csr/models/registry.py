"""The model families by name: ``model.name`` in the config -> the family's class.

A new family is a new file with a :class:`~dml_csr.models.contract.ParsingModel` subclass plus
one line in ``FAMILIES``.
"""
from typing import Any, Dict, Type

from .contract import ParsingModel
from .dml_csr import DMLCSR
from .fp_liif import FPLIIF

__all__ = ["FAMILIES", "family", "build_model", "model_kwargs_from_config"]

FAMILIES: Dict[str, Type[ParsingModel]] = {
    DMLCSR.family: DMLCSR,
    FPLIIF.family: FPLIIF,
}


def family(name: str) -> Type[ParsingModel]:
    """The class of family ``name``; a ValueError lists the known names."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (model.name); choose one of "
                         f"{sorted(FAMILIES)}")
    return FAMILIES[name]


def model_kwargs_from_config(model_cfg, num_classes: int) -> Dict[str, Any]:
    """Constructor keyword arguments of family ``model_cfg.name`` (a ``ModelConfig``)."""
    return family(model_cfg.name).kwargs_from_config(model_cfg, num_classes)


def build_model(name: str, kwargs: Dict[str, Any], training: bool = False) -> ParsingModel:
    """Family ``name`` built from its ``kwargs``; ``training=True`` adds training-only heads."""
    return family(name).build(kwargs, training=training)
