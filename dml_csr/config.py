"""Configuration: dataclasses with defaults in code, YAML overlays, dotted ``key=value`` overrides.

Resolution order (later wins):

1. the defaults below (the paper's settings; no data set: a config file names one);
2. the preset overlay ``configs/presets/<preset>.yaml`` (``paper`` or ``released``: only the
   keys where the paper and the authors' release disagree, docs/divergences.md); the preset is
   named on the command line, else by the experiment file, else ``paper``;
3. the experiment file (``configs/NAME.yaml`` or a path), which may name ``_base_`` files
   (relative to itself) that are applied before it: a value a file sets explicitly wins over
   the preset's, as it would on the command line;
4. command-line ``section.key=value`` overrides (values parsed as YAML).

``model.args`` are the family's constructor arguments, checked by the family: a layer that names
another ``model.name`` than the layers before starts from that family's defaults (the earlier
layers' arguments were another family's). Keys of earlier versions (``model.layers``,
``model.width_mult``, ``model.context``, ``model.norm_backend``, ``model.fp_liif``) are read as
``model.args`` keys, with a warning.

Named configs, presets and class maps are read from the checkout's ``configs/``; an install
(``pip install .``, a wheel) carries the same files inside the package (``CONFIG_DIR``). A config
named by path is read from that path, wherever the command runs.

Unknown keys and wrong types are rejected with the dotted key in the message. The resolved config
is saved beside the checkpoints of a run, and inside every checkpoint.
"""
import dataclasses
import difflib
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, get_args, get_origin, get_type_hints

import yaml

__all__ = ["Config", "ModelConfig", "DataConfig", "LossConfig", "TrainConfig", "EvalConfig",
           "load_config", "config_from_dict", "config_to_dict", "CONFIG_DIR", "ConfigError"]

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)


def _config_dir() -> str:
    """Where the named configs, presets and class maps are: the copy of configs/ that an install
    (``pip install .``, a wheel) ships inside the package (setup.py), else the checkout's configs/
    (a clone, an editable install), the one place users edit."""
    installed = os.path.join(PACKAGE_DIR, "configs")
    return installed if os.path.isdir(installed) else os.path.join(REPO_ROOT, "configs")


CONFIG_DIR = _config_dir()


logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = "dml_csr"                 # a model family (models/registry.py): dml_csr | fp_liif
                                          # | one added by register_family
    # the family's constructor arguments, checked by the family (ParsingModel.check_args); empty
    # = its defaults. DML-CSR: layers ([3, 4, 23, 3]: ResNet-101), width_mult (1.0), context
    # (ddgcn | the ablation modules of configs/ablations), norm_backend (ABN: auto | native |
    # compiled | memory); FP-LIIF: the keyword arguments of dml_csr.models.FPLIIF
    args: Dict[str, Any] = field(default_factory=dict)
    pretrained: str = ""                  # path to resnet101-imagenet.pth ("" = random init)
    init_from: str = ""                   # start from this checkpoint (ours or the authors'):
                                          # every tensor whose name and shape match loads, the
                                          # rest (another class count's heads) starts fresh


# Keys of earlier versions, read as what they became (files and checkpoints written before
# model.args): model.KEY -> model.args.KEY; model.fp_liif's mapping -> model.args.
LEGACY_MODEL_ARGS = ("layers", "width_mult", "context", "norm_backend")


@dataclass
class DataConfig:
    dataset: str = ""                     # a built-in data set, or one the root's dataset.json
                                          # declares (tools/prepare_data.py custom); empty:
                                          # the one the root declares (layout.root_schema)
    root: str = ""                        # the prepared data root
    crop_size: List[int] = field(default_factory=lambda: [473, 473])   # (h, w)
    augment: str = "paper"                # paper | released | none
    flip: bool = False                    # neither paper nor release flips
    channel_order: str = "bgr"            # bgr (the release, official checkpoints) | rgb
    center_mode: str = "exact"            # exact | released (the release's crop geometry, int centre back)
    edge_width: int = 1
    batch_size: int = 28                  # global batch (split over processes)
    workers: int = 4                      # data-loader workers per process
    train_split: str = "train"
    val_split: str = "valid"
    check: bool = True                    # check every train/val image and label before training


