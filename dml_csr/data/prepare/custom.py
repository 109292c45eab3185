"""A data set of your own: images, id labels and class names -> the project's layout and description.

    RAW/images/NAME.jpg|png       the images
    RAW/labels/NAME.png           uint8 class ids (255: ignored pixels), same stem and size
    RAW/label_names.txt           one class name per id, background first ("left eye" allowed)
    RAW/train_list.txt ...        optional: one stem per line for train, valid and test; without
                                  them a seeded 80 / 10 / 10 split (printed in the report)

:func:`prepare_custom` writes the same layout as the benchmark preparers (images copied or
linked in their own format, labels copied, list files, ``label_names.txt``) and a
``dataset.json`` holding the data set's whole description (``dml_csr.data.schemas.Schema``): its
name, the class names and their tokens (the names made into words: ``left eye`` -> ``left_eye``,
the first always ``bg``), the flip pairs (given, else found from the names: ``left X`` /
``right X``, ``l_X`` / ``r_X``, ``X left`` / ``X right``), a palette (given, else
``schemas.default_palette``), optional merged groups for the scorer, the headline metric and
optional named groups of classes for editing masks (``FaceParsingResult.mask``).
Training, testing, the tables, the parser and the export then need nothing else.
"""
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..schemas import HEADLINES, Schema, SchemaError, default_palette
from .common import Item, PathLike, Plan, PrepareError, PrepareReport, check_link, list_dir, \
    read_lines
from .publish import CopyIdMap, check_out_dir, run_plan

__all__ = ["prepare_custom", "class_tokens", "find_flip_pairs", "read_palette", "SPLITS",
           "IMAGE_SUFFIXES"]

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SIDES = {"left": "L", "l": "L", "right": "R", "r": "R"}


def class_tokens(names: Sequence[str]) -> Tuple[str, ...]:
    """The ``label_names.txt`` token of each class name: lower case, runs of other characters
    than letters, digits and ``.+-`` made ``_``; the first (background) is ``bg``."""
    tokens = ["bg"] + [re.sub(r"[^a-z0-9.+-]+", "_", n.strip().lower()).strip("_")
                       for n in names[1:]]
    for i, t in enumerate(tokens):
        if not t:
            raise PrepareError(f"class {i} ({names[i]!r}): a name needs a letter or a digit")
    return tuple(tokens)


def find_flip_pairs(tokens: Sequence[str]) -> Tuple[Tuple[int, int], ...]:
    """Left/right pairs found from the tokens: ``left_X`` / ``right_X``, ``l_X`` / ``r_X``,
    ``X_left`` / ``X_right`` (the same X)."""
    sided: Dict[Tuple[str, str], int] = {}
    for i, t in enumerate(tokens):
        words = t.split("_")
        for side, rest in ((words[0], words[1:]), (words[-1], words[:-1])):
            if side in _SIDES and rest:
                sided.setdefault((_SIDES[side], "_".join(rest)), i)
                break
    pairs = []
    for (side, rest), left in sorted(sided.items(), key=lambda kv: kv[1]):
        right = sided.get(("R", rest))
        if side == "L" and right is not None:
            pairs.append((left, right))
    return tuple(pairs)


def read_palette(path: PathLike, num_classes: int) -> Tuple[Tuple[int, int, int], ...]:
    """One ``R G B`` (or ``R,G,B``) line per class, in id order."""
    rows = []
    for n, line in read_lines(Path(path)):
        values = [v for v in re.split(r"[,\s]+", line) if v]
        if len(values) != 3 or not all(v.isdigit() and int(v) <= 255 for v in values):
            raise PrepareError(f"{path}:{n}: expected three values 0..255 (R G B), got {line!r}")
        rows.append(tuple(int(v) for v in values))
    if len(rows) != num_classes:
        raise PrepareError(f"{path}: {len(rows)} colours for {num_classes} classes")
    return tuple(rows)


def _samples(raw: Path) -> Dict[str, Tuple[Path, Path]]:
    """{stem: (image, label)}; every image needs its label and every label its image."""
    images, labels = raw / "images", raw / "labels"
    found: Dict[str, Path] = {}
    for p in list_dir(images):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in found:
                raise PrepareError(f"{p}: two images named {p.stem} ({found[p.stem].name})")
            found[p.stem] = p
    marks = {p.stem: p for p in list_dir(labels) if p.suffix.lower() == ".png"}
    for stem in sorted(found.keys() - marks.keys()):
        raise PrepareError(f"{found[stem]}: image without label (expected "
                           f"{labels / (stem + '.png')})")
    for stem in sorted(marks.keys() - found.keys()):
        raise PrepareError(f"{marks[stem]}: label without image (expected {images}/{stem}.jpg "
                           f"or .png)")
    if not found:
        raise PrepareError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return {stem: (found[stem], marks[stem]) for stem in sorted(found)}


