"""Checkpoint I/O: one writer, one reader, the release's bare files, and ImageNet backbones.

Our checkpoints (format ``CHECKPOINT_FORMAT``; ``dml_csr.train/1`` files hold the same fields
and are read alike) are dicts written by :func:`save_checkpoint`:

    format          "dml_csr.checkpoint/2"
    model           the state_dict
    model_name      the model family (models/registry.py) and model_kwargs its arguments
    dataset, class_tokens, class_names, num_classes
    input           crop_size, channel_order (bgr | rgb), center_mode, mean, std, output_scale
    config          the resolved training config (optional), torch_version, and whatever the
                    writer adds (training state in last.pth; epoch, score, metrics in best.pth)

:func:`load_inference_model` is the one reader: it rebuilds the family with its arguments and
takes the classes and the input facts from the file (:class:`ModelSpec`). The authors' bare
state_dicts (possibly with a ``module.`` prefix from DataParallel) load too: the family is
DML-CSR and the data set comes from the caller or the class count.

Every file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers, never an arbitrary Python object, so a poisoned file cannot run code. What this
project writes and the authors' files load that way. A file that needs full unpickling (an
object of another class inside) is refused with :class:`UntrustedCheckpointError`, unless the
caller trusts it (``trust_checkpoint=True``, ``--trust-checkpoint``, ``$DMLCSR_TRUST_CHECKPOINT``):
then it is unpickled, which runs whatever code the file holds (docs/files.md).
"""
import dataclasses
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..cli import env_flag
from ..files import save_torch

logger = logging.getLogger(__name__)

__all__ = ["ModelSpec", "save_checkpoint", "load_inference_model", "release_dataset",
           "extract_state_dict", "load_model_weights", "load_imagenet_backbone",
           "load_checkpoint_file", "state_num_classes", "check_backbone_file", "CheckpointError",
           "CheckpointMismatchError", "CheckpointReadError", "UntrustedCheckpointError",
           "load_matching_weights", "classifier_key", "CHECKPOINT_FORMAT", "TRUST_ENV",
           "trusted"]

CHECKPOINT_FORMAT = "dml_csr.checkpoint/2"
RELEASE_ARCHITECTURE: Dict[str, Any] = {}   # the authors' files: DMLCSR(num_classes) as it stands
READABLE_FORMATS = (CHECKPOINT_FORMAT, "dml_csr.train/1")   # /1 holds the same fields
TRUST_ENV = "DMLCSR_TRUST_CHECKPOINT"   # 1: unpickle files that weights_only refuses (unsafe)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model (wrong classes, wrong architecture, missing keys)."""


class CheckpointReadError(CheckpointError):
    """A checkpoint file that torch cannot read (truncated, damaged, not a checkpoint)."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that only full unpickling can read, refused because it could run code."""


def trusted(trust_checkpoint: bool = False) -> bool:
    """``trust_checkpoint``, or the switch ``$DMLCSR_TRUST_CHECKPOINT`` on (``1``, ``true``,
    ``yes``; a value that is neither on nor off is a ValueError naming it:
    :func:`dml_csr.cli.env_flag`)."""
    return bool(trust_checkpoint) or env_flag(TRUST_ENV)


# what weights_only rebuilds without asking: torch's tensor rebuilders, storage classes (legacy
# files name torch.FloatStorage and the like), OrderedDict; and the version string we allow
_WEIGHTS_ONLY_NAMES = re.compile(r"torch\._utils\.\w+|torch\.(storage\.)?\w*Storage|"
                                 r"collections\.OrderedDict|torch\.torch_version\.TorchVersion")


