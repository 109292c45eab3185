"""The one reader of a prepared data root: label names, split lists and the data set's identity.

    ROOT/dataset.json             which data set the root holds and what produced it (identity)
    ROOT/label_names.txt          schema tokens, one per line, first ``bg``
    ROOT/<split>_list.txt         lines ``images/NAME.jpg labels/NAME.png`` (relative to
                                  ROOT/<split>/); a line may hold the image alone (no label)
    ROOT/<split>/images/NAME.jpg  ROOT/<split>/labels/NAME.png
    ROOT/synthetic_info.json      synthetic roots only: the generator's record

Everything that reads a root (``FaceDataset``, the data check, the scorer, the tools) reads it
through this module, and the writers (:mod:`dml_csr.data.prepare`, :mod:`dml_csr.data.synthetic`)
write the list files, ``label_names.txt`` and ``dataset.json`` with its functions, so the format
has one definition.

Which data set a root holds (:func:`dataset_of`): an explicit name (``--dataset``,
``data.dataset``) first, then ``dataset.json``, then ``synthetic_info.json`` (synthetic roots
written before ``dataset.json`` existed), and last a guess from the root folder's name, with a
warning. The tokens cannot decide it alone: Helen and LaPa share theirs but not their headline
metric.
"""
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Set, Tuple, Union

from ..files import write_text
from .schemas import SCHEMAS, Schema, get_schema, schema_from_tokens

