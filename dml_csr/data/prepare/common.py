"""What every preparer shares on the input side: the error, the report, the plan of samples, the
readers of raw files and folders.

A preparer (``helen``, ``lapa``, ``celebamask_hq``) turns its raw download into a :data:`Plan`
(output split -> :class:`Item` list) and a converter (an :class:`Item` -> the two output files);
:func:`dml_csr.data.prepare.publish.run_plan` then writes the tree.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import cv2
import numpy as np

from ...files import read_image as read_file_image

__all__ = ["PathLike", "EXPECTED_COUNTS", "LINK_MODES", "PrepareError", "PrepareReport", "Item",
           "Plan", "Converter", "read_image", "read_gray", "read_id_map", "size_text", "find_root",
           "list_dir", "read_lines", "pair_items", "pair_folders", "check_link"]

PathLike = Union[str, os.PathLike]

# Published split sizes; a prepared tree with other counts gets a warning (not an error, so that
# subsets can be prepared on purpose). The relabelled HELEN* has no published counts to check.
EXPECTED_COUNTS: Dict[str, Dict[str, int]] = {
    "celebamask_hq": {"train": 24183, "valid": 2993, "test": 2824},
    "lapa": {"train": 18176, "valid": 2000, "test": 2000},
    "helen": {"train": 2000, "valid": 230, "test": 100},  # original release (paper split)
}
LINK_MODES = ("copy", "hardlink", "symlink")


class PrepareError(RuntimeError):
    """A raw input is missing, unreadable or malformed, or the output location is unsafe."""


@dataclass
class PrepareReport:
    """What a preparation run produced.

    Attributes:
        dataset: schema name (``helen``, ``lapa``, ``celebamask_hq``).
        out_dir: the prepared root.
        counts: samples per split (the number of lines of ``<split>_list.txt``).
        written: samples (re)written in this run, per split.
        skipped: samples already complete from an earlier run, per split.
        warnings: everything worth a look (count mismatches, an empty split, leftovers).
    """

    dataset: str
    out_dir: Path
    counts: Dict[str, int]
    written: Dict[str, int]
    skipped: Dict[str, int]
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.dataset} -> {self.out_dir}"]
        for split, n in self.counts.items():
            lines.append(f"  {split:<12} {n:>6}  (written {self.written[split]}, "
                         f"already done {self.skipped[split]})")
        return "\n".join(lines)


@dataclass(frozen=True)
class Item:
    """One sample to produce: a raw image and its label sources as (class id, path) pairs.

    The meaning of ``labels`` depends on the converter: one id map (class id unused), the eleven
    Helen grey-level maps, or the CelebAMask-HQ part masks present for this image.
    """

    name: str
    image: Path
    labels: Tuple[Tuple[int, Path], ...]
    image_ext: str = ".jpg"          # of the published image (verbatim copies keep theirs)


Plan = Dict[str, List[Item]]  # output split -> samples, in list-file order

Converter = Callable[[Tuple[Item, Path, Path]], bool]


def _read(path: Path, flags: int) -> np.ndarray:
    """``files.read_image`` with its refusals (pixel limit, truncation, decoder errors) as
    :class:`PrepareError`."""
    try:
        return read_file_image(path, flags)
    except (ValueError, OSError) as e:
        raise PrepareError(f"{path}: cannot be read as an image: "
                           f"{str(e).replace(f'{path}: ', '', 1)}") from None


def read_image(path: Path) -> np.ndarray:
    return _read(path, cv2.IMREAD_COLOR)


def read_gray(path: Path) -> np.ndarray:
    return _read(path, cv2.IMREAD_GRAYSCALE)


def read_id_map(path: Path, num_classes: int, ignore_ok: bool = False) -> np.ndarray:
    """A label PNG that must already hold class ids: single channel, uint8, ids < num_classes
    (and 255, the ignore value, when ``ignore_ok``)."""
    label = _read(path, cv2.IMREAD_UNCHANGED)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise PrepareError(f"{path}: label must be a single-channel 8-bit PNG, got shape "
                           f"{label.shape} dtype {label.dtype}")
    out = label >= num_classes
    if ignore_ok:
        out &= label != 255
    bad = np.unique(label[out])
    if bad.size:
        allowed = f"0..{num_classes - 1}" + (" and 255 (ignored)" if ignore_ok else "")
        raise PrepareError(f"{path}: label ids {bad.tolist()} outside {allowed}")
    return label


def size_text(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def find_root(raw_dir: Path, subfolder: str, marker: str) -> Path:
    """``raw_dir`` itself when it holds ``marker``, else ``raw_dir/subfolder`` when that does
    (the archives unpack into a folder of their own)."""
    if not raw_dir.is_dir():
        raise PrepareError(f"{raw_dir}: raw directory not found")
    if (raw_dir / marker).exists() or not (raw_dir / subfolder / marker).exists():
        return raw_dir
    return raw_dir / subfolder


def list_dir(directory: Path) -> List[Path]:
    if not directory.is_dir():
        raise PrepareError(f"{directory}: directory not found")
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def read_lines(path: Path) -> List[Tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, stripped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"{path}: cannot be read: {e}") from e
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def pair_items(images: Dict[str, Path], labels: Dict[str, Path], expected_label, expected_image
               ) -> List[Item]:
    """Items for names present on both sides; the first unmatched file stops the run, naming the
    file it expected (``expected_label(name)`` / ``expected_image(name)``)."""
    for name in sorted(images.keys() - labels.keys()):
        raise PrepareError(f"{images[name]}: image without label (expected {expected_label(name)})")
    for name in sorted(labels.keys() - images.keys()):
        raise PrepareError(f"{labels[name]}: label without image (expected {expected_image(name)})")
    return [Item(name, images[name], ((0, labels[name]),)) for name in sorted(images)]


def pair_folders(images_dir: Path, labels_dir: Path) -> List[Item]:
    images = {p.stem: p for p in list_dir(images_dir) if p.suffix.lower() == ".jpg"}
    labels = {p.stem: p for p in list_dir(labels_dir) if p.suffix.lower() == ".png"}
    return pair_items(images, labels, lambda n: labels_dir / (n + ".png"),
                      lambda n: images_dir / (n + ".jpg"))


def check_link(link: str) -> None:
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
