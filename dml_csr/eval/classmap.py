"""Class mappings: score predictions made in one label set (or one id order) against another's labels.

A mapping is a small YAML file::

    name: celebamask_hq_bisenet
    source: [bg, skin, l_brow, r_brow, ...]    # the predictions' ids: a token per id, or the
                                               # name of a built-in data set (its tokens)
    target: celebamask_hq                      # the labels': a built-in name, or tokens
    classes:                                   # source token -> target token, or ignore;
      eye_g: ignore                            # a token of both sides maps to itself unless
                                               # listed (every other one must be listed)

Prediction ids go through the mapping's lookup table before scoring; pixels predicted as an
``ignore`` class leave the score (their label is dropped as if it were 255). Two uses:

- ``tools/evaluate.py --map MAP``: a prediction folder written in another project's id order
  (the three CelebAMask-HQ orders in circulation are shipped: ``configs/class_maps/``);
- ``tools/test.py --map MAP``: a model trained on one label set scored on another's labels
  (train on CelebAMask-HQ, test on LaPa): the source is the checkpoint's classes, the target
  the data root's.

``MAP`` is a path or the name of a shipped file. The result JSON records the mapping used
(``meta.class_map``).
"""
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from ..config import CONFIG_DIR
from ..data.schemas import SCHEMAS, Schema

__all__ = ["ClassMap", "load_class_map", "MAP_DIR", "IGNORE"]

MAP_DIR = os.path.join(CONFIG_DIR, "class_maps")
IGNORE = "ignore"


@dataclass(frozen=True)
class ClassMap:
    """A loaded mapping (module docstring): source and target tokens in id order, and the
    target token (or ``ignore``) of every source token."""

    name: str
    path: str
    source: Tuple[str, ...]
    target: Tuple[str, ...]
    to: Tuple[str, ...]                  # to[i]: the target token of source id i, or "ignore"

    def lut(self) -> np.ndarray:
        """uint8 (256,): source id -> target id; ``ignore`` (and unknown ids) -> 255."""
        lut = np.full(256, 255, np.uint8)
        index = {t: i for i, t in enumerate(self.target)}
        for i, t in enumerate(self.to):
            if t != IGNORE:
                lut[i] = index[t]
        return lut

    def apply(self, pred: np.ndarray, gt: Optional[np.ndarray]):
        """``(pred in target ids, gt)``: pixels predicted as an ignore class get label 255 (they
        leave the score) and prediction 0."""
        mapped = self.lut()[pred]
        dropped = mapped == 255
        if gt is not None and dropped.any():
            gt = np.where(dropped, np.uint8(255), gt)
        return np.where(dropped, np.uint8(0), mapped), gt

    def to_dict(self) -> Dict[str, Any]:
        """What a result records: the file, the name and every source -> target pair."""
        return {"name": self.name, "file": self.path,
                "classes": {s: t for s, t in zip(self.source, self.to)}}


def _tokens(value, side: str, path: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        if value not in SCHEMAS:
            raise ValueError(f"{path}: {side} {value!r} is not a built-in data set "
                             f"({', '.join(sorted(SCHEMAS))}); give its tokens as a list")
        return SCHEMAS[value].tokens
    if isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value):
        if len(set(value)) != len(value):
            raise ValueError(f"{path}: {side} lists a token twice")
        return tuple(value)
    raise ValueError(f"{path}: {side} must be a built-in data set's name or a list of tokens")


def _resolve(name_or_path: Union[str, os.PathLike]) -> str:
    path = os.fspath(name_or_path)
    if os.path.isfile(path):
        return path
    shipped = os.path.join(MAP_DIR, f"{path}.yaml")
    if os.path.isfile(shipped):
        return shipped
    known = sorted(n[:-5] for n in os.listdir(MAP_DIR) if n.endswith(".yaml"))
    raise FileNotFoundError(f"class map {path} is neither a file nor a shipped map "
                            f"({', '.join(known)})")


def load_class_map(name_or_path: Union[str, os.PathLike],
                   source: Optional[Union[Schema, Sequence[str]]] = None,
                   target: Optional[Union[Schema, Sequence[str]]] = None) -> ClassMap:
    """Read and check a mapping. ``source`` / ``target``: the tokens (or descriptions) the
    caller has (the checkpoint's classes, the data root's): they must be the file's, else a
    ValueError naming the file and both lists."""
    path = _resolve(name_or_path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read as YAML ({exc})") from None
    if not isinstance(data, dict) or "source" not in data or "target" not in data:
        raise ValueError(f"{path}: a class map needs 'source' and 'target' (and 'classes')")
    src, tgt = _tokens(data["source"], "source", path), _tokens(data["target"], "target", path)
    classes = data.get("classes") or {}
    if not isinstance(classes, dict):
        raise ValueError(f"{path}: 'classes' must map source tokens to target tokens")
    for s, t in classes.items():
        if s not in src:
            raise ValueError(f"{path}: classes: {s!r} is not a source token")
        if t != IGNORE and t not in tgt:
            raise ValueError(f"{path}: classes: {s!r} -> {t!r}, which is not a target token "
                             f"({', '.join(tgt)}) nor 'ignore'")
    missing = [s for s in src if s not in classes and s not in tgt]
    if missing:
        raise ValueError(f"{path}: source tokens {missing} have no target: map each to a target "
                         f"token or to 'ignore' under 'classes'")
    for side, have, want in (("source", source, src), ("target", target, tgt)):
        if have is not None:
            tokens = tuple(have.tokens if isinstance(have, Schema) else have)
            if tokens != want:
                raise ValueError(f"{path}: its {side} is {list(want)}, but the "
                                 f"{'model predicts' if side == 'source' else 'labels hold'} "
                                 f"{list(tokens)}")
    to = tuple(str(classes.get(s, s)) for s in src)
    return ClassMap(str(data.get("name") or os.path.splitext(os.path.basename(path))[0]),
                    os.path.abspath(path), src, tgt, to)