@dataclass
class LossConfig:
    # Multi-task stage (eq. 2-5)
    parse_ce_weight: float = 1.0          # lambda0 * CE (the KL's weight in the CSR stage)
    parse_lovasz_weight: float = 1.0      # lambda0 * Lovasz
    binary_edge_weight: float = 1.0       # lambda1
    category_edge_weight: float = 1.0     # lambda2
    binary_attention_weight: float = 4.0  # lambda3
    category_attention_weight: float = 1.0  # lambda4
    category_edge_weighting: str = "balanced"   # balanced | frequency (release)
    category_attention_mode: str = "eq4"  # eq4 | released
    class_weights: List[float] = field(default_factory=list)  # w_j of eq. 4 ([] = all ones)
    tasks: List[str] = field(default_factory=lambda: [
        "binary_edge", "binary_attention", "category_edge", "category_attention"])
    # Self-distillation stage (eq. 7)
    distill_parse_weight: float = 1.0     # alpha0
    distill_binary_weight: float = 1.0    # alpha1
    distill_category_weight: float = 0.1  # alpha2
    temperature: float = 1.0
    soft_targets: str = "teacher"         # teacher | released (logits mixed with one-hot, 1/(m+1))
    csr_attention: bool = False           # release: attention losses also in the CSR stage


@dataclass
class TrainConfig:
    epochs: int = 200                     # total = multi-task epochs + cycles * cycle_epochs
    cycles: int = 5                       # K self-regulation cycles
    cycle_epochs: int = 10                # N epochs per cycle
    optimizer: str = "sgd"                # sgd (DML-CSR, paper) | adamw (FP-LIIF configs; wd 0 = Adam)
    lr: float = 1e-3
    momentum: float = 0.9                 # SGD momentum; AdamW uses betas (0.9, 0.999)
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    poly_horizon: str = "multitask"       # poly decay over: multitask (the stage) | total (release)
    csr_lr: float = 1e-5                  # cosine from this value, restarted every cycle
    csr_lr_min: float = 0.0
    csr_lr_schedule: str = "cosine_epoch"  # cosine_epoch | cosine_iter | released
    teacher: str = "eq6"                  # eq6 | released (running mean of end-of-cycle weights)
    sync_graph_norms: bool = True         # under DDP, the DDGCN's BatchNorm1d layers use the
                                          # global batch's statistics (the release: per GPU)
    bn_reestimate: bool = True            # re-estimate ABN/BN statistics of the aggregated model
    bn_reestimate_batches: int = 0        # 0 = the whole training set
    seed: int = 0
    deterministic: bool = False
    precision: str = "fp32"               # fp32 | bf16 (autocast, CPU and CUDA) | fp16 (autocast and a
                                          # grad scaler; CUDA, or slowly the CPU); losses and CSR
                                          # stay float32
    amp: bool = False                     # old switch: true = precision fp16
    checkpoint_backbone: bool = False     # recompute the backbone stages in the backward pass
    cpu_malloc_mmap_kb: int = 0           # glibc, CPU training: mmap tensors from this size, so
                                          # freed activations return to the system (0: off;
                                          # 128: the least memory, slower: docs/training.md)
    log_interval: int = 10                # iterations between log lines
    image_log_interval: int = 1           # epochs between TensorBoard image grids (0 = never)
    val_interval: int = 1                 # epochs between validations
    max_iters_per_epoch: int = 0          # 0 = full epoch (a cap for smoke tests)
    query_samples: int = 0                # FP-LIIF: random output pixels per image in the training
                                          # loss (LIIF's sampled queries); 0 = the whole output grid


@dataclass
class EvalConfig:
    batch_size: int = 8
    workers: int = 2
    # test-time augmentation of tools/test.py and tools/train.py --test (validation never uses it)
    flip: bool = False                    # test-time flip (swaps left/right channels)
    scales: List[float] = field(default_factory=lambda: [1.0])
    output_scale: float = 1.0             # logits at output_scale x the crop before the warp back
                                          # (FP-LIIF decodes there directly; 2.0: 256 crop -> 512)


