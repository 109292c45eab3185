"""The model families by name: ``model.name`` in the config -> the family's class.

A family is one file: a :class:`~dml_csr.models.contract.ParsingModel` subclass that declares its
facts as class attributes (``contract.py``). The two of this package are registered here; a family
of your own (in your own file, outside the package) is added with :func:`register_family`, after
which the config (``model.name``, ``model.args``), the trainer, checkpoints, the protocol, the
parser, ONNX and int8 export take it like the built-in ones.
"""
from typing import Any, Dict, Type

from .contract import ParsingModel
from .dml_csr import DMLCSR
from .fp_liif import FPLIIF

__all__ = ["FAMILIES", "family", "register_family", "build_model", "model_kwargs_from_config"]

FAMILIES: Dict[str, Type[ParsingModel]] = {}


def register_family(cls: Type[ParsingModel]) -> Type[ParsingModel]:
    """Add the family ``cls`` under ``cls.family`` (usable as a class decorator); returns ``cls``.

    ``cls`` must be a ``ParsingModel`` subclass with a ``family`` name of letters, digits and
    ``_``; registering the same class again is allowed, another class under a taken name is a
    ValueError. The registration lasts for the process: a checkpoint of the family loads, and a
    config names it, wherever the module that registers it was imported first (for
    ``tools/*.py``: import it from a script that then calls the tool's ``main``)."""
    if not (isinstance(cls, type) and issubclass(cls, ParsingModel)):
        raise TypeError(f"register_family takes a ParsingModel subclass, got {cls!r}")
    name = cls.family
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{cls.__name__}.family must name the family (letters, digits, _), "
                         f"got {name!r}")
    if FAMILIES.get(name, cls) is not cls:
        raise ValueError(f"model family {name!r} is already registered by "
                         f"{FAMILIES[name].__module__}.{FAMILIES[name].__name__}")
    cls.arg_names()                     # a constructor whose arguments cannot be read fails here
    FAMILIES[name] = cls
    return cls


register_family(DMLCSR)
register_family(FPLIIF)


def family(name: str) -> Type[ParsingModel]:
    """The class of family ``name``; a ValueError lists the known names."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (model.name); choose one of "
                         f"{sorted(FAMILIES)}, or register yours (dml_csr.models.register_family)")
    return FAMILIES[name]


def model_kwargs_from_config(model_cfg, num_classes: int) -> Dict[str, Any]:
    """Constructor keyword arguments of family ``model_cfg.name`` (a ``ModelConfig``)."""
    return family(model_cfg.name).kwargs_from_config(model_cfg, num_classes)


def build_model(name: str, kwargs: Dict[str, Any], training: bool = False) -> ParsingModel:
    """Family ``name`` built from its ``kwargs``; ``training=True`` adds training-only heads."""
    return family(name).build(kwargs, training=training)
