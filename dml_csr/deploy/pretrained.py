"""The authors' official DML-CSR checkpoints by name, read from a folder the user fills by hand.

The authors publish one Google Drive archive (:data:`ARCHIVE_URL`, linked from the README of
insightface's ``parsing/dml_csr/``); unpacked it is a folder ``DML_CSR/`` holding
``dml_csr_celebA.pth``, ``dml_csr_helen.pth`` and ``dml_csr_lapa.pth``. Each is a bare state_dict
of the release's inference network ``DML_CSR(num_classes, InPlaceABN, False)`` (no edge heads,
keys possibly prefixed ``module.``) that expects 473 x 473 crops in BGR order.

Nothing is ever downloaded: :func:`find_pretrained` looks for the file in ``weights_dir`` (or
``$DMLCSR_WEIGHTS``, then ``./pretrained``), directly or in its ``DML_CSR/`` subfolder, and says
exactly where to put it when it is missing; :func:`load_pretrained` loads it through
:func:`~dml_csr.models.checkpoint.load_inference_model` and checks the file against the registry.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch.nn as nn

from ..models.checkpoint import (CheckpointMismatchError, CheckpointReadError, ModelSpec,
                                 extract_state_dict, load_checkpoint_file, load_inference_model,
                                 state_num_classes)

__all__ = ["PretrainedModel", "PRETRAINED", "find_pretrained", "load_pretrained", "ARCHIVE_URL",
           "ARCHIVE_FOLDER", "WEIGHTS_ENV", "DEFAULT_WEIGHTS_DIR"]

ARCHIVE_URL = "https://drive.google.com/file/d/1-PjUts1AMzXNyvw3VaJQmg43GJbfEpEQ/view?usp=sharing"
ARCHIVE_FOLDER = "DML_CSR"          # the folder the archive unpacks to
WEIGHTS_ENV = "DMLCSR_WEIGHTS"      # the folder searched when no weights_dir is given
DEFAULT_WEIGHTS_DIR = "pretrained"  # then this one, relative to the working directory
RELEASE_SCHEMA = "bare release state_dict, inference network without edge heads"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class PretrainedModel:
    """One official checkpoint of the authors' archive.

    Attributes:
        name: what users ask for (``dml-csr-lapa``).
        filename: the file's name in the archive (``dml_csr_lapa.pth``).
        dataset: the data set id of ``dml_csr.data.schemas`` (``lapa``).
        num_classes: the class count of the file's classifier (``layer6.conv4.weight``).
        schema: what the file holds.
        crop_size: the network's input crop (H, W).
        channel_order: the crop's channel order (``bgr``: cv2-read images, ImageNet mean/std
            applied to B, G, R in that order).
        archive_url: where the authors publish it (downloaded by hand).
        archive_folder: the folder inside the archive that holds the file.
    """

    name: str
    filename: str
    dataset: str
    num_classes: int
    schema: str = RELEASE_SCHEMA
    crop_size: Tuple[int, int] = (473, 473)
    channel_order: str = "bgr"
    archive_url: str = ARCHIVE_URL
    archive_folder: str = ARCHIVE_FOLDER


PRETRAINED: Dict[str, PretrainedModel] = {m.name: m for m in (
    PretrainedModel("dml-csr-lapa", "dml_csr_lapa.pth", "lapa", 11),
    PretrainedModel("dml-csr-helen", "dml_csr_helen.pth", "helen", 11),
    PretrainedModel("dml-csr-celebamask-hq", "dml_csr_celebA.pth", "celebamask_hq", 19),
)}


def _info(name: str) -> PretrainedModel:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}: choose one of "
                         f"{', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def _search_dirs(weights_dir: Optional[PathLike]) -> List[str]:
    """The folders searched, in order (absolute paths, duplicates dropped)."""
    if weights_dir is not None:
        dirs = [os.fspath(weights_dir)]
    else:
        env = os.environ.get(WEIGHTS_ENV, "")
        dirs = ([env] if env else []) + [DEFAULT_WEIGHTS_DIR]
    out: List[str] = []
    for d in dirs:
        d = os.path.abspath(os.path.expanduser(d))
        if d not in out:
            out.append(d)
    return out


def find_pretrained(name: str, weights_dir: Optional[PathLike] = None, option: str = "weights_dir"
                    ) -> Tuple[str, PretrainedModel]:
    """``(path, info)`` of official model ``name`` (a key of :data:`PRETRAINED`); reads no weights.
    ``option``: the name the error gives the folder argument (``--weights-dir`` on a command line).

    Each folder (``weights_dir``; when None, ``$DMLCSR_WEIGHTS`` if set, then ``./pretrained``) is
    searched for ``info.filename`` directly, then in its ``DML_CSR/`` subfolder (how the archive
    unpacks); the first file found wins.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        FileNotFoundError: the file is in none of the folders; the one-line message names the
            file, every folder searched and the archive to download by hand.
    """
    info = _info(name)
    dirs = _search_dirs(weights_dir)
    for d in dirs:
        for folder in (d, os.path.join(d, info.archive_folder)):
            path = os.path.join(folder, info.filename)
            if os.path.isfile(path):
                return path, info
    where = " or ".join(f"{d} (or its {info.archive_folder}/ subfolder)" for d in dirs)
    given = f"{option} FOLDER" if option.startswith("-") else f"{option}=FOLDER"
    hint = (f"or pass {given} or set {WEIGHTS_ENV}=FOLDER" if weights_dir is None
            else f"or pass the folder that holds it as {option}")
    raise FileNotFoundError(
        f"official model {name!r} not found: put {info.filename} in {where}; {hint}. The authors "
        f"publish it in the archive {info.archive_url} (folder {info.archive_folder}/, linked "
        f"from insightface's parsing/dml_csr README), which must be downloaded by hand: nothing "
        f"is downloaded here")


def _file_num_classes(path: str, trust_checkpoint: bool = False) -> Optional[int]:
    """The classifier's class count of the checkpoint at ``path`` (memory-mapped when the file
    allows it, so the weights are not read twice)."""
    try:
        obj = load_checkpoint_file(path, trust_checkpoint, mmap=True)
    except CheckpointReadError:  # a legacy file cannot be mapped: read it, or name the damage
        obj = load_checkpoint_file(path, trust_checkpoint)
    return state_num_classes(extract_state_dict(obj, path))


def load_pretrained(name: str, weights_dir: Optional[PathLike] = None,
                    trust_checkpoint: bool = False) -> Tuple[nn.Module, ModelSpec]:
    """``(model in eval mode on the CPU, spec)`` of official model ``name``.

    The file is found by :func:`find_pretrained` and loaded by
    ``load_inference_model(path, dataset=info.dataset)``; ``trust_checkpoint``: unpickle a file
    that ``weights_only`` refuses (the authors' files never need it; it may run code).

    Raises:
        ValueError, FileNotFoundError: as :func:`find_pretrained`.
        CheckpointMismatchError: the file's class count is not the model's (both counts and the
            file named), or the loaded spec's crop size, channel order or class count differs
            from the registry's.
    """
    path, info = find_pretrained(name, weights_dir)
    found = _file_num_classes(path, trust_checkpoint)
    if found != info.num_classes:
        what = "no DML-CSR classifier (layer6.conv4.weight)" if found is None else f"{found} classes"
        raise CheckpointMismatchError(
            f"{path} has {what}, but {info.name} ({info.dataset}) has {info.num_classes}: it is "
            f"not the authors' {info.filename}; put that file there (from {info.archive_url})")
    model, spec = load_inference_model(path, dataset=info.dataset,
                                       trust_checkpoint=trust_checkpoint)
    for fact, got, want in (("crop size", tuple(spec.crop_size), tuple(info.crop_size)),
                            ("channel order", spec.channel_order, info.channel_order),
                            ("class count", spec.num_classes, info.num_classes)):
        if got != want:
            raise CheckpointMismatchError(
                f"{path} describes {fact} {got!r}, but the official {info.name} has {want!r}: "
                f"it is not the authors' {info.filename}")
    return model, spec
