"""Helen from either source: the original release (Smith et al. 2013: eleven grey-level maps per
image, merged by argmax) or the relabelled HELEN* (Lin et al. 2019: id maps, copied)."""
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ...files import write_bytes
from ..schemas import Schema, get_schema
from .common import (EXPECTED_COUNTS, Converter, Item, PathLike, Plan, PrepareError,
                     PrepareReport, check_link, list_dir, pair_items, read_gray, read_image,
                     read_lines, size_text)
from .publish import CopyIdMap, check_out_dir, encode, matches_source, output_is_valid, \
    publish_file, run_plan

__all__ = ["HELEN_SOURCES", "prepare_helen"]

logger = logging.getLogger(__name__)

HELEN_SOURCES = ("auto", "original", "relabelled")


@dataclass(frozen=True)
class _HelenArgmax:
    """Original Helen: label = per-pixel argmax over the eleven grey-level maps (ties go to the
    lowest class id); the image is copied or linked unchanged."""

    num_classes: int
    link: str

    def __call__(self, task: Tuple[Item, Path, Path]) -> bool:
        item, image_out, label_out = task
        if (matches_source(image_out, item.image, self.link)
                and output_is_valid(image_out, label_out, self.num_classes)):
            return False
        image = read_image(item.image)
        maps = []
        for _, path in item.labels:  # in class-id order
            grey = read_gray(path)
            if grey.shape != image.shape[:2]:
                raise PrepareError(f"{path}: label map is {size_text(grey)} but its image "
                                   f"{item.image} is {size_text(image)}")
            maps.append(grey)
        label = np.argmax(np.stack(maps), axis=0).astype(np.uint8)
        publish_file(item.image, image_out, self.link)
        write_bytes(label_out, encode(".png", label))
        return True


_HELEN_SPLIT_FILES = (("train", "exemplars.txt"), ("valid", "tuning.txt"), ("test", "testing.txt"))
_NAME_RE = re.compile(r"^[\w.-]+$")


def _read_helen_split(path: Path) -> List[str]:
    """Names from a Helen split file; lines are ``INDEX, NAME`` (spaces around the comma allowed)
    or just ``NAME``."""
    if not path.is_file():
        raise PrepareError(f"{path}: split file not found")
    names, seen = [], set()
    for lineno, line in read_lines(path):
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        if len(fields) == 2 and fields[0].isdigit():
            name = fields[1]
        elif len(fields) == 1:
            name = fields[0]
        else:
            name = ""
        if not _NAME_RE.match(name):
            raise PrepareError(f"{path}:{lineno}: bad split line {line!r}; expected 'INDEX, NAME' "
                               "or 'NAME'")
        if name in seen:
            raise PrepareError(f"{path}:{lineno}: {name} is listed twice")
        seen.add(name)
        names.append(name)
    return names


def _plan_helen_original(raw_dir: Path, num_classes: int) -> Plan:
    images_dir, labels_dir = raw_dir / "images", raw_dir / "labels"
    plan: Plan = {}
    owner: Dict[str, Path] = {}
    for split, fname in _HELEN_SPLIT_FILES:
        items = []
        for name in _read_helen_split(raw_dir / fname):
            if name in owner:
                raise PrepareError(f"{raw_dir / fname}: {name} is also listed in {owner[name]}")
            owner[name] = raw_dir / fname
            image = images_dir / f"{name}.jpg"
            if not image.is_file():
                raise PrepareError(f"{image}: image not found (listed in {raw_dir / fname})")
            maps = tuple((c, labels_dir / name / f"{name}_lbl{c:02d}.png")
                         for c in range(num_classes))
            for _, path in maps:
                if not path.is_file():
                    raise PrepareError(f"{path}: label map not found (image {image})")
            items.append(Item(name, image, maps))
        plan[split] = items
    return plan


