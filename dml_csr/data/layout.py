"""The one reader of a prepared data root: label names, split lists and the data set's identity.

    ROOT/dataset.json             which data set the root holds (its whole description) and
                                  what produced it (identity)
    ROOT/label_names.txt          schema tokens, one per line, first ``bg``
    ROOT/<split>_list.txt         lines ``images/NAME.jpg labels/NAME.png`` (relative to
                                  ROOT/<split>/); a line may hold the image alone (no label)
    ROOT/<split>/images/NAME.jpg  ROOT/<split>/labels/NAME.png
    ROOT/synthetic_info.json      synthetic roots only: the generator's record

Everything that reads a root (``FaceDataset``, the data check, the scorer, the tools) reads it
through this module, and the writers (:mod:`dml_csr.data.prepare`, :mod:`dml_csr.data.synthetic`)
write the list files, ``label_names.txt`` and ``dataset.json`` with its functions, so the format
has one definition.

Which data set a root holds has one answer, :func:`root_schema`: the name asked for
(``--dataset``, ``data.dataset``) when there is one, else the description ``dataset.json``
declares (``synthetic_info.json`` for synthetic roots written before it existed), and last a
guess from the folder's name or the tokens, with a warning. Training, the data check, testing and
the folder scorer all call it, so a root is the same data set to each of them.
"""
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Set, Tuple, Union

from ..files import write_text
from .schemas import SCHEMAS, Schema, get_schema