def _split(raw: Path, stems: List[str], seed: int) -> Tuple[Dict[str, List[str]], List[str]]:
    """{split: stems} from RAW's list files, else a seeded 80 / 10 / 10 split; and notes."""
    lists = {s: raw / f"{s}_list.txt" for s in SPLITS}
    given = {s: p for s, p in lists.items() if p.is_file()}
    if given:
        known, seen, out = set(stems), {}, {}
        for split, path in given.items():
            out[split] = []
            for n, stem in read_lines(path):
                if stem not in known:
                    raise PrepareError(f"{path}:{n}: {stem!r} is not a sample of {raw}/images")
                if stem in seen:
                    raise PrepareError(f"{path}:{n}: {stem!r} is listed already ({seen[stem]})")
                seen[stem] = f"{path.name}:{n}"
                out[split].append(stem)
        if "train" not in out:
            raise PrepareError(f"{raw}: list files without train_list.txt")
        return out, [f"splits from the list files: {', '.join(sorted(given))}"]
    order = np.random.default_rng(seed).permutation(len(stems)).tolist()
    n = len(stems)
    n_valid = n_test = max(1, round(0.1 * n)) if n >= 3 else 0
    shuffled = [stems[i] for i in order]
    out = {"valid": sorted(shuffled[:n_valid]), "test": sorted(shuffled[n_valid:n_valid + n_test]),
           "train": sorted(shuffled[n_valid + n_test:])}
    return out, [f"no list files in {raw}: a seeded split (seed {seed}) of {n} samples into "
                 f"train {len(out['train'])}, valid {n_valid}, test {n_test}"]


def prepare_custom(raw_dir: PathLike, out_dir: PathLike, *, name: str,
                   flip_pairs: Optional[Sequence[Tuple[int, int]]] = None,
                   palette: Optional[PathLike] = None,
                   merged: Optional[Dict[str, Sequence[str]]] = None,
                   headline: str = "mean_f1",
                   groups: Optional[Dict[str, Sequence[str]]] = None, seed: int = 0,
                   link: str = "copy",
                   workers: int = 0, progress: bool = True) -> PrepareReport:
    """Prepare the data set of your own in ``raw_dir`` (module docstring) as ``name``.

    Args:
        flip_pairs: (left id, right id) pairs; None: found from the class names; ``[]``: none.
        palette: a file of one ``R G B`` line per class; None: ``default_palette``.
        merged: the scorer's merged groups, {group: its tokens}; headline: ``mean_f1`` or
            ``overall_f1`` (needs a group ``overall``).
        groups: named sets of classes that masks accept by name, {group: its tokens}.
        seed: of the 80 / 10 / 10 split when RAW has no list files.
        link: how images and labels reach ``out_dir``: copy, hardlink or symlink.

    Raises:
        PrepareError: naming the file (or option) that is wrong: missing pairs, a label of
            another size than its image, ids above the class count (255 is allowed), a bad
            description.
    """
    raw, out = Path(raw_dir), Path(out_dir)
    check_link(link)
    check_out_dir(raw, out)
    names_file = raw / "label_names.txt"
    if not names_file.is_file():
        raise PrepareError(f"{names_file}: not found (one class name per line, background "
                           f"first)")
    names = [line for _, line in read_lines(names_file)]
    if len(names) < 2:
        raise PrepareError(f"{names_file}: {len(names)} class name(s); background and at least "
                           f"one class")
    tokens = class_tokens(names)
    notes = []
    if flip_pairs is None:
        flip_pairs = find_flip_pairs(tokens)
        if flip_pairs:
            notes.append("flip pairs found from the names: " + ", ".join(
                f"{tokens[a]}/{tokens[b]}" for a, b in flip_pairs))
    if headline not in HEADLINES:
        raise PrepareError(f"--headline {headline!r}: one of {HEADLINES}")
    try:
        schema = Schema(name=name, class_names=tuple(names), tokens=tokens,
                        flip_pairs=tuple(tuple(p) for p in flip_pairs),
                        palette=(read_palette(palette, len(tokens)) if palette
                                 else default_palette(len(tokens))),
                        merged=tuple((g, tuple(m)) for g, m in (merged or {}).items()),
                        headline=headline,
                        groups=tuple((g, tuple(m)) for g, m in (groups or {}).items()))
    except SchemaError as exc:
        raise PrepareError(f"{names_file}: {exc}") from None
    samples = _samples(raw)
    splits, split_notes = _split(raw, list(samples), seed)
    plan: Plan = {split: [Item(stem, samples[stem][0], ((0, samples[stem][1]),),
                               samples[stem][0].suffix.lower())
                          for stem in stems] for split, stems in splits.items()}
    return run_plan(schema, raw, out, plan, CopyIdMap(schema.num_classes, link, ignore_ok=True),
                    workers, progress, None, notes + split_notes,
                    facts={"source": "custom", "options": {"link": link, "seed": seed}})