def _pickle_globals(path: str) -> List[str]:
    """The ``module.name`` of every class or function the checkpoint's pickles name, read from
    their opcodes (nothing is run): the ``data.pkl`` of a zip file, or the pickles at the start
    of a legacy (non-zip) file; stops quietly where a pickle does not parse."""
    import io
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            inner = [n for n in z.namelist() if n.endswith("data.pkl")]
            streams = [io.BytesIO(z.read(inner[0]))] if inner else []
    else:
        with open(path, "rb") as f:
            streams = [io.BytesIO(f.read(1 << 20))]   # legacy: the pickles lead, storages follow
    names: List[str] = []
    for stream in streams:
        for _ in range(5):     # legacy: magic, protocol, sys_info, the object, the storage keys
            memo: Dict[int, Any] = {}
            strings: List[Any] = []
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                        strings.append(arg)
                    elif op.name == "MEMOIZE":
                        memo[len(memo)] = strings[-1] if strings else None
                    elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[arg] = strings[-1] if strings else None
                    elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                        strings.append(memo.get(arg))
                    elif op.name == "GLOBAL":
                        names.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
            except Exception:  # noqa: BLE001 - the end of the pickles, or damage: no more names
                break
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def _unsafe_globals(path: str) -> List[str]:
    """The classes and functions the file's pickle names beyond weights_only's (read from its
    opcodes, nothing run): torch's own list where it can tell (zip files, torch >= 2.5), else
    those of :func:`_pickle_globals` that are not tensor rebuilders; empty when there are none
    to name (a damaged file)."""
    listing = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if listing is not None:
        try:
            return list(listing(path))
        except Exception:  # noqa: BLE001 - a legacy or damaged file: read the opcodes instead
            pass
    return [n for n in _pickle_globals(path) if not _WEIGHTS_ONLY_NAMES.fullmatch(n)]


