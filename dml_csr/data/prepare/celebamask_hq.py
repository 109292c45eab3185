"""CelebAMask-HQ: per-part masks painted into one id map, images resized to the mask size, the
split taken from CelebA's ``list_eval_partition.txt``."""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from ...files import write_bytes
from ..schemas import Schema, get_schema
from .common import (EXPECTED_COUNTS, Item, PathLike, Plan, PrepareError, PrepareReport,
                     find_root, list_dir, read_gray, read_image, read_lines, size_text)
from .publish import check_out_dir, encode, output_is_valid, run_plan

__all__ = ["CELEBA_MASK_THRESHOLD", "prepare_celebamask_hq"]

# CelebAMask-HQ masks are 0/255; a pixel belongs to a part when its mask value is above this.
CELEBA_MASK_THRESHOLD = 127


@dataclass(frozen=True)
class _CelebAMerge:
    """CelebAMask-HQ: paint the binary part masks in class-id order (a later id overwrites an
    earlier one where masks overlap) and resize the image to the mask size."""

    num_classes: int
    size: int  # side of the part masks, hence of the outputs
    jpeg_quality: int

    def __call__(self, task: Tuple[Item, Path, Path]) -> bool:
        item, image_out, label_out = task
        if output_is_valid(image_out, label_out, self.num_classes, self.size):
            return False
        label = np.zeros((self.size, self.size), np.uint8)
        for class_id, path in item.labels:  # sorted by class id: the official paint order
            mask = read_gray(path)
            if mask.shape != label.shape:
                raise PrepareError(f"{path}: mask is {size_text(mask)}, expected "
                                   f"{self.size}x{self.size}")
            label[mask > CELEBA_MASK_THRESHOLD] = class_id
        image = read_image(item.image)
        h, w = image.shape[:2]
        if h != w:
            raise PrepareError(f"{item.image}: image is {w}x{h}, expected a square image")
        if h != self.size:
            # INTER_AREA averages whole source pixels when shrinking (1024 -> 512 is a 2x2 box
            # filter); bilinear is the better choice for the unusual enlarging case.
            interp = cv2.INTER_AREA if h > self.size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.size, self.size), interpolation=interp)
        write_bytes(image_out, encode(".jpg", image,
                                        (cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality)))
        write_bytes(label_out, encode(".png", label))
        return True


_MASK_RE = re.compile(r"^(\d{5})_(\w+)\.png$")


def _read_celeba_mapping(path: Path) -> List[Tuple[int, str]]:
    """(CelebA-HQ idx, CelebA file name) per line of ``CelebA-HQ-to-CelebA-mapping.txt``
    (columns ``idx orig_idx orig_file`` after one header line)."""
    if not path.is_file():
        raise PrepareError(f"{path}: CelebA-HQ-to-CelebA mapping file not found")
    lines = read_lines(path)
    if lines and lines[0][1].split()[0].isdigit():
        raise PrepareError(f"{path}:{lines[0][0]}: expected the header line 'idx orig_idx "
                           f"orig_file', got {lines[0][1]!r}")
    rows, seen = [], set()
    for lineno, line in lines[1:]:
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise PrepareError(f"{path}:{lineno}: bad mapping line {line!r}; expected "
                               "'IDX ORIG_IDX ORIG_FILE'")
        idx = int(fields[0])
        if idx in seen:
            raise PrepareError(f"{path}:{lineno}: idx {idx} is listed twice")
        seen.add(idx)
        rows.append((idx, fields[2]))
    if not rows:
        raise PrepareError(f"{path}: no mapping rows")
    return rows


def _celeba_key(file_name: str) -> Union[int, str]:
    # Compare CelebA file names by number, so '000123.jpg' and '123.jpg' agree.
    stem = Path(file_name).stem
    return int(stem) if stem.isdigit() else file_name


def _read_celeba_partition(path: Path) -> Dict[Union[int, str], int]:
    """CelebA file -> 0 train / 1 val / 2 test, from ``list_eval_partition.txt``."""
    partition = {}
    for lineno, line in read_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise PrepareError(f"{path}:{lineno}: bad partition line {line!r}; expected "
                               "'FILE 0|1|2'")
        partition[_celeba_key(fields[0])] = int(fields[1])
    return partition


def _index_celeba_masks(anno_dir: Path, schema: Schema) -> Dict[int, List[Tuple[int, Path]]]:
    """CelebA-HQ idx -> [(class id, mask path)] sorted by class id, from one listing of
    ``CelebAMask-HQ-mask-anno/{idx // 2000}/{idx:05d}_{part}.png``."""
    class_of = {token: c for c, token in enumerate(schema.tokens) if c > 0}
    masks: Dict[int, List[Tuple[int, Path]]] = {}
    for folder in list_dir(anno_dir):
        if not (folder.is_dir() and folder.name.isdigit()):
            raise PrepareError(f"{folder}: unexpected entry; {anno_dir} should hold the numbered "
                               "folders 0..14 only")
        for path in list_dir(folder):
            m = _MASK_RE.match(path.name)
            if not m or m.group(2) not in class_of:
                raise PrepareError(f"{path}: not a part mask named IDX_PART.png with PART one of "
                                   f"{list(class_of)}")
            idx = int(m.group(1))
            if idx // 2000 != int(folder.name):
                raise PrepareError(f"{path}: mask of image {idx} should be in folder "
                                   f"{idx // 2000}, not {folder.name}")
            masks.setdefault(idx, []).append((class_of[m.group(2)], path))
    for parts in masks.values():
        parts.sort()
    return masks


