"""The synthetic data set on disk: :func:`make_synthetic` writes a root in the project's layout,
:func:`is_synthetic_root` recognises one."""
import json
import logging
import re
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

from ...files import write_image, write_json, write_text
from ..layout import (SYNTHETIC_INFO, label_names_text, split_list_path, split_list_text,
                      write_identity)
from .face import DEFAULT_SIZE, draw_face, schema_for
from .noise import NOISE_KINDS, corrupt_label

__all__ = ["make_synthetic", "is_synthetic_root", "SPLITS", "INFO_NAME", "DEFAULT_COUNTS"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_COUNTS = {"train": 240, "valid": 40, "test": 40}
INFO_NAME = SYNTHETIC_INFO

_GENERATOR = "dml_csr.data.synthetic"
_FORMAT_VERSION = 1
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
_NOISE_STREAM = 3  # seed stream of the label corruption, apart from the image streams
_NAME_RE = re.compile(r"^(train|valid|test)_\d{5,}\.(jpg|png)$")
_SUBDIRS = ("images", "labels", "labels_clean")


def is_synthetic_root(path: Union[str, Path]) -> bool:
    """True if ``path`` holds output of :func:`make_synthetic` (its ``synthetic_info.json``)."""
    info = Path(path) / INFO_NAME
    try:
        return json.loads(info.read_text()).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _write_info(root: Path, info: dict) -> None:
    write_json(root / INFO_NAME, info)


def make_synthetic(out_dir: Union[str, Path], num_train: int = DEFAULT_COUNTS["train"],
                   num_valid: int = DEFAULT_COUNTS["valid"], num_test: int = DEFAULT_COUNTS["test"],
                   size: int = DEFAULT_SIZE, seed: int = 0, classes: int = 11,
                   noise_fraction: float = 0.0, noise_kinds: Sequence[str] = NOISE_KINDS,
                   overwrite: bool = False) -> dict:
    """Write a synthetic face-parsing data set in the project's layout.

    Layout (:mod:`dml_csr.data.layout`): ``dataset.json`` (``tool`` ``make_synthetic`` and the
    ``options`` below), ``label_names.txt``, ``{train,valid,test}_list.txt`` (lines
    ``images/NAME.jpg labels/NAME.png``), ``<split>/images/NAME.jpg`` (BGR JPEG),
    ``<split>/labels/NAME.png`` (uint8 ids) and ``synthetic_info.json``. With label noise the clean
    training labels of the corrupted images are kept in ``train/labels_clean/NAME.png``.

    Args:
        out_dir: output folder; must be empty, missing, or a previous output of this function,
            unless ``overwrite`` (then same-named files are replaced, other files kept).
        num_train, num_valid, num_test: images per split (names ``<split>_00000`` ...).
        size: image side in pixels.
        seed: base seed; the same arguments give byte-identical label PNGs.
        classes: 11 (Helen/LaPa order) or 19 (CelebAMask-HQ order).
        noise_fraction: fraction of TRAINING images (rounded to a count) whose labels are
            corrupted by :func:`corrupt_label`; validation and test labels are always clean.
        noise_kinds: the corruption kinds to draw from.
        overwrite: allow writing into a non-empty folder that is not a previous output.

    Returns:
        The dictionary written to ``synthetic_info.json``.
    """
    schema = schema_for(classes)
    counts = {"train": int(num_train), "valid": int(num_valid), "test": int(num_test)}
    if min(counts.values()) < 0:
        raise ValueError(f"image counts must be >= 0, got {counts}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
    noise_kinds = tuple(noise_kinds)
    if not noise_kinds or set(noise_kinds) - set(NOISE_KINDS):
        raise ValueError(f"noise_kinds must be a non-empty subset of {list(NOISE_KINDS)}, got {list(noise_kinds)}")

    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder")
    previous = is_synthetic_root(root)
    if root.exists() and any(root.iterdir()) and not previous and not overwrite:
        raise FileExistsError(
            f"{root} is not empty and is not a previous synthetic data set (no {INFO_NAME}); "
            "choose an empty or new folder, or pass overwrite=True / --overwrite (files of the "
            "same names are replaced, other files are kept)")
    root.mkdir(parents=True, exist_ok=True)

    n_noisy = int(round(noise_fraction * counts["train"]))
    noisy = set(np.random.default_rng([seed, _NOISE_STREAM]).choice(counts["train"], n_noisy, replace=False).tolist())
    info = {"generator": _GENERATOR, "format_version": _FORMAT_VERSION, "complete": False,
            "schema": schema.name, "classes": classes, "size": size, "seed": seed, "counts": counts,
            "noise_fraction": noise_fraction, "noise_kinds": list(noise_kinds),
            "num_corrupted": n_noisy, "clean_labels": "train/labels_clean" if n_noisy else None,
            "corrupted": []}
    _write_info(root, info)  # first, so that an interrupted run is still recognised as ours
    write_text(root / "label_names.txt", label_names_text(schema.tokens))
    write_identity(root, schema.name, tool="make_synthetic",
                   options={"seed": seed, "size": size, "classes": classes, "counts": counts,
                            "noise_fraction": noise_fraction, "noise_kinds": list(noise_kinds)})

    written = set()
    for split in SPLITS:
        folders = {"images": root / split / "images", "labels": root / split / "labels"}
        if split == "train" and n_noisy:
            folders["labels_clean"] = root / split / "labels_clean"
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            name = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
            image, label = draw_face(rng, size, classes)
            quality = int(rng.integers(75, 96))
            if split == "train" and i in noisy:
                write_image(folders["labels_clean"] / f"{name}.png", label)
                written.add(folders["labels_clean"] / f"{name}.png")
                label, record = corrupt_label(label, np.random.default_rng([seed, _NOISE_STREAM, i]),
                                              schema, noise_kinds)
                info["corrupted"].append({"name": name, **record})
            write_image(folders["images"] / f"{name}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            write_image(folders["labels"] / f"{name}.png", label)
            written.update((folders["images"] / f"{name}.jpg", folders["labels"] / f"{name}.png"))
        names = (f"{split}_{i:05d}" for i in range(counts[split]))
        write_text(split_list_path(root, split), split_list_text(names))

    if previous:  # drop what an earlier, larger or noisier run left behind; nothing else
        for split in SPLITS:
            for sub in _SUBDIRS:
                folder = root / split / sub
                if not folder.is_dir():
                    continue
                stale = [f for f in folder.iterdir() if _NAME_RE.match(f.name) and f not in written]
                for f in stale:
                    f.unlink()
                if stale:
                    logger.info("removed %d stale generated files from %s", len(stale), folder)
                if sub == "labels_clean" and not any(folder.iterdir()):
                    folder.rmdir()

    info["complete"] = True
    _write_info(root, info)
    return info