@dataclass
class Config:
    name: str = "default"
    preset: str = "paper"                 # paper | released
    output_dir: str = "runs/default"
    row: str = ""                         # paper table row (dml_csr/eval/paper.py), for meta.row
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def multitask_epochs(self) -> int:
        return self.train.epochs - self.train.cycles * self.train.cycle_epochs


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"config key {key!r} expects {tp.__name__}, got {value!r}")
        return value
    if origin in (list, List, tuple, Sequence):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    return value


def _merge_into(obj: Any, data: Dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"did you mean {prefix + close[0]!r}? " if close else ""
            raise ConfigError(f"unknown config key {dotted!r}: {hint}known keys in "
                              f"{prefix.rstrip('.') or 'the top level'}: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a section; got {value!r}")
            _merge_into(current, value, dotted + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            # a free-form mapping (e.g. model.args): later layers and overrides update it key
            # by key instead of replacing it, like the sections
            setattr(obj, key, _merge_mapping(current, _check_type(value, hints[key], dotted)))
        else:
            setattr(obj, key, _check_type(value, hints[key], dotted))


def _merge_mapping(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (_merge_mapping(out[key], value)
                    if isinstance(out.get(key), dict) and isinstance(value, dict) else value)
    return out


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _layers_of(path: str) -> List[Dict[str, Any]]:
    """The YAML mappings of ``path`` and of its ``_base_`` files, bases first."""
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    out: List[Dict[str, Any]] = []
    for base in bases:
        out += _layers_of(os.path.join(os.path.dirname(path), base))
    return out + [data]


def resolve_config_path(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    candidate = os.path.join(CONFIG_DIR, name_or_path + ("" if name_or_path.endswith(".yaml") else ".yaml"))
    if os.path.isfile(candidate):
        return candidate
    names = sorted(n[:-5] for n in os.listdir(CONFIG_DIR) if n.endswith(".yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a name in "
                            f"{CONFIG_DIR}: give a YAML path or one of {', '.join(names)}")


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["train.lr=0.01", "data.flip=true"]`` -> nested dict (values parsed as YAML)."""
    nested: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML "
                              f"({reason}); quote it or fix the brackets") from exc
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def _legacy_keys(layer: Dict[str, Any], source: str) -> Dict[str, Any]:
    """``layer`` with the model keys of earlier versions moved into ``model.args``
    (``LEGACY_MODEL_ARGS``, ``model.fp_liif``); a warning names each one once per source."""
    model = layer.get("model")
    if not isinstance(model, dict):
        return layer
    old = [k for k in model if k in LEGACY_MODEL_ARGS or k == "fp_liif"]
    if not old:
        return layer
    model = dict(model)
    args = model.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"config key 'model.args' expects a mapping, got {args!r}")
    moved = {}
    for key in old:
        value = model.pop(key)
        if key == "fp_liif":
            if not isinstance(value, dict):
                raise ConfigError(f"config key 'model.fp_liif' expects a mapping, got {value!r}")
            moved.update(value)
        else:
            moved[key] = value
    model["args"] = {**moved, **args}          # model.args, where both are given, wins
    logger.warning(
        "%s: %s %s now model.args (read as model.args.%s)", source,
        ", ".join(f"model.{k}" for k in old), "is" if len(old) == 1 else "are",
        ", model.args.".join("KEY" if k == "fp_liif" else k for k in old))
    return {**layer, "model": model}


def config_from_dict(data: Dict[str, Any]) -> Config:
    cfg = Config()
    _merge_into(cfg, _legacy_keys(data, "a stored config"))
    return cfg


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return asdict(cfg)


def load_config(name_or_path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Resolve a config: defaults < preset overlay < experiment file (with bases) < overrides."""
    layers = _layers_of(resolve_config_path(name_or_path)) if name_or_path else []
    cli = parse_overrides(overrides)
    preset = cli.get("preset") or next((l["preset"] for l in reversed(layers) if "preset" in l), "paper")
    preset_path = os.path.join(CONFIG_DIR, "presets", f"{preset}.yaml")
    if not os.path.isfile(preset_path):
        raise ConfigError(f"unknown preset {preset!r}: no file {preset_path}")
    cfg = Config()
    sources = [preset_path] + [name_or_path] * len(layers) + ["the command line"]
    for layer, source in zip([_read_yaml(preset_path)] + layers + [cli], sources):
        layer = _legacy_keys(layer, source)
        name = (layer.get("model") or {}).get("name") if isinstance(layer.get("model"), dict) else None
        if name is not None and name != cfg.model.name:
            cfg.model.args = {}      # the arguments of the family before do not apply to this one
        _merge_into(cfg, layer)
    cfg.preset = preset
    validate(cfg)
    _warn_unread_csr_lr(cfg, list(zip(layers + [cli], sources[1:])))
    return cfg


def _warn_unread_csr_lr(cfg: Config, layers: Sequence[Any]) -> None:
    """One warning when an experiment file or the command line sets ``train.csr_lr`` or
    ``train.csr_lr_min`` that the ``released`` CSR schedule does not read."""
    if cfg.train.csr_lr_schedule != "released":
        return
    unread = [f"train.{key} ({source})" for layer, source in layers
              for key in ("csr_lr", "csr_lr_min")
              if isinstance(layer.get("train"), dict) and key in layer["train"]]
    if unread:
        logger.warning("%s %s not read: train.csr_lr_schedule=released (the released preset) "
                       "derives the CSR learning rate from train.lr as the release does (cosine "
                       "from lr / 2 to lr / 100); use preset=paper or train.csr_lr_schedule="
                       "cosine_epoch to set it", ", ".join(dict.fromkeys(unread)),
                       "is" if len(unread) == 1 else "are")


def validate(cfg: Config) -> None:
    from .models.registry import FAMILIES
    choices = {
        "preset": (cfg.preset, ("paper", "released")),
        "model.name": (cfg.model.name, tuple(FAMILIES)),
        "data.augment": (cfg.data.augment, ("paper", "released", "none")),
        "data.channel_order": (cfg.data.channel_order, ("bgr", "rgb")),
        "data.center_mode": (cfg.data.center_mode, ("exact", "released")),
        "loss.category_edge_weighting": (cfg.loss.category_edge_weighting, ("balanced", "frequency")),
        "loss.category_attention_mode": (cfg.loss.category_attention_mode, ("eq4", "released")),
        "loss.soft_targets": (cfg.loss.soft_targets, ("teacher", "released")),
        "train.csr_lr_schedule": (cfg.train.csr_lr_schedule, ("cosine_epoch", "cosine_iter", "released")),
        "train.poly_horizon": (cfg.train.poly_horizon, ("multitask", "total")),
        "train.teacher": (cfg.train.teacher, ("eq6", "released")),
        "train.optimizer": (cfg.train.optimizer, ("sgd", "adamw")),
        "train.precision": (cfg.train.precision, ("fp32", "bf16", "fp16")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key {key!r} must be one of {allowed}, got {value!r}")
    try:
        cfg.model.args = FAMILIES[cfg.model.name].check_args(cfg.model.args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known_tasks = {"binary_edge", "binary_attention", "category_edge", "category_attention"}
    bad = [t for t in cfg.loss.tasks if t not in known_tasks]
    if bad:
        raise ConfigError(f"config key 'loss.tasks' has unknown task {bad[0]!r}; known: {sorted(known_tasks)}")
    if cfg.multitask_epochs < 0:
        raise ConfigError(f"train.epochs ({cfg.train.epochs}) is smaller than train.cycles x "
                          f"train.cycle_epochs ({cfg.train.cycles} x {cfg.train.cycle_epochs})")
    if len(cfg.data.crop_size) != 2:
        raise ConfigError(f"config key 'data.crop_size' needs (h, w), got {cfg.data.crop_size}")
    if not cfg.eval.output_scale > 0:
        raise ConfigError(f"config key 'eval.output_scale' must be positive, "
                          f"got {cfg.eval.output_scale}")
    q = cfg.train.query_samples
    if q < 0 or (q > 0 and not FAMILIES[cfg.model.name].decodes_any_size):
        raise ConfigError(f"config key 'train.query_samples' must be >= 0 and needs a model family "
                          f"that decodes at any point (fp_liif), got {q} with {cfg.model.name!r}")
    if q > cfg.data.crop_size[0] * cfg.data.crop_size[1]:
        raise ConfigError(f"config key 'train.query_samples' ({q}) exceeds the pixels of a "
                          f"{cfg.data.crop_size[0]}x{cfg.data.crop_size[1]} crop")


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically (``files.write_text``)."""
    from .files import write_text
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