def load_checkpoint_file(path: str, trust_checkpoint: bool = False, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file and
    the remedy (module docstring). ``trust_checkpoint`` (or ``$DMLCSR_TRUST_CHECKPOINT``): a file
    that weights_only refuses is unpickled instead, with a warning, whatever its format (zip or
    legacy). ``mmap``: map the tensors instead of reading them (files in the zip format)."""
    from torch.torch_version import TorchVersion

    path = str(path)
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}: check the path (tools/train.py writes "
                                f"OUTPUT_DIR/best.pth; release weights are downloaded by hand)")
    trust = trusted(trust_checkpoint)
    try:
        # the earlier versions of this project stored torch.__version__ itself: a str subclass
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if not trust:
            if not unsafe:
                raise _read_error(path, exc) from exc
            names = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3
                                             else "")
            raise UntrustedCheckpointError(
                f"checkpoint {path} holds Python objects ({names}) that only full unpickling "
                f"rebuilds, and unpickling runs any code a file hides: refused. Files this "
                f"project writes and the authors' weights load without it; if you trust where "
                f"this file comes from (an older checkpoint of ours), pass --trust-checkpoint "
                f"(trust_checkpoint=True, or {TRUST_ENV}=1)") from None
        # trusted means unpickled, whether or not the objects could be named beforehand
        logger.warning("%s: unpickling a checkpoint that weights_only refuses (%s), as trusted: "
                       "this runs any code the file holds", path,
                       ", ".join(unsafe) or "objects it could not name")
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise _read_error(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise _read_error(path, exc) from exc


def _read_error(path: str, exc: BaseException) -> CheckpointReadError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return CheckpointReadError(
        f"cannot read checkpoint {path} ({type(exc).__name__}: {reason}): the file is "
        f"truncated, damaged or not a PyTorch checkpoint; copy or download it again")


def classifier_key(state: Mapping[str, torch.Tensor], family: Optional[str] = None
                   ) -> Optional[str]:
    """The key of the final classifier's weight in ``state``: the one family ``family`` declares
    (``ParsingModel.classifier``) when it is registered, else the first registered family's
    that ``state`` holds; None when there is none."""
    from .registry import FAMILIES
    classes = [FAMILIES[family]] if family in FAMILIES else list(FAMILIES.values())
    for cls in classes:
        key = cls.classifier_key(state)
        if key is not None:
            return key
    return None


def state_num_classes(state: Mapping[str, torch.Tensor], family: Optional[str] = None
                      ) -> Optional[int]:
    """The class count K of a state_dict (``module.`` prefixes stripped): the first dimension of
    the final classifier's weight (:func:`classifier_key`); None when there is none."""
    key = classifier_key(state, family)
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


def load_model_weights(model: nn.Module, checkpoint: Any, source: str = "checkpoint",
                       trust_checkpoint: bool = False) -> nn.Module:
    """Load a training-form or inference-form checkpoint into either form of a model.

    - ``module.`` prefixes are stripped; ``num_batches_tracked`` entries are dropped when the model
      has none and zero-filled when the model has them but the file does not.
    - Keys of training-only heads (the family's ``training_only_prefixes``: DML-CSR's edge
      branch) are dropped (with an info message) when the model has none; when the model has
      them but the file does not, they keep their fresh initialisation and a warning says so.
    - Any other missing or unexpected key, or any shape mismatch, raises
      :class:`CheckpointMismatchError` naming the first offending key (and both shapes).

    ``checkpoint`` may be a path (read by :func:`load_checkpoint_file` with
    ``trust_checkpoint``), a loaded checkpoint dict, or a state_dict.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        checkpoint = load_checkpoint_file(source, trust_checkpoint)
    state = extract_state_dict(checkpoint, source)
    target = model.state_dict()

    state = {k: v for k, v in state.items()
             if not (k.endswith("num_batches_tracked") and k not in target)}
    for k in target:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)

    heads = tuple(getattr(type(model), "training_only_prefixes", ()))
    dropped_edges = [k for k in state if heads and k.startswith(heads) and k not in target]
    if dropped_edges:
        logger.info("%s: dropped %d keys of training-only heads (%s; the inference form)",
                    source, len(dropped_edges), ", ".join(heads))
        state = {k: v for k, v in state.items() if k not in dropped_edges}
    missing_edges = [k for k in target if heads and k.startswith(heads) and k not in state]
    if missing_edges:
        logger.warning("%s has no training-only heads (an inference-form checkpoint): the %d "
                       "entries of %s keep their fresh initialisation", source,
                       len(missing_edges), ", ".join(heads))

    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state and k not in missing_edges]
    if unexpected:
        raise CheckpointMismatchError(
            f"{source}: key {unexpected[0]!r} is not in the model ({len(unexpected)} unexpected "
            f"keys): it was saved from another architecture; make the config's model section "
            f"(model.name, model.args) match it")
    if missing:
        raise CheckpointMismatchError(
            f"{source}: model key {missing[0]!r} is missing from the checkpoint ({len(missing)} "
            f"missing keys): it was saved from another architecture; make the config's model "
            f"section (model.name, model.args) match it")
    key = classifier_key(state, getattr(type(model), "family", None))
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
                f"config's model section (model.args) match it")
    model.load_state_dict(state, strict=not missing_edges)
    return model


def load_matching_weights(model: nn.Module, path: str, trust_checkpoint: bool = False
                          ) -> Tuple[List[str], List[str]]:
    """``model.init_from``: copy into ``model`` every tensor of the checkpoint ``path`` (ours or
    the authors' bare state_dict) whose name and shape match; the others keep their fresh
    initialisation (a classifier for another class count, heads the file lacks). Logs what was
    loaded and what was not, by module. Returns ``(loaded keys, fresh keys)``; an error when
    nothing matches (another architecture)."""
    state = extract_state_dict(load_checkpoint_file(path, trust_checkpoint), path)
    target = model.state_dict()
    loaded = [k for k, v in target.items() if k in state and tuple(state[k].shape) == tuple(v.shape)]
    fresh = [k for k in target if k not in loaded and not k.endswith("num_batches_tracked")]
    if not [k for k in loaded if not k.endswith("num_batches_tracked")]:
        raise CheckpointMismatchError(f"{path} (model.init_from) shares no tensor name and shape "
                                      f"with the model: it was saved from another architecture")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)

    # by top-level module; the classifier's module and the training-only heads one level deeper
    cls = type(model)
    key = classifier_key(target, getattr(cls, "family", None))
    deeper = tuple(p if p.endswith(".") else p + "." for p in
                   getattr(cls, "training_only_prefixes", ()) + ((key.split(".")[0],) if key else ()))

    def modules(keys):
        groups: Dict[str, int] = {}
        for k in keys:
            top = ".".join(k.split(".")[:2]) if k.startswith(deeper) else k.split(".")[0]
            groups[top] = groups.get(top, 0) + 1
        return ", ".join(f"{g} ({n})" for g, n in groups.items()) or "none"
    shapes = [k for k in fresh if k in state]
    logger.info("model.init_from %s: loaded %d of %d tensors: %s", path, len(loaded), len(target),
                modules(loaded))
    logger.info("model.init_from: %d tensors start fresh: %s%s", len(fresh), modules(fresh),
                f" ({len(shapes)} of them of another shape in the file, e.g. {shapes[0]}: "
                f"{tuple(state[shapes[0]].shape)} there, {tuple(target[shapes[0]].shape)} here)"
                if shapes else "")
    return loaded, fresh


def check_backbone_file(path: str) -> None:
    """FileNotFoundError naming ``model.pretrained`` when the backbone file ``path`` is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet backbone {path} (model.pretrained) does not exist: put "
                                f"resnet101-imagenet.pth there (README, 'Data sets and weights') "
                                f"or train from scratch with model.pretrained=''")


def load_imagenet_backbone(model: nn.Module, path: str, trust_checkpoint: bool = False) -> nn.Module:
    """Load the deep-stem ResNet-101 ImageNet weights (``resnet101-imagenet.pth``) into the backbone.

    ``fc.*`` is skipped; every backbone key of the model (stem and layer1..4, except
    ``num_batches_tracked``) must be matched with the same shape, else an error names the first
    unmatched key. The file is read by :func:`load_checkpoint_file` (``trust_checkpoint``).
    """
    check_backbone_file(path)
    state = extract_state_dict(load_checkpoint_file(path, trust_checkpoint), path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    target = model.state_dict()
    prefixes = tuple(getattr(type(model), "backbone_prefixes", ()))
    if not prefixes:
        raise CheckpointMismatchError(f"{type(model).__name__} declares no ImageNet backbone "
                                      f"(backbone_prefixes): {path} (model.pretrained) cannot load")
    backbone_keys = [k for k in target if k.startswith(prefixes)
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


# ----------------------------------------------------------------------------- the one format
@dataclass
class ModelSpec:
    """What travels with the weights: the family and its arguments, the classes, the input.

    ``description`` is the data set's whole description (``dml_csr.data.schemas.Schema``: flip
    pairs, palette, merged groups, headline), written into the file, so a data set of your own
    needs nothing else; files written before it held one name a built-in data set.
    ``schema()`` is that description with the file's class names.
    """

    family: str
    model_kwargs: Dict[str, Any]
    dataset: str
    class_tokens: List[str]
    class_names: List[str]
    crop_size: Tuple[int, int] = (473, 473)
    channel_order: str = "bgr"
    center_mode: str = "exact"
    mean: Tuple[float, float, float] = field(default=None)
    std: Tuple[float, float, float] = field(default=None)
    output_scale: float = 1.0          # logits at round(output_scale x crop) (eval.output_scale)
    description: Any = None            # the data set's Schema (None: the built-in ``dataset``)

    def __post_init__(self):
        from ..data.transforms import MEAN, STD
        self.crop_size = tuple(int(v) for v in self.crop_size)
        self.output_scale = float(self.output_scale)
        self.mean = tuple(float(v) for v in (MEAN if self.mean is None else self.mean))
        self.std = tuple(float(v) for v in (STD if self.std is None else self.std))
        if len(self.class_names) != len(self.class_tokens):
            raise CheckpointMismatchError(f"{len(self.class_names)} class names for "
                                          f"{len(self.class_tokens)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_tokens)

    @classmethod
    def for_dataset(cls, family: str, model_kwargs: Dict[str, Any], dataset,
                    **input_facts) -> "ModelSpec":
        """A spec whose classes are the data set's: ``dataset`` is a description (``Schema``)
        or the name of a built-in one."""
        schema = _as_schema(dataset)
        return cls(family, dict(model_kwargs), schema.name, list(schema.tokens),
                   list(schema.class_names), description=schema, **input_facts)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], source: str = "checkpoint") -> "ModelSpec":
        """The spec stored in one of our checkpoint dicts (both readable formats)."""
        if ckpt.get("format") not in READABLE_FORMATS:
            raise CheckpointMismatchError(
                f"{source} has checkpoint format {ckpt.get('format')!r}; this version reads "
                f"{list(READABLE_FORMATS)}")
        inp = dict(ckpt.get("input") or {})
        missing = [k for k in ("model_name", "model_kwargs", "dataset", "class_tokens")
                   if k not in ckpt]
        if missing:
            raise CheckpointMismatchError(f"{source} lacks the checkpoint fields {missing}")
        tokens = list(ckpt["class_tokens"])
        description = None
        if ckpt.get("schema") is not None:
            from ..data.schemas import Schema, SchemaError
            try:
                description = Schema.from_dict(ckpt["schema"], f"{source}'s description")
            except SchemaError as exc:
                raise CheckpointMismatchError(str(exc)) from None
        return cls(family=ckpt["model_name"], model_kwargs=dict(ckpt["model_kwargs"]),
                   dataset=ckpt["dataset"], class_tokens=tokens,
                   class_names=list(ckpt.get("class_names") or tokens),
                   crop_size=inp.get("crop_size", (473, 473)),
                   channel_order=inp.get("channel_order", "bgr"),
                   center_mode=inp.get("center_mode", "exact"), mean=inp.get("mean"),
                   std=inp.get("std"), output_scale=inp.get("output_scale", 1.0),
                   description=description)

    def with_input(self, crop_size: Optional[Sequence[int]] = None,
                   channel_order: Optional[str] = None) -> "ModelSpec":
        """This spec with the caller's explicit input facts (None keeps the file's)."""
        return dataclasses.replace(self, crop_size=self.crop_size if crop_size is None else tuple(crop_size),
                          channel_order=channel_order or self.channel_order)

    def with_dataset(self, dataset) -> "ModelSpec":
        """This spec with the classes of ``dataset`` (a description, or a built-in's name;
        every other fact kept)."""
        schema = _as_schema(dataset)
        return dataclasses.replace(self, dataset=schema.name, class_tokens=list(schema.tokens),
                                   class_names=list(schema.class_names), description=schema)

    def to_checkpoint(self) -> Dict[str, Any]:
        """The fields this spec writes into a checkpoint dict (and an ONNX file's metadata)."""
        return {"model_name": self.family, "model_kwargs": dict(self.model_kwargs),
                "dataset": self.dataset, "class_tokens": list(self.class_tokens),
                "class_names": list(self.class_names), "num_classes": self.num_classes,
                "schema": self.schema().to_dict(),
                "input": {"crop_size": list(self.crop_size), "channel_order": self.channel_order,
                          "center_mode": self.center_mode, "mean": list(self.mean),
                          "std": list(self.std), "output_scale": self.output_scale}}

    def schema(self):
        """The data set's description (flip pairs, palette, merged groups, headline) with this
        file's class names: the one the file carries, else the built-in ``dataset``."""
        schema = self.description if self.description is not None else _as_schema(self.dataset)
        if tuple(self.class_tokens) != schema.tokens:
            raise CheckpointMismatchError(
                f"the checkpoint's class tokens {list(self.class_tokens)} are not the "
                f"{self.dataset!r} description's {list(schema.tokens)}")
        return dataclasses.replace(schema, class_names=tuple(self.class_names))


def _as_schema(dataset):
    """``dataset`` as a description: a ``Schema`` as it is, a name as its built-in one (a name
    neither built in nor carried by the file: an error saying so)."""
    from ..data.schemas import SCHEMAS, Schema
    if isinstance(dataset, Schema):
        return dataset
    if dataset not in SCHEMAS:
        raise CheckpointMismatchError(
            f"data set {dataset!r} is not built in ({', '.join(sorted(SCHEMAS))}) and the file "
            f"carries no description of it: name the data root it was trained on (its "
            f"dataset.json holds the description)")
    return SCHEMAS[dataset]


def save_checkpoint(path: str, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec, *,
                    config: Optional[Mapping[str, Any]] = None, **extra: Any) -> None:
    """Write one of our checkpoints atomically (module docstring); ``extra`` entries (training
    state, scores) are stored beside the spec's fields."""
    ckpt: Dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": dict(state_dict),
                            **spec.to_checkpoint(), "torch_version": str(torch.__version__)}
    if config is not None:
        ckpt["config"] = dict(config)
    clash = set(extra) & set(ckpt)
    if clash:
        raise ValueError(f"save_checkpoint: extra entries {sorted(clash)} would replace the format's")
    ckpt.update(extra)
    save_torch(ckpt, path)


def release_dataset(path, num_classes: Optional[int], dataset: Optional[str] = None) -> str:
    """The data set of a bare release state_dict with ``num_classes`` classes.

    ``dataset`` given: it, when its schema has that class count. Not given: the only benchmark
    with that count (19: celebamask_hq); 11 classes are Helen or LaPa, which the file cannot tell
    apart, so the caller must choose. Errors name the file, the counts and the choices."""
    from ..data.schemas import datasets_with_classes, describe_class_count, get_schema

    if num_classes is None:
        from .dml_csr import DMLCSR
        raise ValueError(f"{path} is a bare state_dict without DML-CSR's classifier "
                         f"{DMLCSR.classifier.replace(chr(92), '')!r}: not a DML-CSR release "
                         f"checkpoint")
    if dataset:
        expected = get_schema(dataset).num_classes
        if expected != num_classes:
            raise ValueError(f"{path} predicts {num_classes} classes but data set {dataset!r} has "
                             f"{expected} ({describe_class_count(num_classes)}): pass the data set "
                             f"the checkpoint was trained on (--dataset, or dataset= in the API)")
        return dataset
    names = datasets_with_classes(num_classes)
    if len(names) == 1:
        logger.info("%s: a release state_dict with %d classes: the %s schema", path, num_classes,
                    names[0])
        return names[0]
    if names:
        choices = " or ".join(f"--dataset {n}" for n in names)
        raise ValueError(f"{path} is a release state_dict with {describe_class_count(num_classes)}"
                         f", which its weights cannot tell apart: pass {choices} (dataset= in the "
                         f"API)")
    raise ValueError(f"{path} is a release state_dict with {describe_class_count(num_classes)}")


def load_inference_model(checkpoint: Union[str, os.PathLike, Mapping[str, Any]], *,
                         dataset: Optional[str] = None, config=None, training: bool = False,
                         device: Union[str, torch.device] = "cpu", trust_checkpoint: bool = False
                         ) -> Tuple[nn.Module, ModelSpec]:
    """The one way to load a model for inference: ``(model in eval mode on device, spec)``.

    Args:
        checkpoint: a path, or a checkpoint already loaded (ours or a bare state_dict).
        dataset: the data set the caller expects: a description (``Schema``, e.g. a data root's
            ``layout.root_schema``) or a built-in's name. Ours: checked against the file (another
            class count is an error; the same count with another name is used, with a warning).
            A bare release state_dict: its data set (needed when the class count does not decide
            it: 11 classes are Helen or LaPa; 19 is CelebAMask-HQ).
        config: a resolved ``Config`` for files that do not describe themselves: a bare
            state_dict then takes the config's model family, arguments and input facts
            (``data.crop_size``, ``channel_order``, ``center_mode``) instead of the release's.
        training: build the training form (DML-CSR's edge heads; they start fresh when the file
            has none).
        trust_checkpoint: unpickle a file that ``weights_only`` refuses (it may run code; module
            docstring).
    """
    from ..data.schemas import get_schema
    from .registry import build_model, model_kwargs_from_config

    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
    ckpt = (load_checkpoint_file(source, trust_checkpoint)
            if isinstance(checkpoint, (str, os.PathLike)) else checkpoint)
    if isinstance(ckpt, Mapping) and "model_name" in ckpt:
        spec = ModelSpec.from_checkpoint(ckpt, source)
        name = getattr(dataset, "name", dataset)
        if dataset and name != spec.dataset:
            expected = _as_schema(dataset).num_classes
            if expected != spec.num_classes:
                raise ValueError(
                    f"{source} predicts {spec.num_classes} classes ({spec.dataset}) but data set "
                    f"{name!r} has {expected}: pass the data set it was trained on (or, to score "
                    f"it on another label set, a class map: tools/test.py --map)")
            logger.warning("%s was trained on %s; using the %s description as asked", source,
                           spec.dataset, name)
            spec = spec.with_dataset(dataset)
    else:
        state = extract_state_dict(ckpt, source)
        if config is not None:           # a wrong class count fails in load_model_weights, by key
            schema = _as_schema(dataset or config.data.dataset)
            d = config.data
            spec = ModelSpec.for_dataset(config.model.name, model_kwargs_from_config(
                config.model, schema.num_classes), schema, crop_size=d.crop_size,
                channel_order=d.channel_order, center_mode=d.center_mode,
                output_scale=config.eval.output_scale)
        else:
            name = release_dataset(source, state_num_classes(state, "dml_csr"),
                                   getattr(dataset, "name", dataset))
            # the release's input facts: 473 crops, BGR, and its crop geometry (whole-photo crops)
            spec = ModelSpec.for_dataset(
                "dml_csr", {"num_classes": get_schema(name).num_classes, **RELEASE_ARCHITECTURE},
                name, center_mode="released")
    # the normalisation backend is this machine's choice, not the weights': a file trained with
    # the compiled inplace-abn loads where the package is absent (same names, same maths)
    kwargs = dict(spec.model_kwargs)
    if kwargs.get("norm_backend", "auto") != "auto":
        kwargs["norm_backend"] = "auto"
    model = build_model(spec.family, kwargs, training=training)
    load_model_weights(model, ckpt, source=source)
    return model.to(device).eval(), spec
