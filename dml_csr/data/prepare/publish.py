"""What every preparer shares on the output side: atomic file publishing, the checks that a
sample written earlier is complete, the verbatim converter, and :func:`run_plan`, which writes a
plan into the prepared root (samples first, then the list files, ``label_names.txt`` and the
identity ``dataset.json``, in the formats of :mod:`dml_csr.data.layout`).
"""
import logging
import multiprocessing
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from ...files import partial_path, read_image, write_bytes
from ..layout import (IDENTITY_FILE, LABEL_NAMES, label_names_text, read_identity,
                      read_label_names, split_list_path, split_list_text, write_identity)
from ..schemas import Schema
from .common import Converter, Item, Plan, PrepareError, PrepareReport, read_id_map, size_text
from .common import read_image as read_prepare_image

__all__ = ["PARTIAL_GLOB", "publish_file", "encode", "matches_source", "output_is_valid",
           "CopyIdMap", "check_out_dir", "check_existing_root", "run_plan"]

logger = logging.getLogger(__name__)

PARTIAL_GLOB = ".*.partial"


def publish_file(src: Path, dst: Path, link: str) -> None:
    """Copy or link ``src`` to ``dst`` through a temporary name. ``src`` is only read."""
    tmp = partial_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        if link == "symlink":
            os.symlink(os.path.abspath(src), tmp)
        elif link == "hardlink":
            os.link(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        # os.replace swaps the name only: an old hard link or symlink at dst is dropped, never
        # written through, so the raw file it pointed to stays untouched.
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PrepareError(f"{src}: cannot {link} to {dst}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def encode(ext: str, array: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise PrepareError(f"cannot encode an array of shape {array.shape} as {ext}")
    return buf.tobytes()


def matches_source(dst: Path, src: Path, link: str) -> bool:
    """Whether ``dst`` is what ``publish_file(src, dst, link)`` would produce now."""
    try:
        if link == "symlink":
            return dst.is_symlink() and os.readlink(dst) == os.path.abspath(src)
        if dst.is_symlink():
            return False
        if link == "hardlink":
            return os.path.samefile(dst, src)
        return not os.path.samefile(dst, src) and dst.stat().st_size == src.stat().st_size
    except OSError:
        return False


def output_is_valid(image_out: Path, label_out: Path, num_classes: int,
                    size: Optional[int] = None, ignore_ok: bool = False) -> bool:
    """Whether a sample written earlier is complete: both files decode, ids < num_classes (or
    255 when ``ignore_ok``), same height and width (and ``size`` x ``size`` when given)."""
    if not (image_out.is_file() and label_out.is_file()):
        return False
    try:
        label = read_image(label_out, cv2.IMREAD_UNCHANGED)
        if label.ndim != 2 or label.dtype != np.uint8:
            return False
        ids = label[label != 255] if ignore_ok else label
        if ids.size and ids.max() >= num_classes:
            return False
        if size is not None and label.shape != (size, size):
            return False
        return read_image(image_out).shape[:2] == label.shape
    except (ValueError, OSError):
        return False


@dataclass(frozen=True)
class CopyIdMap:
    """LaPa, HELEN* and data sets of your own: the label already holds ids; validate, then copy
    or link both files. ``ignore_ok``: 255 (ignored pixels) is a valid id."""

    num_classes: int
    link: str
    ignore_ok: bool = False

    def __call__(self, task: Tuple[Item, Path, Path]) -> bool:
        item, image_out, label_out = task
        label_src = item.labels[0][1]
        if (matches_source(image_out, item.image, self.link)
                and matches_source(label_out, label_src, self.link)
                and output_is_valid(image_out, label_out, self.num_classes,
                                    ignore_ok=self.ignore_ok)):
            return False
        label = read_id_map(label_src, self.num_classes, self.ignore_ok)
        image = read_prepare_image(item.image)
        if image.shape[:2] != label.shape:
            raise PrepareError(f"{label_src}: label is {size_text(label)} but its image "
                               f"{item.image} is {size_text(image)}")
        publish_file(item.image, image_out, self.link)
        publish_file(label_src, label_out, self.link)
        return True


def check_out_dir(raw_dir: Path, out_dir: Path, splits: Sequence[str] = ()) -> None:
    """Refuse an output location that would put any written file inside the raw tree."""
    raw = raw_dir.resolve()
    out = out_dir.resolve()
    for target in [out] + [out / s / sub for s in splits for sub in ("images", "labels")]:
        if target == raw or raw in target.parents:
            raise PrepareError(f"{out_dir}: the output would be written inside the raw directory "
                               f"{raw_dir} (or equal to it); choose an OUT_DIR outside it")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out_dir}: exists and is not a directory")


def check_existing_root(out_dir: Path, dataset: str, schema: Schema) -> None:
    """Refuse an OUT_DIR that already holds another data set: other tokens in its
    ``label_names.txt``, or a ``dataset.json`` naming another data set (Helen and LaPa share their
    tokens)."""
    try:
        has_names = (out_dir / LABEL_NAMES).is_file()
        tokens = tuple(read_label_names(out_dir)) if has_names else schema.tokens
        identity = read_identity(out_dir)
    except ValueError as e:
        raise PrepareError(f"{e}; OUT_DIR holds something else: choose an empty OUT_DIR") from None
    if tokens != schema.tokens:
        raise PrepareError(f"{out_dir / LABEL_NAMES}: OUT_DIR already holds another data set "
                           f"(tokens {list(tokens)}, expected {list(schema.tokens)}); choose an "
                           "empty OUT_DIR")
    if identity is not None and identity["dataset"] != dataset:
        raise PrepareError(f"{out_dir / IDENTITY_FILE}: OUT_DIR already holds another data set "
                           f"({identity['dataset']}, not {dataset}); choose an empty OUT_DIR")


@contextmanager
def _pool(workers: int) -> Iterator[Optional["multiprocessing.pool.Pool"]]:
    if workers <= 1:
        yield None
        return
    with multiprocessing.Pool(workers) as pool:
        yield pool


def run_plan(schema: Schema, raw_dir: Path, out_dir: Path, plan: Plan,
             converter: Converter, workers: int, progress: bool, expected: Optional[Dict[str, int]],
             notes: Sequence[str] = (), facts: Optional[Dict[str, object]] = None
             ) -> PrepareReport:
    """Write ``plan`` into ``out_dir`` with ``converter``; ``dataset.json`` holds ``schema`` (the
    data set's description), then ``tool`` ``prepare_data``, ``raw_dir`` and ``facts`` (the raw
    source, the options)."""
    dataset = schema.name
    check_out_dir(raw_dir, out_dir, list(plan))
    check_existing_root(out_dir, dataset, schema)
    plan, renamed = _listable_names(plan)
    for split in plan:  # until this run has finished, the tree is not complete
        Path(split_list_path(out_dir, split)).unlink(missing_ok=True)
    written: Dict[str, int] = {}
    skipped: Dict[str, int] = {}
    warnings = list(notes) + renamed
    with _pool(workers) as pool:
        for split, items in plan.items():
            images_dir = out_dir / split / "images"
            labels_dir = out_dir / split / "labels"
            images_dir.mkdir(parents=True, exist_ok=True)
            labels_dir.mkdir(parents=True, exist_ok=True)
            for stale in [*images_dir.glob(PARTIAL_GLOB), *labels_dir.glob(PARTIAL_GLOB)]:
                stale.unlink()  # left by an interrupted run
            tasks = [(it, images_dir / f"{it.name}{it.image_ext}", labels_dir / f"{it.name}.png")
                     for it in items]
            results = pool.imap_unordered(converter, tasks, chunksize=16) if pool else \
                map(converter, tasks)
            n_written = 0
            for did_write in tqdm(results, total=len(tasks), desc=f"{dataset}/{split}",
                                  unit="img", disable=not progress):
                n_written += did_write
            written[split] = n_written
            skipped[split] = len(tasks) - n_written
            warnings += _leftovers(images_dir, {f"{it.name}{it.image_ext}" for it in items}, split)
            warnings += _leftovers(labels_dir, {f"{it.name}.png" for it in items}, split)

    # Written last: a tree with list files is complete.
    for split, items in plan.items():
        write_bytes(split_list_path(out_dir, split),
                    split_list_text((it.name, it.image_ext) for it in items).encode(), fsync=True)
    write_bytes(out_dir / LABEL_NAMES, label_names_text(schema.tokens).encode(), fsync=True)
    write_identity(out_dir, schema, tool="prepare_data", raw_dir=os.path.abspath(raw_dir),
                   **(facts or {}))

    counts = {split: len(items) for split, items in plan.items()}
    if expected and any(counts.get(s, 0) != n for s, n in expected.items()):
        got = ", ".join(f"{s} {counts.get(s, 0)}" for s in expected)
        want = ", ".join(f"{s} {n}" for s, n in expected.items())
        warnings.append(f"{dataset} split sizes are {got}; the published sizes are {want}. "
                        "A full preparation with other counts is wrong (incomplete download or "
                        "wrong split files).")
    report = PrepareReport(dataset, out_dir, counts, written, skipped, warnings)
    for w in warnings:
        logger.warning(w)
    return report


def _listable_names(plan: Plan) -> Tuple[Plan, List[str]]:
    """The plan with whitespace in sample names replaced by ``_`` (a list line is two paths
    separated by whitespace, so such a name could not be listed), and a note when any was;
    PrepareError when a replaced name meets another sample's name."""
    out: Plan = {}
    changed = []
    for split, items in plan.items():
        taken = {it.name for it in items}
        kept = []
        for it in items:
            name = re.sub(r"\s+", "_", it.name.strip())
            if name != it.name:
                if name in taken:
                    raise PrepareError(f"{it.image}: its name {it.name!r} holds spaces, which "
                                       f"a list file cannot hold, and {name!r} is taken by "
                                       f"another sample; rename one of them in a copy of the "
                                       f"raw folder")
                taken.add(name)
                changed.append((it.name, name))
                it = replace(it, name=name)
            kept.append(it)
        out[split] = kept
    note = []
    if changed:
        note.append(f"{len(changed)} sample name(s) hold whitespace, which list files cannot "
                    f"hold: written with '_' instead (e.g. {changed[0][0]!r} -> "
                    f"{changed[0][1]!r})")
    return out, note


def _leftovers(directory: Path, expected: set, split: str) -> List[str]:
    extra = [p.name for p in directory.iterdir() if p.name not in expected]
    if not extra:
        return []
    return [f"{directory}: {len(extra)} file(s) not in {split}_list.txt (e.g. {sorted(extra)[0]}), "
            "left from an earlier run with other options? They are ignored."]