def _plan_helen_relabelled(raw_dir: Path, schema: Schema, holdout: int) -> Tuple[Plan, List[str]]:
    notes = []
    names_file = raw_dir / "label_names.txt"
    if names_file.is_file():
        tokens = tuple(t for _, line in read_lines(names_file) for t in line.split())
        if tokens != schema.tokens:
            raise PrepareError(f"{names_file}: label names {list(tokens)} differ from the Helen "
                               f"order {list(schema.tokens)}")
    else:
        notes.append(f"{names_file} not found; assuming the Helen/LaPa label order")

    splits = {}
    for split in ("train", "test", "test_resize"):
        folder = raw_dir / split
        if split == "test_resize" and not folder.is_dir():
            notes.append(f"{folder} not found; no test_resize split written")
            continue
        files = list_dir(folder)
        images = {p.name[:-len("_image.jpg")]: p for p in files if p.name.endswith("_image.jpg")}
        labels = {p.name[:-len("_label.png")]: p for p in files if p.name.endswith("_label.png")}
        splits[split] = pair_items(images, labels, lambda n: folder / (n + "_label.png"),
                                   lambda n: folder / (n + "_image.jpg"))

    train = splits.pop("train")
    if not 0 <= holdout < max(len(train), 1):
        raise ValueError(f"holdout must be in 0..{len(train) - 1}, got {holdout}")
    # Deterministic and independent of the file system: the training names with the smallest
    # SHA-1 of their name form the validation split.
    held = set(sorted((it.name for it in train),
                      key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:holdout])
    plan: Plan = {"train": [it for it in train if it.name not in held],
                  "valid": [it for it in train if it.name in held]}
    plan.update(splits)
    if not held:
        notes.append("the relabelled Helen (HELEN*) has no validation split: valid_list.txt is "
                     "empty; pass --holdout N to hold out N training images as valid")
    return plan, notes


def _detect_helen_source(raw_dir: Path) -> str:
    if not raw_dir.is_dir():
        raise PrepareError(f"{raw_dir}: raw directory not found")
    original = (raw_dir / "labels").is_dir() and (raw_dir / "exemplars.txt").is_file()
    relabelled = (raw_dir / "train").is_dir() and any((raw_dir / "train").glob("*_image.jpg"))
    if original and relabelled:
        raise PrepareError(f"{raw_dir}: holds both Helen layouts; pass the source explicitly")
    if original:
        return "original"
    if relabelled:
        return "relabelled"
    raise PrepareError(f"{raw_dir}: no Helen layout found: expected either images/, labels/ and "
                       "exemplars.txt (original release) or train/NAME_image.jpg + "
                       "NAME_label.png (relabelled HELEN*)")


def prepare_helen(raw_dir: PathLike, out_dir: PathLike, *, source: str = "auto", holdout: int = 0,
                  link: str = "copy", workers: int = 0, progress: bool = True) -> PrepareReport:
    """Prepare Helen from either of its two sources.

    Args:
        raw_dir: the unpacked download.
        out_dir: the prepared root (must lie outside ``raw_dir``).
        source: ``original`` (Smith et al. 2013, resized release: ``images/``, ``labels/NAME/
            NAME_lbl00..10.png``, ``exemplars.txt``/``tuning.txt``/``testing.txt`` -> train/valid/
            test; label = per-pixel argmax, ties to the lowest id), ``relabelled`` (HELEN*, Lin et
            al. 2019: ``train/``, ``test/``, ``test_resize/`` with ``NAME_image.jpg`` +
            ``NAME_label.png``; splits kept, ``test_resize`` written as an extra split), or
            ``auto`` (detected from the layout).
        holdout: HELEN* only: hold out this many training images (smallest SHA-1 of the name) as
            the valid split. With 0 (default) valid_list.txt is written empty.
        link: how verbatim files (images; HELEN* labels) reach the output: copy, hardlink, symlink.
        workers: worker processes (0 or 1: none).
        progress: show a progress bar per split.
    """
    raw, out = Path(raw_dir), Path(out_dir)
    check_link(link)
    if source not in HELEN_SOURCES:
        raise ValueError(f"source must be one of {HELEN_SOURCES}, got {source!r}")
    check_out_dir(raw, out)
    schema = get_schema("helen")
    if source == "auto":
        source = _detect_helen_source(raw)
        logger.info("Helen source detected: %s", source)
    if source == "original":
        if holdout:
            raise ValueError("holdout applies to the relabelled HELEN* only; the original release "
                             "has its own validation split (tuning.txt)")
        plan, notes = _plan_helen_original(raw, schema.num_classes), []
        converter: Converter = _HelenArgmax(schema.num_classes, link)
        expected: Optional[Dict[str, int]] = EXPECTED_COUNTS["helen"]
    else:
        plan, notes = _plan_helen_relabelled(raw, schema, holdout)
        converter, expected = CopyIdMap(schema.num_classes, link), None
    return run_plan(schema, raw, out, plan, converter, workers, progress, expected, notes,
                    facts={"source": source, "options": {"holdout": holdout, "link": link}})