__all__ = ["LABEL_NAMES", "IDENTITY_FILE", "IDENTITY_FORMAT", "SYNTHETIC_INFO", "split_list_path",
           "read_label_names", "label_names_text", "read_split_list", "split_list_text",
           "read_identity", "write_identity", "dataset_of", "root_schema", "warn_if_other_dataset"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

LABEL_NAMES = "label_names.txt"
IDENTITY_FILE = "dataset.json"
IDENTITY_FORMAT = 1          # version of the dataset.json fields; a newer one is refused
SYNTHETIC_INFO = "synthetic_info.json"  # written by dml_csr.data.synthetic into its roots

# Folder-name fragments of the last-resort guess, tried in this order.
_NAME_HINTS = (("celeb", "celebamask_hq"), ("lapa", "lapa"), ("helen", "helen"),
               ("synth", "synthetic"))
_WARNED: Set[Tuple[str, str]] = set()


# ----------------------------------------------------------------------------------------------
# Label names and split lists


def split_list_path(root: PathLike, split: str) -> str:
    """``ROOT/<split>_list.txt``."""
    return os.path.join(root, f"{split}_list.txt")


def read_label_names(root: PathLike) -> List[str]:
    """Tokens of ``ROOT/label_names.txt`` (``root`` may also name the ``.txt`` file itself): one
    per line, blank lines skipped, the first ``bg``."""
    path = os.fspath(root)
    if not path.endswith(".txt"):
        path = os.path.join(path, LABEL_NAMES)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label names file not found: {path} (one class token per line, "
                                "first 'bg'; is the data root prepared? tools/prepare_data.py "
                                "writes it; check data.root / --data-root)")
    with open(path, "r", encoding="utf-8") as f:
        tokens = [line.strip() for line in f if line.strip()]
    if not tokens or tokens[0] != "bg":
        raise ValueError(f"{path}: the first token must be 'bg', got {tokens[:1]}")
    return tokens


def label_names_text(tokens: Sequence[str]) -> str:
    """The text of a ``label_names.txt`` listing ``tokens``."""
    return "".join(f"{t}\n" for t in tokens)


def read_split_list(list_path: str, split_dir: str) -> List[Tuple[int, str, Optional[str]]]:
    """``(line number, image path, label path or None)`` per line of a ``<split>_list.txt``, the
    paths joined to ``split_dir`` (``""`` keeps them relative to the split folder); blank lines
    skipped. Raises on a missing or empty list and on a line with more than two paths (whether
    the files exist is left to the caller)."""
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"list file not found: {list_path} (check the split name and "
                                f"the data root; tools/prepare_data.py writes the lists)")
    entries: List[Tuple[int, str, Optional[str]]] = []
    with open(list_path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ValueError(f"{list_path}:{lineno}: malformed line {line.strip()!r}, "
                                 "expected 'images/NAME.jpg labels/NAME.png'")
            paths = [os.path.join(split_dir, p) for p in parts]
            entries.append((lineno, paths[0], paths[1] if len(paths) == 2 else None))
    if not entries:
        raise ValueError(f"list file {list_path} lists no samples")
    return entries


def split_list_text(names: Iterable[str]) -> str:
    """The text of a ``<split>_list.txt`` for the samples ``names``."""
    return "".join(f"images/{name}.jpg labels/{name}.png\n" for name in names)


# ----------------------------------------------------------------------------------------------
# Identity (dataset.json)


def write_identity(root: PathLike, dataset: str, *, tool: str, **facts) -> dict:
    """Write ``ROOT/dataset.json`` and return what it holds.

    Fields: ``format`` (:data:`IDENTITY_FORMAT`), ``dataset`` (a schema name of
    :mod:`dml_csr.data.schemas`), ``num_classes`` (of that schema), ``tool`` (what produced the
    root: ``prepare_data``, ``make_synthetic``), then ``facts`` as given (JSON values: the raw
    source, the options, ...).
    """
    schema = get_schema(dataset)
    reserved = {"format", "dataset", "num_classes"} & set(facts)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are set by write_identity, do not pass them")
    identity = {"format": IDENTITY_FORMAT, "dataset": schema.name,
                "num_classes": schema.num_classes, "tool": tool, **facts}
    text = json.dumps(identity, indent=1) + "\n"
    write_text(os.path.join(root, IDENTITY_FILE), text)
    return identity


def read_identity(root: PathLike) -> Optional[dict]:
    """``ROOT/dataset.json`` (:func:`write_identity`), or None if the root has none.

    Raises ValueError naming the file when it is not a JSON object, has a ``format`` newer than
    :data:`IDENTITY_FORMAT`, names no known data set, or a ``num_classes`` other than its
    schema's.
    """
    path = os.path.join(root, IDENTITY_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            identity = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as JSON: {err}") from None
    if not isinstance(identity, dict):
        raise ValueError(f"{path}: expected a JSON object with 'format' and 'dataset'")
    fmt = identity.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or not 1 <= fmt <= IDENTITY_FORMAT:
        raise ValueError(f"{path}: format {fmt!r} is not one this code reads (1.."
                         f"{IDENTITY_FORMAT}); update the project or re-create the file")
    name = identity.get("dataset")
    if name not in SCHEMAS:
        raise ValueError(f"{path}: dataset {name!r} is not one of {', '.join(sorted(SCHEMAS))}")
    k = identity.get("num_classes", SCHEMAS[name].num_classes)
    if k != SCHEMAS[name].num_classes:
        raise ValueError(f"{path}: num_classes {k!r}, but the {name} schema has "
                         f"{SCHEMAS[name].num_classes}")
    return identity


def _synthetic_dataset(root: PathLike) -> Optional[str]:
    """``synthetic`` / ``synthetic19`` for a root holding ``synthetic_info.json`` (its ``schema``,
    or, if it names none, the number of tokens of ``label_names.txt``); None otherwise."""
    path = os.path.join(root, SYNTHETIC_INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            schema = json.load(f).get("schema")
    except (OSError, ValueError, AttributeError):
        schema = None
    if schema in ("synthetic", "synthetic19"):
        return schema
    nineteen = len(read_label_names(root)) == SCHEMAS["synthetic19"].num_classes
    return "synthetic19" if nineteen else "synthetic"


def _named_dataset(root: PathLike) -> Optional[Tuple[str, str]]:
    """(data set, file naming it) from ``dataset.json`` or ``synthetic_info.json``; no guess."""
    identity = read_identity(root)
    if identity is not None:
        return identity["dataset"], IDENTITY_FILE
    synthetic = _synthetic_dataset(root)
    return (synthetic, SYNTHETIC_INFO) if synthetic else None


def _guess_from_folder(root: PathLike) -> str:
    """The data set the root folder's name suggests (``celeb``, ``lapa``, ``helen``, ``synth`` in
    it, case-insensitive; ``synthetic`` becomes ``synthetic19`` for 19 tokens), kept only if that
    schema's tokens are those of ``label_names.txt``."""
    tokens = tuple(read_label_names(root))
    folder = re.sub(r"[^a-z0-9]", "", Path(root).resolve().name.lower())
    for hint, name in _NAME_HINTS:
        if hint in folder:
            if name == "synthetic" and len(tokens) == SCHEMAS["synthetic19"].num_classes:
                name = "synthetic19"
            if SCHEMAS[name].tokens == tokens:
                return name
    candidates = sorted(n for n, s in SCHEMAS.items() if s.tokens == tokens)
    raise ValueError(f"cannot tell which data set {root} holds: it has no {IDENTITY_FILE} "
                     "(tools/prepare_data.py and tools/make_synthetic.py write one) and its folder "
                     f"name names none; pass dataset= / --dataset (label_names.txt matches "
                     f"{candidates or 'none'})")


def dataset_of(root: PathLike, hint: Optional[str] = None) -> str:
    """The data-set (schema) name of ``root``.

    In this order: ``hint`` when given (``--dataset``, ``data.dataset``; a schema name, else
    KeyError); the ``dataset`` of ``ROOT/dataset.json``; ``synthetic`` / ``synthetic19`` for a
    root with the synthetic generator's ``synthetic_info.json``; last a guess from the folder name
    (:func:`_guess_from_folder`), with a warning. ValueError when nothing tells.
    """
    if hint is not None:
        return get_schema(hint).name
    named = _named_dataset(root)
    if named is not None:
        return named[0]
    name = _guess_from_folder(root)
    logger.warning("%s has no %s: guessed data set %r from the folder name; pass --dataset, or "
                   "add %s (re-running tools/prepare_data.py on the root writes it and skips "
                   "every sample already done; docs/datasets.md)", root, IDENTITY_FILE, name,
                   IDENTITY_FILE)
    return name


def root_schema(root: PathLike) -> Schema:
    """The schema of ``root``: the one ``dataset.json`` (or ``synthetic_info.json``) names, checked
    against ``label_names.txt``; without either, the schema of the tokens (Helen and LaPa share
    theirs: ``helen`` then). ValueError naming the file on a mismatch or unknown tokens."""
    tokens = tuple(read_label_names(root))
    names_file = os.path.join(root, LABEL_NAMES)
    named = _named_dataset(root)
    if named is None:
        try:
            return schema_from_tokens(tokens)
        except ValueError as err:
            raise ValueError(f"{names_file}: {err}") from None
    schema = get_schema(named[0])
    if schema.tokens != tokens:
        raise ValueError(f"{names_file} lists {len(tokens)} classes {list(tokens)}, not those of "
                         f"the {schema.name} schema that {named[1]} names "
                         f"{list(schema.tokens)}")
    return schema


def warn_if_other_dataset(root: PathLike, dataset: str) -> Optional[str]:
    """Warn (once per root and name) when ``dataset.json`` or ``synthetic_info.json`` of ``root``
    names another data set than ``dataset`` (``data.dataset`` of a config, ``--dataset``); return
    the named one (None when the root names none)."""
    named = _named_dataset(root)
    if named is None:
        return None
    key = (os.path.abspath(root), dataset)
    if named[0] != dataset and key not in _WARNED:
        _WARNED.add(key)
        logger.warning("%s: its %s says it holds %r, but %r is used (data.dataset of the config "
                       "or --dataset): the class names, flips and scores follow %r", root,
                       named[1], named[0], dataset, dataset)
    return named[0]
