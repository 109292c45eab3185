"""Data check: every listed image and label of a data root, before any training starts.

A corrupt file would otherwise stop a run at the batch that reads it, possibly hours in. The check
reads the split lists with the loader's own reader (``layout.read_split_list``) and tests every
pair the way ``FaceDataset`` will read it:

- the image exists and ``files.read_image`` decodes it (the loader's call, so a check that passes
  means the loader reads it too: the size read from the header first and refused over the pixel
  limit, truncated files refused, decoder errors named);
- the label exists, decodes (``cv2.IMREAD_UNCHANGED``), is a single-channel id map of the image's
  height and width, and holds only ids below K or the ignore value 255 (``validate_label``);
- the root's ``label_names.txt``, when there is one, matches the schema trained on (and a
  ``dataset.json`` naming another data set than that schema gets a warning).

All problems are collected; :meth:`DataCheckReport.raise_if_problems` then raises one
:class:`DataCheckError` with their count and the first few. The pairs are decoded by a thread pool
(OpenCV releases the GIL) whose memory is bounded: a thread decodes only while the pixels being
decoded by all threads (read from the headers) stay within one largest allowed image
(:class:`PixelBudget`), so eight threads never hold eight huge images at once. ``rank`` /
``world_size`` check one contiguous shard of the pairs, so the processes of a distributed run
can share the work (the trainer gathers their problems).

    python tools/prepare_data.py check ROOT [--splits train valid] [--dataset NAME]
"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2

from ..files import max_pixels, read_image, read_image_size
from .dataset import validate_label
from .layout import LABEL_NAMES, read_label_names, read_split_list, root_schema, split_list_path
from .schemas import Schema

__all__ = ["DataCheckError", "DataCheckReport", "check_data", "list_pairs", "find_splits",
           "PixelBudget", "MAX_LISTED"]

MAX_LISTED = 5          # problems named in the error message
SPLIT_ORDER = ("train", "valid", "val", "test")

Pair = Tuple[str, int, str, Optional[str]]      # (list file, line, image path, label path or None)


class DataCheckError(ValueError):
    """Listed images or labels that training or testing would fail on (count and first few)."""


@dataclass
class DataCheckReport:
    """Outcome of :func:`check_data`.

    Attributes:
        root: the data root; splits: the splits checked.
        num_pairs: image/label pairs listed in those splits (all shards).
        checked: pairs checked by this process (``num_pairs`` without sharding).
        problems: one line per problem, paths relative to ``root``, in list order.
        seconds: wall time of this process's check.
    """

    root: str
    splits: Tuple[str, ...]
    num_pairs: int
    checked: int
    problems: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: what was checked, how long it took, how many problems."""
        what = (f"{self.num_pairs} image/label pairs of {', '.join(self.splits)} in {self.root}")
        found = "all fine" if self.ok else _count(len(self.problems), "problem")
        return f"data check: {what}: {found} ({self.seconds:.1f} s)"

    def message(self, max_listed: int = MAX_LISTED, listed_above: bool = False) -> str:
        """The one-line error text: count, the first ``max_listed`` problems, what to do (and
        where to see them all, unless ``listed_above``)."""
        shown = "; ".join(self.problems[:max_listed])
        more = len(self.problems) - max_listed
        if more > 0:
            shown += f"; ... and {more} more"
        where = ("each is listed above" if listed_above else
                 f"'python tools/prepare_data.py check {self.root}' lists every one "
                 f"(data.check=false skips this check)")
        return (f"data check of {self.root} ({', '.join(self.splits)}) found "
                f"{_count(len(self.problems), 'problem')} in {self.num_pairs} image/label pairs: "
                f"{shown}. Fix or re-create these files, or drop their lines from the list files; "
                f"{where}")

    def raise_if_problems(self, max_listed: int = MAX_LISTED,
                          listed_above: bool = False) -> "DataCheckReport":
        """Raise :class:`DataCheckError` (:meth:`message`) if there is a problem; else ``self``."""
        if self.problems:
            raise DataCheckError(self.message(max_listed, listed_above))
        return self


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def find_splits(root: str) -> List[str]:
    """The splits with a ``ROOT/<split>_list.txt``: train, valid, val, test first, then the rest."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data root {root} is not a folder: check the path (data.root "
                                "of the config when training)")
    found = sorted(n[:-len("_list.txt")] for n in os.listdir(root) if n.endswith("_list.txt"))
    if not found:
        raise FileNotFoundError(f"data root {root} holds no <split>_list.txt: prepare it with "
                                "tools/prepare_data.py (docs/datasets.md)")
    return [s for s in SPLIT_ORDER if s in found] + [s for s in found if s not in SPLIT_ORDER]


def list_pairs(root: str, splits: Iterable[str]) -> List[Pair]:
    """Every listed pair of ``splits``, in list order (the loader's list reader)."""
    pairs: List[Pair] = []
    for split in splits:
        list_path = split_list_path(root, split)
        if not os.path.isfile(list_path):
            raise FileNotFoundError(f"list file not found: {list_path} (split {split!r}; the "
                                    f"root holds {find_splits(root)})")
        for lineno, image, label in read_split_list(list_path, os.path.join(root, split)):
            pairs.append((list_path, lineno, image, label))
    return pairs


class PixelBudget:
    """At most ``budget`` pixels being decoded at once across threads: ``acquire(n)`` waits for
    room for ``n`` pixels (an image larger than the budget runs alone), ``release(n)`` frees it;
    ``peak`` is the most held at once."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + n <= self.budget)
            self.in_use += n
            self.peak = max(self.peak, self.in_use)

    def release(self, n: int) -> None:
        with self._cond:
            self.in_use -= n
            self._cond.notify_all()


def _check_pair(pair: Pair, root: str, num_classes: int, budget: PixelBudget,
                limit: int) -> List[str]:
    """The problems of one listed pair (empty when the loader will read it)."""
    list_path, lineno, image_path, label_path = pair
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    where = f"({os.path.basename(list_path)}:{lineno})"
    problems: List[str] = []

    def decode(path: str, flags: int, what: str):
        if not os.path.isfile(path):
            problems.append(f"{rel(path)} not found {where}")
            return None
        try:
            h, w = read_image_size(path, limit)
            budget.acquire(h * w)
            try:
                return read_image(path, flags, limit)
            finally:
                budget.release(h * w)
        except (ValueError, OSError, MemoryError) as exc:
            reason = str(exc).replace(f"{path}: ", "", 1)
            problems.append(f"{rel(path)} cannot be read as {what}: {reason} {where}")
            return None

    image = decode(image_path, cv2.IMREAD_COLOR, "an image")
    if label_path is None:
        return problems
    label = decode(label_path, cv2.IMREAD_UNCHANGED, "a label")
    if label is None:
        return problems
    try:
        validate_label(label, rel(label_path), num_classes,
                       None if image is None else image.shape[:2], rel(image_path))
    except ValueError as exc:
        problems.append(f"{exc} {where}")
    return problems


def _schema_problem(root: str, schema: Schema) -> Optional[str]:
    names = os.path.join(root, LABEL_NAMES)
    if not os.path.isfile(names):
        return None
    tokens = tuple(read_label_names(names))
    if tokens != schema.tokens:
        return (f"label_names.txt lists {len(tokens)} classes {list(tokens)}, not the "
                f"{schema.name} schema's {list(schema.tokens)} (wrong data.root or data.dataset?)")
    return None


def check_data(root: str, splits: Optional[Sequence[str]] = None, schema: Optional[Schema] = None,
               workers: int = 0, rank: int = 0, world_size: int = 1,
               max_image_pixels: Optional[int] = None) -> DataCheckReport:
    """Check every listed pair of ``splits`` (default: all lists of the root) of ``root``.

    Args:
        schema: the description trained on (its class count bounds the ids); default the
            root's (``layout.root_schema``).
        workers: decoding threads (0: up to 8, at most the CPU count over ``world_size``).
        rank, world_size: check only shard ``rank`` of ``world_size`` contiguous shards (the
            label_names.txt check is done by rank 0).
        max_image_pixels: the pixel limit (``files.max_pixels``: default Pillow's 179 MP or
            ``$DMLCSR_MAX_PIXELS``); also the budget of pixels decoded at once.
    Returns:
        The :class:`DataCheckReport` (call ``raise_if_problems()`` to stop on problems).
    Raises:
        FileNotFoundError / ValueError for a missing root, list file or label_names.txt, or a
        malformed list line: those stop the check itself.
    """
    start = time.perf_counter()
    splits = tuple(splits) if splits else tuple(find_splits(root))
    if schema is None:
        schema = root_schema(root)
    pairs = list_pairs(root, splits)
    lo, hi = len(pairs) * rank // world_size, len(pairs) * (rank + 1) // world_size
    shard = pairs[lo:hi]
    if workers <= 0:
        workers = max(1, min(8, (os.cpu_count() or 1) // max(1, world_size)))
    problems: List[str] = []
    if rank == 0:
        problem = _schema_problem(root, schema)
        if problem:
            problems.append(problem)
    limit = max_pixels(max_image_pixels)
    budget = PixelBudget(limit)
    check = lambda pair: _check_pair(pair, root, schema.num_classes, budget, limit)  # noqa: E731
    if workers == 1 or len(shard) < 2:
        for found in map(check, shard):
            problems.extend(found)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data_check") as pool:
            for found in pool.map(check, shard):
                problems.extend(found)
    return DataCheckReport(root=str(root), splits=splits, num_pairs=len(pairs), checked=len(shard),
                           problems=problems, seconds=time.perf_counter() - start)