def _find_partition(root: Path, raw_dir: Path) -> Path:
    candidates = [d / sub / "list_eval_partition.txt" for d in dict.fromkeys((root, raw_dir))
                  for sub in ("", "Eval")]
    for path in candidates:
        if path.is_file():
            return path
    raise PrepareError(f"{candidates[0]}: CelebA's list_eval_partition.txt not found (also looked "
                       f"in {', '.join(map(str, candidates[1:]))}); pass its path (--partition)")


def _plan_celebamask_hq(raw_dir: Path, schema: Schema, mapping_file: Optional[Path],
                        partition_file: Optional[Path]) -> Plan:
    root = find_root(raw_dir, "CelebAMask-HQ", "CelebA-HQ-img")
    mapping_path = mapping_file or root / "CelebA-HQ-to-CelebA-mapping.txt"
    partition_path = partition_file or _find_partition(root, raw_dir)
    if not partition_path.is_file():
        raise PrepareError(f"{partition_path}: CelebA partition file not found")
    mapping = _read_celeba_mapping(mapping_path)
    partition = _read_celeba_partition(partition_path)
    images_dir = root / "CelebA-HQ-img"
    image_files = {p.name for p in list_dir(images_dir)}
    anno_dir = root / "CelebAMask-HQ-mask-anno"
    masks = _index_celeba_masks(anno_dir, schema)

    plan: Plan = {"train": [], "valid": [], "test": []}
    for idx, orig_file in sorted(mapping):
        key = _celeba_key(orig_file)
        if key not in partition:
            raise PrepareError(f"{partition_path}: no entry for {orig_file} (CelebA-HQ image "
                               f"{idx} in {mapping_path})")
        image = images_dir / f"{idx}.jpg"
        if image.name not in image_files:
            raise PrepareError(f"{image}: image not found (listed in {mapping_path})")
        parts = masks.pop(idx, None)
        if not parts:
            raise PrepareError(f"{image}: image without label: no part masks "
                               f"{anno_dir / str(idx // 2000) / f'{idx:05d}_*.png'}")
        split = ("train", "valid", "test")[partition[key]]
        plan[split].append(Item(str(idx), image, tuple(parts)))
    if masks:
        idx, parts = min(masks.items())
        raise PrepareError(f"{parts[0][1]}: mask of image {idx}, which {mapping_path} does not "
                           "list")
    return plan


def prepare_celebamask_hq(raw_dir: PathLike, out_dir: PathLike, *, mask_size: int = 512,
                          mapping_file: Optional[PathLike] = None,
                          partition_file: Optional[PathLike] = None, jpeg_quality: int = 95,
                          workers: int = 0, progress: bool = True) -> PrepareReport:
    """Prepare CelebAMask-HQ.

    Args:
        raw_dir: ``CelebAMask-HQ/`` (or its parent) holding ``CelebA-HQ-img/``,
            ``CelebAMask-HQ-mask-anno/`` and ``CelebA-HQ-to-CelebA-mapping.txt``.
        out_dir: the prepared root (must lie outside ``raw_dir``).
        mask_size: side of the released part masks (512); a mask of another size is an error.
            The outputs have this size: images are resized to it (INTER_AREA, 1024 -> 512).
        mapping_file: defaults to ``CelebA-HQ-to-CelebA-mapping.txt`` in the data-set folder.
        partition_file: CelebA's ``list_eval_partition.txt``; by default looked up in the data-set
            folder, ``raw_dir`` and their ``Eval/`` subfolders.
        jpeg_quality: quality of the re-encoded images.
        workers: worker processes (0 or 1: none).
        progress: show a progress bar per split.

    Labels paint every part mask (pixel value > 127) in the official class order, so where masks
    overlap the part with the larger class id wins (glasses < eyes, hair < hat, necklace < neck <
    cloth). Output names are the CelebA-HQ indices (``0.jpg``, ``0.png``, ...).
    """
    raw, out = Path(raw_dir), Path(out_dir)
    check_out_dir(raw, out)
    schema = get_schema("celebamask_hq")
    plan = _plan_celebamask_hq(raw, schema, Path(mapping_file) if mapping_file else None,
                               Path(partition_file) if partition_file else None)
    converter = _CelebAMerge(schema.num_classes, mask_size, jpeg_quality)
    options = {"mask_size": mask_size, "jpeg_quality": jpeg_quality}
    return run_plan(schema, raw, out, plan, converter, workers, progress,
                    EXPECTED_COUNTS["celebamask_hq"],
                    facts={"source": "celebamask_hq", "options": options})