__all__ = ["LABEL_NAMES", "IDENTITY_FILE", "IDENTITY_FORMAT", "SYNTHETIC_INFO", "split_list_path",
           "read_label_names", "label_names_text", "read_split_list", "split_list_text",
           "read_identity", "write_identity", "declared_schema", "root_schema"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

LABEL_NAMES = "label_names.txt"
IDENTITY_FILE = "dataset.json"
IDENTITY_FORMAT = 2          # version of the dataset.json fields (2: + the description); newer refused
SYNTHETIC_INFO = "synthetic_info.json"  # written by dml_csr.data.synthetic into its roots

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


def split_list_text(names: Iterable[Union[str, Tuple[str, str]]]) -> str:
    """The text of a ``<split>_list.txt`` for the samples ``names``: a name (a JPEG image), or
    ``(name, image extension)`` for images kept in another format (``.png``)."""
    lines = []
    for item in names:
        name, ext = (item, ".jpg") if isinstance(item, str) else item
        lines.append(f"images/{name}{ext} labels/{name}.png\n")
    return "".join(lines)


# ----------------------------------------------------------------------------------------------
# Identity (dataset.json)


def write_identity(root: PathLike, dataset: Union[str, Schema], *, tool: str, **facts) -> dict:
    """Write ``ROOT/dataset.json`` and return what it holds.

    Fields: ``format`` (:data:`IDENTITY_FORMAT`), ``dataset`` (the data set's name),
    ``num_classes``, ``schema`` (the whole description, ``Schema.to_dict``: a data set of your
    own needs nothing else), ``tool`` (what produced the root: ``prepare_data``,
    ``make_synthetic``), then ``facts`` as given (JSON values: the raw source, the options, ...).
    ``dataset``: a description, or the name of a built-in one.
    """
    schema = dataset if isinstance(dataset, Schema) else get_schema(dataset)
    reserved = {"format", "dataset", "num_classes", "schema"} & set(facts)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are set by write_identity, do not pass them")
    identity = {"format": IDENTITY_FORMAT, "dataset": schema.name,
                "num_classes": schema.num_classes, "schema": schema.to_dict(), "tool": tool,
                **facts}
    write_text(os.path.join(root, IDENTITY_FILE), json.dumps(identity, indent=1) + "\n")
    return identity


def read_identity(root: PathLike) -> Optional[dict]:
    """``ROOT/dataset.json`` (:func:`write_identity`), or None if the root has none; its
    ``schema`` entry is returned as a :class:`Schema` (format 1 files, which hold only a
    built-in's name, get that built-in).

    Raises ValueError naming the file when it is not a JSON object, has a ``format`` newer than
    :data:`IDENTITY_FORMAT`, holds a malformed description, names an unknown data set without
    one, or a ``num_classes`` other than its description's.
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
    if isinstance(identity.get("schema"), dict):
        schema = Schema.from_dict(identity["schema"], path)
        if name is not None and name != schema.name:
            raise ValueError(f"{path}: dataset {name!r} but its description is {schema.name!r}")
    elif name in SCHEMAS:
        schema = SCHEMAS[name]
    else:
        raise ValueError(f"{path}: dataset {name!r} is not built in ({', '.join(sorted(SCHEMAS))})"
                         f" and the file holds no description ('schema'); re-create it with "
                         f"tools/prepare_data.py")
    k = identity.get("num_classes", schema.num_classes)
    if k != schema.num_classes:
        raise ValueError(f"{path}: num_classes {k!r}, but the {schema.name} description has "
                         f"{schema.num_classes}")
    return dict(identity, dataset=schema.name, schema=schema)


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


def declared_schema(root: PathLike) -> Optional[Tuple[Schema, str]]:
    """(description, the file declaring it) from ``dataset.json`` or ``synthetic_info.json``;
    None when the root declares nothing (no guess)."""
    identity = read_identity(root)
    if identity is not None:
        return identity["schema"], IDENTITY_FILE
    synthetic = _synthetic_dataset(root)
    return (SCHEMAS[synthetic], SYNTHETIC_INFO) if synthetic else None


def _guess(root: PathLike, tokens: Tuple[str, ...]) -> Schema:
    """The built-in the root folder's name suggests (a ``folder_hints`` fragment, its tokens
    those of ``label_names.txt``), else the one built-in with these tokens; ValueError when
    neither tells."""
    folder = re.sub(r"[^a-z0-9]", "", Path(root).resolve().name.lower())
    matching = [s for s in SCHEMAS.values() if s.tokens == tokens]
    for schema in matching:
        if any(hint in folder for hint in schema.folder_hints):
            return schema
    if len(matching) == 1:
        return matching[0]
    raise ValueError(f"cannot tell which data set {root} holds: it has no {IDENTITY_FILE} "
                     f"(tools/prepare_data.py and tools/make_synthetic.py write one) and its folder "
                     f"name names none; pass dataset= / --dataset / data.dataset "
                     f"({os.path.join(root, LABEL_NAMES)} matches "
                     f"{sorted(s.name for s in matching) or 'no built-in data set'})")


def root_schema(root: PathLike, name: Optional[str] = None) -> Schema:
    """THE answer to "which data set is this root": the description every reader uses.

    In this order: ``name`` (``data.dataset``, ``--dataset``) when given: the description the
    root declares under that name, else the built-in one of that name (a warning when the root
    declares another data set); without ``name``, the description ``dataset.json`` declares
    (or ``synthetic_info.json``: the synthetic sets); last a guess (a warning): the built-in the
    folder's name suggests, or the only built-in with the tokens of ``label_names.txt``. The
    description's tokens must be those of ``ROOT/label_names.txt``.

    Raises:
        FileNotFoundError: no ``label_names.txt``.
        KeyError: ``name`` is neither declared by the root nor built in.
        ValueError: tokens that differ from the description's; nothing tells (the message says
            what to pass); a malformed ``dataset.json``.
    """
    tokens = tuple(read_label_names(root))
    names_file = os.path.join(root, LABEL_NAMES)
    declared = declared_schema(root)
    if name:
        if declared is not None and declared[0].name == name:
            schema, source = declared[0], declared[1]
        else:
            if name not in SCHEMAS:
                said = (f"{root}/{declared[1]} declares {declared[0].name!r}" if declared
                        else f"{root} declares none ({IDENTITY_FILE})")
                raise KeyError(f"data set {name!r} is neither built in ({', '.join(sorted(SCHEMAS))}"
                               f") nor declared by the root: {said}")
            schema, source = SCHEMAS[name], "the built-in description"
            if declared is not None:
                key = (os.path.abspath(root), name)
                if key not in _WARNED:
                    _WARNED.add(key)
                    logger.warning("%s: its %s says it holds %r, but %r is used (data.dataset of "
                                   "the config or --dataset): the class names, flips and scores "
                                   "follow %r", root, declared[1], declared[0].name, name, name)
    elif declared is not None:
        schema, source = declared
    else:
        schema, source = _guess(root, tokens), "a guess"
        logger.warning("%s has no %s: guessed data set %r (folder name / label_names.txt); pass "
                       "--dataset, or add %s (re-running tools/prepare_data.py on the root "
                       "writes it and skips every sample already done; docs/datasets.md)", root,
                       IDENTITY_FILE, schema.name, IDENTITY_FILE)
    if schema.tokens != tokens:
        raise ValueError(f"{names_file} lists {len(tokens)} classes {list(tokens)}, not those of "
                         f"the {schema.name} description ({source}) {list(schema.tokens)}")
    return schema
