"""Checkpoint I/O: the release's files, our self-describing files, and ImageNet backbones.

A release checkpoint is a bare state_dict (possibly with a ``module.`` prefix from
DataParallel); ours is a dict with ``model`` (the state_dict), ``model_name``, ``model_kwargs``,
``dataset``/``schema`` facts and training state, so test and inference can rebuild the model from
the file alone. Both load through :func:`load_model_weights`.
"""
import logging
import os
import tempfile
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

__all__ = ["extract_state_dict", "load_model_weights", "load_imagenet_backbone", "save_atomic",
           "CheckpointMismatchError", "BACKBONE_PREFIXES"]

BACKBONE_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.",
                     "layer1.", "layer2.", "layer3.", "layer4.")
EDGE_PREFIX = "edge_layer."


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model (wrong classes, wrong architecture, missing keys)."""


def _torch_load(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state_dict inside a loaded checkpoint object, with any ``module.`` prefix removed."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointMismatchError(f"{source} holds no state_dict (expected a dict of tensors)")
    out = {}
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def load_model_weights(model: nn.Module, checkpoint: Any, source: str = "checkpoint") -> nn.Module:
    """Load a training-form or inference-form checkpoint into either form of a model.

    - ``module.`` prefixes are stripped; ``num_batches_tracked`` entries are dropped when the model
      has none and zero-filled when the model has them but the file does not.
    - Edge-branch keys are dropped (with an info message) when the model has no edge branch; when
      the model has one but the file does not, the edge layers keep their fresh initialisation and
      a warning says so.
    - Any other missing or unexpected key, or any shape mismatch, raises
      :class:`CheckpointMismatchError` naming the first offending key (and both shapes).

    ``checkpoint`` may be a path, a loaded checkpoint dict, or a state_dict.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        checkpoint = _torch_load(source)
    state = extract_state_dict(checkpoint, source)
    target = model.state_dict()

    state = {k: v for k, v in state.items()
             if not (k.endswith("num_batches_tracked") and k not in target)}
    for k in target:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)

    dropped_edges = [k for k in state if k.startswith(EDGE_PREFIX) and k not in target]
    if dropped_edges:
        logger.info("%s: dropped %d edge-branch keys (decoupled inference form)", source,
                    len(dropped_edges))
        state = {k: v for k, v in state.items() if k not in dropped_edges}
    missing_edges = [k for k in target if k.startswith(EDGE_PREFIX) and k not in state]
    if missing_edges:
        logger.warning("%s has no edge branch (inference-form checkpoint): the %d edge_layer "
                       "entries keep their fresh initialisation", source, len(missing_edges))

    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state and k not in missing_edges]
    if unexpected:
        raise CheckpointMismatchError(
            f"{source}: key {unexpected[0]!r} is not in the model ({len(unexpected)} unexpected "
            f"keys); wrong architecture?")
    if missing:
        raise CheckpointMismatchError(
            f"{source}: model key {missing[0]!r} is missing from the checkpoint ({len(missing)} "
            f"missing keys); wrong architecture?")
    for k, v in state.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise CheckpointMismatchError(
                f"{source}: shape mismatch at {k!r}: checkpoint {tuple(v.shape)} vs model "
                f"{tuple(target[k].shape)} (wrong number of classes or architecture?)")
    model.load_state_dict(state, strict=not missing_edges)
    return model


def load_imagenet_backbone(model: nn.Module, path: str) -> nn.Module:
    """Load the deep-stem ResNet-101 ImageNet weights (``resnet101-imagenet.pth``) into the backbone.

    ``fc.*`` is skipped; every backbone key of the model (stem and layer1..4, except
    ``num_batches_tracked``) must be matched with the same shape, else an error names the first
    unmatched key.
    """
    state = extract_state_dict(_torch_load(path), path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    target = model.state_dict()
    backbone_keys = [k for k in target if k.startswith(BACKBONE_PREFIXES)
                     and not k.endswith("num_batches_tracked")]
    for k in backbone_keys:
        if k not in state:
            raise CheckpointMismatchError(f"{path}: backbone key {k!r} not found in the file")
        if tuple(state[k].shape) != tuple(target[k].shape):
            raise CheckpointMismatchError(
                f"{path}: shape mismatch at {k!r}: file {tuple(state[k].shape)} vs model "
                f"{tuple(target[k].shape)} (is this the deep-stem ResNet-101?)")
    extra = [k for k in state if k not in target and not k.endswith("num_batches_tracked")]
    if extra:
        raise CheckpointMismatchError(f"{path}: key {extra[0]!r} matches no backbone parameter")
    model.load_state_dict({k: state[k] for k in backbone_keys}, strict=False)
    logger.info("loaded ImageNet backbone from %s (%d tensors)", path, len(backbone_keys))
    return model


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a kill at any moment leaves either the old or the new file, never a truncated one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
