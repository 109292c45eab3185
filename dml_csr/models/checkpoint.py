"""Checkpoint I/O: the release's files, our self-describing files, and ImageNet backbones.

A release checkpoint is a bare state_dict (possibly with a ``module.`` prefix from
DataParallel); ours is a dict with ``model`` (the state_dict), ``model_name``, ``model_kwargs``,
``dataset``/``schema`` facts and training state, so test and inference can rebuild the model from
the file alone. Both load through :func:`load_model_weights`.
"""
import logging
import os
import re
import tempfile
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

__all__ = ["extract_state_dict", "load_model_weights", "load_imagenet_backbone", "save_atomic",
           "load_checkpoint_file", "state_num_classes", "check_backbone_file", "CheckpointError",
           "CheckpointMismatchError",
           "CheckpointReadError", "BACKBONE_PREFIXES", "CLASSIFIER_KEY"]

BACKBONE_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.",
                     "layer1.", "layer2.", "layer3.", "layer4.")
EDGE_PREFIX = "edge_layer."
CLASSIFIER_KEY = "layer6.conv4.weight"          # DML-CSR's parsing classifier: (K, C, 1, 1)
_FPLIIF_DECODER = re.compile(r"decoder\.(\d+)\.weight")   # FP-LIIF's MLP; the last is (K, C)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model (wrong classes, wrong architecture, missing keys)."""


class CheckpointReadError(CheckpointError):
    """A checkpoint file that torch cannot read (truncated, damaged, not a checkpoint)."""


def load_checkpoint_file(path: str) -> Any:
    """``torch.load`` of ``path`` on the CPU, with errors that name the file and the remedy."""
    path = str(path)
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}: check the path (tools/train.py writes "
                                f"OUTPUT_DIR/best.pth; release weights are downloaded by hand)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointReadError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {reason}): the file is "
            f"truncated, damaged or not a PyTorch checkpoint; copy or download it again") from exc


def _classifier_key(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    if CLASSIFIER_KEY in state:
        return CLASSIFIER_KEY
    decoder = [(int(m.group(1)), k) for k in state for m in [_FPLIIF_DECODER.fullmatch(k)] if m]
    return max(decoder)[1] if decoder else None


def state_num_classes(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The class count K of a DML-CSR or FP-LIIF state_dict (``module.`` prefixes stripped): the
    first dimension of the final classifier's weight; None when neither classifier is present."""
    key = _classifier_key(state)
    return None if key is None else int(state[key].shape[0])


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
        checkpoint = load_checkpoint_file(source)
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
            f"keys): it was saved from another architecture; make the config's model section "
            f"(model.name, model.layers, model.width_mult, model.context) match it")
    if missing:
        raise CheckpointMismatchError(
            f"{source}: model key {missing[0]!r} is missing from the checkpoint ({len(missing)} "
            f"missing keys): it was saved from another architecture; make the config's model "
            f"section (model.name, model.layers, model.width_mult, model.context) match it")
    key = _classifier_key(state)
    if key in target and state[key].shape[0] != target[key].shape[0]:
        from ..data.schemas import datasets_with_classes

        def names(k: int) -> str:
            return " or ".join(datasets_with_classes(k)) or "no supported data set"
        file_classes, model_classes = int(state[key].shape[0]), int(target[key].shape[0])
        raise CheckpointMismatchError(
            f"{source} predicts {file_classes} classes ({names(file_classes)}) but the model "
            f"was built for {model_classes} ({names(model_classes)}); shape mismatch at "
            f"{key!r}: checkpoint {tuple(state[key].shape)} vs model "
            f"{tuple(target[key].shape)}: choose the checkpoint's data set (data.dataset in "
            f"the config, --dataset on the command line)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise CheckpointMismatchError(
                f"{source}: shape mismatch at {k!r}: checkpoint {tuple(v.shape)} vs model "
                f"{tuple(target[k].shape)}: it was saved from another architecture; make the "
                f"config's model section (model.layers, model.width_mult, model.context) match it")
    model.load_state_dict(state, strict=not missing_edges)
    return model


def check_backbone_file(path: str) -> None:
    """FileNotFoundError naming ``model.pretrained`` when the backbone file ``path`` is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet backbone {path} (model.pretrained) does not exist: put "
                                f"resnet101-imagenet.pth there (README, 'Data sets and weights') "
                                f"or train from scratch with model.pretrained=''")


def load_imagenet_backbone(model: nn.Module, path: str) -> nn.Module:
    """Load the deep-stem ResNet-101 ImageNet weights (``resnet101-imagenet.pth``) into the backbone.

    ``fc.*`` is skipped; every backbone key of the model (stem and layer1..4, except
    ``num_batches_tracked``) must be matched with the same shape, else an error names the first
    unmatched key.
    """
    check_backbone_file(path)
    state = extract_state_dict(load_checkpoint_file(path), path)
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
