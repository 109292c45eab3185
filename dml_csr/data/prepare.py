"""Turn the hand-downloaded Helen, LaPa and CelebAMask-HQ archives into the project's data layout.

Target layout (what the loader and the scorer read)::

    OUT/label_names.txt                      # schema tokens, one per line, first ``bg``
    OUT/<split>_list.txt                     # lines ``images/NAME.jpg labels/NAME.png``
    OUT/<split>/images/NAME.jpg
    OUT/<split>/labels/NAME.png              # uint8 class ids

Guarantees shared by the three preparers:

* The raw tree is only read: every output is written under OUT, and OUT may not be, or lie inside,
  the raw directory. Outputs are written to a hidden ``.NAME.<pid>.partial`` file and renamed into
  place, so a file under its final name is always complete; the list files are removed when a run
  starts and written (with ``label_names.txt``) last, so a tree that has them is complete.
* Re-running skips every sample whose outputs exist and are valid (decodable, label ids in range,
  image and label of the same size, verbatim copies still matching their source).
* A missing, unreadable or malformed input stops the run with a :class:`PrepareError` whose message
  starts with the offending path.
"""
import hashlib
import logging
import multiprocessing
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from .schemas import Schema, get_schema

__all__ = ["PrepareError", "PrepareReport", "EXPECTED_COUNTS", "LINK_MODES", "HELEN_SOURCES",
           "prepare_celebamask_hq", "prepare_helen", "prepare_lapa"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Published split sizes; a prepared tree with other counts gets a warning (not an error, so that
# subsets can be prepared on purpose). The relabelled HELEN* has no published counts to check.
EXPECTED_COUNTS: Dict[str, Dict[str, int]] = {
    "celebamask_hq": {"train": 24183, "valid": 2993, "test": 2824},
    "lapa": {"train": 18176, "valid": 2000, "test": 2000},
    "helen": {"train": 2000, "valid": 230, "test": 100},  # original release (paper split)
}
LINK_MODES = ("copy", "hardlink", "symlink")
HELEN_SOURCES = ("auto", "original", "relabelled")

# CelebAMask-HQ masks are 0/255; a pixel belongs to a part when its mask value is above this.
CELEBA_MASK_THRESHOLD = 127
_PARTIAL_GLOB = ".*.partial"


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
class _Item:
    """One sample to produce: a raw image and its label sources as (class id, path) pairs.

    The meaning of ``labels`` depends on the converter: one id map (class id unused), the eleven
    Helen grey-level maps, or the CelebAMask-HQ part masks present for this image.
    """

    name: str
    image: Path
    labels: Tuple[Tuple[int, Path], ...]


Plan = Dict[str, List[_Item]]  # output split -> samples, in list-file order


# ----------------------------------------------------------------------------------------------
# Reading and writing single files


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PrepareError(f"{path}: cannot be read as an image (missing, unreadable or corrupt)")
    return image


def _read_gray(path: Path) -> np.ndarray:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise PrepareError(f"{path}: cannot be read as an image (missing, unreadable or corrupt)")
    return gray


def _read_id_map(path: Path, num_classes: int) -> np.ndarray:
    """A label PNG that must already hold class ids: single channel, uint8, ids < num_classes."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise PrepareError(f"{path}: cannot be read as an image (missing, unreadable or corrupt)")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise PrepareError(f"{path}: label must be a single-channel 8-bit PNG, got shape "
                           f"{label.shape} dtype {label.dtype}")
    bad = np.unique(label[label >= num_classes])
    if bad.size:
        raise PrepareError(f"{path}: label ids {bad.tolist()} outside 0..{num_classes - 1}")
    return label


def _size_text(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _partial_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}.partial")


def _publish_bytes(dst: Path, data: bytes) -> None:
    """Write ``data`` to ``dst`` through a temporary name, so ``dst`` is never half-written."""
    tmp = _partial_path(dst)
    tmp.unlink(missing_ok=True)  # never write through a stale link into someone else's file
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _publish_file(src: Path, dst: Path, link: str) -> None:
    """Copy or link ``src`` to ``dst`` through a temporary name. ``src`` is only read."""
    tmp = _partial_path(dst)
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


def _encode(ext: str, array: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise PrepareError(f"cannot encode an array of shape {array.shape} as {ext}")
    return buf.tobytes()


def _matches_source(dst: Path, src: Path, link: str) -> bool:
    """Whether ``dst`` is what ``_publish_file(src, dst, link)`` would produce now."""
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


def _output_is_valid(image_out: Path, label_out: Path, num_classes: int,
                     size: Optional[int] = None) -> bool:
    """Whether a sample written earlier is complete: both files decode, ids < num_classes, same
    height and width (and ``size`` x ``size`` when given)."""
    if not (image_out.is_file() and label_out.is_file()):
        return False
    label = cv2.imread(str(label_out), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8 or label.max() >= num_classes:
        return False
    if size is not None and label.shape != (size, size):
        return False
    image = cv2.imread(str(image_out), cv2.IMREAD_COLOR)
    return image is not None and image.shape[:2] == label.shape


# ----------------------------------------------------------------------------------------------
# Converters: picklable callables (item, image_out, label_out) -> True if written, False if
# the outputs were already complete.


@dataclass(frozen=True)
class _CopyIdMap:
    """LaPa and HELEN*: the label already holds ids; validate, then copy or link both files."""

    num_classes: int
    link: str

    def __call__(self, task: Tuple[_Item, Path, Path]) -> bool:
        item, image_out, label_out = task
        label_src = item.labels[0][1]
        if (_matches_source(image_out, item.image, self.link)
                and _matches_source(label_out, label_src, self.link)
                and _output_is_valid(image_out, label_out, self.num_classes)):
            return False
        label = _read_id_map(label_src, self.num_classes)
        image = _read_image(item.image)
        if image.shape[:2] != label.shape:
            raise PrepareError(f"{label_src}: label is {_size_text(label)} but its image "
                               f"{item.image} is {_size_text(image)}")
        _publish_file(item.image, image_out, self.link)
        _publish_file(label_src, label_out, self.link)
        return True


@dataclass(frozen=True)
class _HelenArgmax:
    """Original Helen: label = per-pixel argmax over the eleven grey-level maps (ties go to the
    lowest class id); the image is copied or linked unchanged."""

    num_classes: int
    link: str

    def __call__(self, task: Tuple[_Item, Path, Path]) -> bool:
        item, image_out, label_out = task
        if (_matches_source(image_out, item.image, self.link)
                and _output_is_valid(image_out, label_out, self.num_classes)):
            return False
        image = _read_image(item.image)
        maps = []
        for _, path in item.labels:  # in class-id order
            grey = _read_gray(path)
            if grey.shape != image.shape[:2]:
                raise PrepareError(f"{path}: label map is {_size_text(grey)} but its image "
                                   f"{item.image} is {_size_text(image)}")
            maps.append(grey)
        label = np.argmax(np.stack(maps), axis=0).astype(np.uint8)
        _publish_file(item.image, image_out, self.link)
        _publish_bytes(label_out, _encode(".png", label))
        return True


@dataclass(frozen=True)
class _CelebAMerge:
    """CelebAMask-HQ: paint the binary part masks in class-id order (a later id overwrites an
    earlier one where masks overlap) and resize the image to the mask size."""

    num_classes: int
    size: int  # side of the part masks, hence of the outputs
    jpeg_quality: int

    def __call__(self, task: Tuple[_Item, Path, Path]) -> bool:
        item, image_out, label_out = task
        if _output_is_valid(image_out, label_out, self.num_classes, self.size):
            return False
        label = np.zeros((self.size, self.size), np.uint8)
        for class_id, path in item.labels:  # sorted by class id: the official paint order
            mask = _read_gray(path)
            if mask.shape != label.shape:
                raise PrepareError(f"{path}: mask is {_size_text(mask)}, expected "
                                   f"{self.size}x{self.size}")
            label[mask > CELEBA_MASK_THRESHOLD] = class_id
        image = _read_image(item.image)
        h, w = image.shape[:2]
        if h != w:
            raise PrepareError(f"{item.image}: image is {w}x{h}, expected a square image")
        if h != self.size:
            # INTER_AREA averages whole source pixels when shrinking (1024 -> 512 is a 2x2 box
            # filter); bilinear is the better choice for the unusual enlarging case.
            interp = cv2.INTER_AREA if h > self.size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.size, self.size), interpolation=interp)
        _publish_bytes(image_out, _encode(".jpg", image,
                                          (cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality)))
        _publish_bytes(label_out, _encode(".png", label))
        return True


Converter = Callable[[Tuple[_Item, Path, Path]], bool]


# ----------------------------------------------------------------------------------------------
# The shared runner


def _check_out_dir(raw_dir: Path, out_dir: Path, splits: Sequence[str] = ()) -> None:
    """Refuse an output location that would put any written file inside the raw tree."""
    raw = raw_dir.resolve()
    out = out_dir.resolve()
    for target in [out] + [out / s / sub for s in splits for sub in ("images", "labels")]:
        if target == raw or raw in target.parents:
            raise PrepareError(f"{out_dir}: the output would be written inside the raw directory "
                               f"{raw_dir} (or equal to it); choose an OUT_DIR outside it")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out_dir}: exists and is not a directory")


def _check_label_names(out_dir: Path, schema: Schema) -> None:
    path = out_dir / "label_names.txt"
    if path.is_file():
        tokens = tuple(path.read_text().split())
        if tokens != schema.tokens:
            raise PrepareError(f"{path}: OUT_DIR already holds another data set (tokens {list(tokens)}"
                               f", expected {list(schema.tokens)}); choose an empty OUT_DIR")


@contextmanager
def _pool(workers: int) -> Iterator[Optional["multiprocessing.pool.Pool"]]:
    if workers <= 1:
        yield None
        return
    with multiprocessing.Pool(workers) as pool:
        yield pool


def _run(dataset: str, schema: Schema, raw_dir: Path, out_dir: Path, plan: Plan,
         converter: Converter, workers: int, progress: bool, expected: Optional[Dict[str, int]],
         notes: Sequence[str] = ()) -> PrepareReport:
    _check_out_dir(raw_dir, out_dir, list(plan))
    _check_label_names(out_dir, schema)
    for split in plan:  # until this run has finished, the tree is not complete
        (out_dir / f"{split}_list.txt").unlink(missing_ok=True)
    written: Dict[str, int] = {}
    skipped: Dict[str, int] = {}
    warnings = list(notes)
    with _pool(workers) as pool:
        for split, items in plan.items():
            images_dir = out_dir / split / "images"
            labels_dir = out_dir / split / "labels"
            images_dir.mkdir(parents=True, exist_ok=True)
            labels_dir.mkdir(parents=True, exist_ok=True)
            for stale in [*images_dir.glob(_PARTIAL_GLOB), *labels_dir.glob(_PARTIAL_GLOB)]:
                stale.unlink()  # left by an interrupted run
            tasks = [(it, images_dir / f"{it.name}.jpg", labels_dir / f"{it.name}.png")
                     for it in items]
            results = pool.imap_unordered(converter, tasks, chunksize=16) if pool else \
                map(converter, tasks)
            n_written = 0
            for did_write in tqdm(results, total=len(tasks), desc=f"{dataset}/{split}",
                                  unit="img", disable=not progress):
                n_written += did_write
            written[split] = n_written
            skipped[split] = len(tasks) - n_written
            warnings += _leftovers(images_dir, {f"{it.name}.jpg" for it in items}, split)
            warnings += _leftovers(labels_dir, {f"{it.name}.png" for it in items}, split)

    # Written last: a tree with list files is complete.
    for split, items in plan.items():
        text = "".join(f"images/{it.name}.jpg labels/{it.name}.png\n" for it in items)
        _publish_bytes(out_dir / f"{split}_list.txt", text.encode())
    _publish_bytes(out_dir / "label_names.txt", "".join(f"{t}\n" for t in schema.tokens).encode())

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


def _leftovers(directory: Path, expected: set, split: str) -> List[str]:
    extra = [p.name for p in directory.iterdir() if p.name not in expected]
    if not extra:
        return []
    return [f"{directory}: {len(extra)} file(s) not in {split}_list.txt (e.g. {sorted(extra)[0]}), "
            "left from an earlier run with other options? They are ignored."]


def _find_root(raw_dir: Path, subfolder: str, marker: str) -> Path:
    """``raw_dir`` itself when it holds ``marker``, else ``raw_dir/subfolder`` when that does
    (the archives unpack into a folder of their own)."""
    if not raw_dir.is_dir():
        raise PrepareError(f"{raw_dir}: raw directory not found")
    if (raw_dir / marker).exists() or not (raw_dir / subfolder / marker).exists():
        return raw_dir
    return raw_dir / subfolder


def _list_dir(directory: Path) -> List[Path]:
    if not directory.is_dir():
        raise PrepareError(f"{directory}: directory not found")
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _read_lines(path: Path) -> List[Tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, stripped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"{path}: cannot be read: {e}") from e
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


# ----------------------------------------------------------------------------------------------
# LaPa


def _plan_lapa(raw_dir: Path) -> Plan:
    root = _find_root(raw_dir, "LaPa", "train")
    plan: Plan = {}
    for split, folder in (("train", "train"), ("valid", "val"), ("test", "test")):
        plan[split] = _pair_folders(root / folder / "images", root / folder / "labels")
    return plan


def _pair_items(images: Dict[str, Path], labels: Dict[str, Path], expected_label, expected_image
                ) -> List[_Item]:
    """Items for names present on both sides; the first unmatched file stops the run, naming the
    file it expected (``expected_label(name)`` / ``expected_image(name)``)."""
    for name in sorted(images.keys() - labels.keys()):
        raise PrepareError(f"{images[name]}: image without label (expected {expected_label(name)})")
    for name in sorted(labels.keys() - images.keys()):
        raise PrepareError(f"{labels[name]}: label without image (expected {expected_image(name)})")
    return [_Item(name, images[name], ((0, labels[name]),)) for name in sorted(images)]


def _pair_folders(images_dir: Path, labels_dir: Path) -> List[_Item]:
    images = {p.stem: p for p in _list_dir(images_dir) if p.suffix.lower() == ".jpg"}
    labels = {p.stem: p for p in _list_dir(labels_dir) if p.suffix.lower() == ".png"}
    return _pair_items(images, labels, lambda n: labels_dir / (n + ".png"),
                       lambda n: images_dir / (n + ".jpg"))


def prepare_lapa(raw_dir: PathLike, out_dir: PathLike, *, link: str = "copy", workers: int = 0,
                 progress: bool = True) -> PrepareReport:
    """Prepare LaPa: ``raw_dir`` is ``LaPa/`` (or its parent) holding
    ``{train,val,test}/{images/*.jpg,labels/*.png}``; ``val`` becomes ``valid``.

    Labels already hold ids 0..10 in the Helen/LaPa order; each is checked (single channel, ids in
    range, same size as its image) and copied or linked (``link``: copy, hardlink, symlink).
    """
    raw, out = Path(raw_dir), Path(out_dir)
    _check_link(link)
    _check_out_dir(raw, out)
    schema = get_schema("lapa")
    plan = _plan_lapa(raw)
    return _run("lapa", schema, raw, out, plan, _CopyIdMap(schema.num_classes, link), workers,
                progress, EXPECTED_COUNTS["lapa"])


def _check_link(link: str) -> None:
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")


# ----------------------------------------------------------------------------------------------
# Helen

_HELEN_SPLIT_FILES = (("train", "exemplars.txt"), ("valid", "tuning.txt"), ("test", "testing.txt"))
_NAME_RE = re.compile(r"^[\w.-]+$")


def _read_helen_split(path: Path) -> List[str]:
    """Names from a Helen split file; lines are ``INDEX, NAME`` (spaces around the comma allowed)
    or just ``NAME``."""
    if not path.is_file():
        raise PrepareError(f"{path}: split file not found")
    names, seen = [], set()
    for lineno, line in _read_lines(path):
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
            items.append(_Item(name, image, maps))
        plan[split] = items
    return plan


def _plan_helen_relabelled(raw_dir: Path, schema: Schema, holdout: int) -> Tuple[Plan, List[str]]:
    notes = []
    names_file = raw_dir / "label_names.txt"
    if names_file.is_file():
        tokens = tuple(t for _, line in _read_lines(names_file) for t in line.split())
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
        files = _list_dir(folder)
        images = {p.name[:-len("_image.jpg")]: p for p in files if p.name.endswith("_image.jpg")}
        labels = {p.name[:-len("_label.png")]: p for p in files if p.name.endswith("_label.png")}
        splits[split] = _pair_items(images, labels, lambda n: folder / (n + "_label.png"),
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
    _check_link(link)
    if source not in HELEN_SOURCES:
        raise ValueError(f"source must be one of {HELEN_SOURCES}, got {source!r}")
    _check_out_dir(raw, out)
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
        converter, expected = _CopyIdMap(schema.num_classes, link), None
    return _run("helen", schema, raw, out, plan, converter, workers, progress, expected, notes)


# ----------------------------------------------------------------------------------------------
# CelebAMask-HQ

_MASK_RE = re.compile(r"^(\d{5})_(\w+)\.png$")


def _read_celeba_mapping(path: Path) -> List[Tuple[int, str]]:
    """(CelebA-HQ idx, CelebA file name) per line of ``CelebA-HQ-to-CelebA-mapping.txt``
    (columns ``idx orig_idx orig_file`` after one header line)."""
    if not path.is_file():
        raise PrepareError(f"{path}: CelebA-HQ-to-CelebA mapping file not found")
    lines = _read_lines(path)
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
    for lineno, line in _read_lines(path):
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
    for folder in _list_dir(anno_dir):
        if not (folder.is_dir() and folder.name.isdigit()):
            raise PrepareError(f"{folder}: unexpected entry; {anno_dir} should hold the numbered "
                               "folders 0..14 only")
        for path in _list_dir(folder):
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
    root = _find_root(raw_dir, "CelebAMask-HQ", "CelebA-HQ-img")
    mapping_path = mapping_file or root / "CelebA-HQ-to-CelebA-mapping.txt"
    partition_path = partition_file or _find_partition(root, raw_dir)
    if not partition_path.is_file():
        raise PrepareError(f"{partition_path}: CelebA partition file not found")
    mapping = _read_celeba_mapping(mapping_path)
    partition = _read_celeba_partition(partition_path)
    images_dir = root / "CelebA-HQ-img"
    image_files = {p.name for p in _list_dir(images_dir)}
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
        plan[split].append(_Item(str(idx), image, tuple(parts)))
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
    _check_out_dir(raw, out)
    schema = get_schema("celebamask_hq")
    plan = _plan_celebamask_hq(raw, schema, Path(mapping_file) if mapping_file else None,
                               Path(partition_file) if partition_file else None)
    converter = _CelebAMerge(schema.num_classes, mask_size, jpeg_quality)
    return _run("celebamask_hq", schema, raw, out, plan, converter, workers, progress,
                EXPECTED_COUNTS["celebamask_hq"])

