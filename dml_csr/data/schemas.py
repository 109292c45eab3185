"""Data-set descriptions: what a label set is, as data. The built-in ones live here.

A :class:`Schema` describes one data set completely: its name, its classes (a display name and a
``label_names.txt`` token per id, background first), the left/right pairs a horizontal flip
swaps, a colour per class, the scorer's merged groups (Helen's eyes / brows / mouth / overall),
its headline metric and named groups of classes for editing masks (``inner_face``, ``lips``, ...). It is written into a prepared root's ``dataset.json`` and into every
checkpoint and ONNX file made from it (:meth:`Schema.to_dict` / :meth:`Schema.from_dict`), so a
data set of your own needs no code: ``tools/prepare_data.py custom`` writes its description, and
training, testing, the tables, the parser and the export read it back.

The benchmarks (Helen, LaPa, CelebAMask-HQ) and the synthetic sets are built-in descriptions of
the same form (:data:`SCHEMAS`), found by name where a root or a file names no description.
"""
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Tuple

__all__ = ["Schema", "SCHEMAS", "RELEASE_DATASETS", "HEADLINES", "IGNORE_INDEX", "get_schema",
           "datasets_with_classes", "describe_class_count", "class_words",
           "default_palette", "SchemaError"]

HEADLINES = ("mean_f1", "overall_f1")      # overall_f1 needs a merged group named "overall"
IGNORE_INDEX = 255                         # the label value that no loss or score counts
MAX_CLASSES = IGNORE_INDEX                 # label maps are uint8 and 255 is the ignore value
_WORD = re.compile(r"[A-Za-z0-9_.+-]+")


class SchemaError(ValueError):
    """A data-set description that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Schema:
    """The description of one data set (module docstring).

    Attributes:
        name: data-set name (``helen``, ``lapa``, ``celebamask_hq``, or one of your own).
        class_names: human-readable name per id.
        tokens: the ``label_names.txt`` token per id (first ``bg``; letters, digits, ``_.+-``).
        flip_pairs: (left id, right id) pairs swapped by a horizontal flip.
        palette: RGB colour per id for overlays.
        merged: the scorer's merged groups, ``(name, tokens)``: the F1 of the union (Helen's
            eyes, brows, mouth, overall). Empty for most data sets.
        headline: the metric a table leads with: ``mean_f1`` or ``overall_f1`` (Helen).
        groups: named sets of classes, ``(name, tokens)``, that masks accept beside the class
            names, the tokens and the merged groups (``FaceParsingResult.mask``; the built-in
            ones in docs/inference.md, "Masks"). A description without them (a file written
            before they existed) takes those of the built-in data set with the same tokens.
        folder_hints: lower-case fragments of a root folder's name that suggest this data set
            when nothing else tells (a guess of last resort, with a warning; built-ins only).
    """

    name: str
    class_names: Tuple[str, ...]
    tokens: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    palette: Tuple[Tuple[int, int, int], ...]
    merged: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    headline: str = "mean_f1"
    groups: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    folder_hints: Tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        where = f"data set {self.name!r}"
        if not self.name or not _WORD.fullmatch(self.name):
            raise SchemaError(f"data set name {self.name!r}: use letters, digits and _.+-")
        k = len(self.tokens)
        if not 2 <= k <= MAX_CLASSES:
            raise SchemaError(f"{where}: {k} classes; between 2 and {MAX_CLASSES} (255 is the "
                              f"ignore value)")
        if len(self.class_names) != k or len(self.palette) != k:
            raise SchemaError(f"{where}: {k} tokens but {len(self.class_names)} class names and "
                              f"{len(self.palette)} colours")
        if self.tokens[0] != "bg":
            raise SchemaError(f"{where}: the first token must be 'bg' (background), got "
                              f"{self.tokens[0]!r}")
        bad = [t for t in self.tokens if not _WORD.fullmatch(t)]
        if bad:
            raise SchemaError(f"{where}: token {bad[0]!r}: tokens are words of letters, digits "
                              f"and _.+-")
        if len(set(self.tokens)) != k:
            raise SchemaError(f"{where}: duplicate tokens in {list(self.tokens)}")
        seen = set()
        for pair in self.flip_pairs:
            if len(pair) != 2 or pair[0] == pair[1] or not all(0 < c < k for c in pair) \
                    or seen & set(pair):
                raise SchemaError(f"{where}: flip pair {tuple(pair)}: two distinct class ids in "
                                  f"1..{k - 1}, each in one pair at most")
            seen |= set(pair)
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.palette):
            raise SchemaError(f"{where}: every colour is three values in 0..255")
        for group, members in self.merged:
            missing = [m for m in members if m not in self.tokens]
            if group in self.tokens or missing or len(members) < 2:
                raise SchemaError(f"{where}: merged group {group!r} needs two or more of the "
                                  f"data set's tokens and a name that is not one of them"
                                  + (f" ({missing[0]!r} is not a token)" if missing else ""))
        named = set(self.tokens) | set(dict(self.merged))
        for group, members in self.groups:
            missing = [m for m in members if m not in self.tokens]
            if not _WORD.fullmatch(group) or group in named or missing or not members:
                raise SchemaError(f"{where}: group {group!r} needs one or more of the data set's "
                                  f"tokens and a name (letters, digits, _.+-) that is not a "
                                  f"token or a merged group"
                                  + (f" ({missing[0]!r} is not a token)" if missing else ""))
            named.add(group)
        if self.headline not in HEADLINES:
            raise SchemaError(f"{where}: headline {self.headline!r}: one of {HEADLINES}")
        if self.headline == "overall_f1" and "overall" not in dict(self.merged):
            raise SchemaError(f"{where}: headline 'overall_f1' needs a merged group 'overall'")

    @property
    def num_classes(self) -> int:
        return len(self.tokens)

    def flip_permutation(self) -> List[int]:
        """Index permutation p with p[c] = the class that c becomes after a horizontal flip."""
        perm = list(range(self.num_classes))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def merged_groups(self) -> Dict[str, Tuple[str, ...]]:
        """{group name: its tokens} of the scorer's merged F1s."""
        return dict(self.merged)

    def named_sets(self) -> Dict[str, Tuple[int, ...]]:
        """Every word that selects classes, and its class ids: each class's name and token, the
        merged groups and the groups (:attr:`groups`), in that order."""
        ids = {t: i for i, t in enumerate(self.tokens)}
        out = class_words(self.class_names, self.tokens)
        for group, members in self.merged + self.groups:
            out.setdefault(group, tuple(sorted({ids[m] for m in members})))
        return out

    def renamed(self, name: str) -> "Schema":
        return replace(self, name=name)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form written into ``dataset.json``, checkpoints and ONNX metadata."""
        return {"name": self.name, "class_names": list(self.class_names),
                "tokens": list(self.tokens), "flip_pairs": [list(p) for p in self.flip_pairs],
                "palette": [list(c) for c in self.palette],
                "merged": {g: list(m) for g, m in self.merged}, "headline": self.headline,
                "groups": {g: list(m) for g, m in self.groups}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "description") -> "Schema":
        """The description in ``d`` (:meth:`to_dict`'s form); SchemaError naming ``source``
        and the field when it is malformed."""
        try:
            merged = d.get("merged") or {}
            tokens = tuple(str(t) for t in d["tokens"])
            if "groups" in d:
                groups = tuple((str(g), tuple(str(m) for m in ms))
                               for g, ms in dict(d["groups"] or {}).items())
            else:           # written before groups existed: a built-in's with the same tokens
                groups = next((b.groups for b in SCHEMAS.values() if b.tokens == tokens), ())
            return cls(name=str(d["name"]), class_names=tuple(str(n) for n in d["class_names"]),
                       tokens=tokens,
                       flip_pairs=tuple(tuple(int(c) for c in p) for p in d.get("flip_pairs", [])),
                       palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
                       merged=tuple((str(g), tuple(str(m) for m in ms))
                                    for g, ms in dict(merged).items()),
                       headline=str(d.get("headline", "mean_f1")), groups=groups)
        except SchemaError as exc:
            raise SchemaError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SchemaError(f"{source}: not a data-set description ({type(exc).__name__}: "
                              f"{exc}); expected name, class_names, tokens, flip_pairs, palette, "
                              f"merged, headline, groups") from None


def class_words(class_names, tokens) -> Dict[str, Tuple[int, ...]]:
    """{word: (class id,)} for each class's name and token, in id order (a word taken by an
    earlier class keeps it): the start of :meth:`Schema.named_sets`."""
    out: Dict[str, Tuple[int, ...]] = {}
    for i, (name, token) in enumerate(zip(class_names, tokens)):
        out.setdefault(name, (i,))
        out.setdefault(token, (i,))
    return out


def default_palette(num_classes: int) -> Tuple[Tuple[int, int, int], ...]:
    """Black for the background, then distinct saturated colours (golden-ratio hues, two
    brightness levels): the same for every data set of that size."""
    import colorsys
    out = [(0, 0, 0)]
    for i in range(1, num_classes):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 else 0.7
        out.append(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, value)))
    return tuple(out)


# Helen and LaPa share one 11-class order. "Left" is the viewer's side (relabelled Helen README).
_HELEN_NAMES = ("background", "skin", "left brow", "right brow", "left eye", "right eye", "nose",
                "upper lip", "inner mouth", "lower lip", "hair")
_HELEN_TOKENS = ("bg", "face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip", "hair")
_HELEN_PALETTE = ((0, 0, 0), (255, 204, 153), (102, 51, 0), (153, 76, 0), (0, 102, 255),
                  (0, 204, 255), (255, 128, 0), (204, 0, 51), (255, 102, 178), (153, 0, 76),
                  (96, 64, 32))

# CelebAMask-HQ in the official order of the data set authors' merge script (later ids are
# painted over earlier ones when per-part masks overlap).
_CELEBA_TOKENS = ("bg", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
                  "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck",
                  "cloth")
_CELEBA_NAMES = ("background", "skin", "nose", "glasses", "left eye", "right eye", "left brow",
                 "right brow", "left ear", "right ear", "inner mouth", "upper lip", "lower lip",
                 "hair", "hat", "earring", "necklace", "neck", "cloth")
_CELEBA_PALETTE = ((0, 0, 0), (255, 204, 153), (255, 128, 0), (160, 160, 160), (0, 102, 255),
                   (0, 204, 255), (102, 51, 0), (153, 76, 0), (255, 153, 204), (204, 102, 153),
                   (255, 102, 178), (204, 0, 51), (153, 0, 76), (96, 64, 32), (0, 153, 76),
                   (255, 255, 0), (255, 0, 255), (255, 178, 102), (51, 102, 153))

# Helen's merged groups (the release's scorer), over the Helen / LaPa tokens
_HELEN_MERGED = (("eyes", ("le", "re")), ("brows", ("lb", "rb")),
                 ("mouth", ("ulip", "imouth", "llip")),
                 ("overall", ("le", "re", "lb", "rb", "nose", "ulip", "imouth", "llip")))
_HELEN_PAIRS = ((2, 3), (4, 5))
# the mask groups (docs/inference.md, "Masks"): the same words mean the same parts in both orders
# (Helen's own token "face" is the skin and CelebAMask-HQ's "mouth" the inner mouth: their names)
_HELEN_GROUPS = (("lips", ("ulip", "llip")),
                 ("inner_face", ("face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip")),
                 ("head", ("face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip",
                           "hair")))
_CELEBA_INNER = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip",
                 "l_lip")
_CELEBA_GROUPS = (("eyes", ("l_eye", "r_eye")), ("brows", ("l_brow", "r_brow")),
                  ("ears", ("l_ear", "r_ear")), ("lips", ("u_lip", "l_lip")),
                  ("inner_face", _CELEBA_INNER),
                  ("head", _CELEBA_INNER + ("l_ear", "r_ear", "hair")),
                  ("accessories", ("eye_g", "hat", "ear_r", "neck_l")))
_CELEBA_PAIRS = ((4, 5), (6, 7), (8, 9))

SCHEMAS: Dict[str, Schema] = {s.name: s for s in (
    # Helen is scored by its overall F1 (Table 1), every other data set by the mean F1
    Schema("helen", _HELEN_NAMES, _HELEN_TOKENS, _HELEN_PAIRS, _HELEN_PALETTE, _HELEN_MERGED,
           "overall_f1", groups=_HELEN_GROUPS, folder_hints=("helen",)),
    Schema("lapa", _HELEN_NAMES, _HELEN_TOKENS, _HELEN_PAIRS, _HELEN_PALETTE, _HELEN_MERGED,
           groups=_HELEN_GROUPS, folder_hints=("lapa",)),
    Schema("celebamask_hq", _CELEBA_NAMES, _CELEBA_TOKENS, _CELEBA_PAIRS, _CELEBA_PALETTE,
           groups=_CELEBA_GROUPS, folder_hints=("celeb",)),
    # The synthetic data set uses the Helen/LaPa order (11 classes) or, with ``--classes 19``,
    # the CelebAMask-HQ order.
    Schema("synthetic", _HELEN_NAMES, _HELEN_TOKENS, _HELEN_PAIRS, _HELEN_PALETTE, _HELEN_MERGED,
           groups=_HELEN_GROUPS, folder_hints=("synth",)),
    Schema("synthetic19", _CELEBA_NAMES, _CELEBA_TOKENS, _CELEBA_PAIRS, _CELEBA_PALETTE,
           groups=_CELEBA_GROUPS, folder_hints=("synth",)),
)}


# The benchmarks with published (release) checkpoints; the synthetic schemas are for tests.
RELEASE_DATASETS = ("helen", "lapa", "celebamask_hq")


def get_schema(name: str) -> Schema:
    """The built-in description ``name``; KeyError listing them (a data set of your own is
    found through its root's ``dataset.json``: ``layout.root_schema``)."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}: the built-in ones are "
                       f"{', '.join(sorted(SCHEMAS))}, and a data set of your own is declared "
                       f"by its root's dataset.json (tools/prepare_data.py custom); "
                       f"data.dataset in the config, --dataset on the command line") from None


def datasets_with_classes(num_classes: int, release_only: bool = True) -> List[str]:
    """The data sets whose schema has ``num_classes`` classes (by default only the benchmarks of
    ``RELEASE_DATASETS``): 11 -> helen, lapa; 19 -> celebamask_hq."""
    names = RELEASE_DATASETS if release_only else tuple(SCHEMAS)
    return [n for n in names if SCHEMAS[n].num_classes == num_classes]


def describe_class_count(num_classes: int) -> str:
    """Which data sets ``num_classes`` classes belong to, for error messages."""
    names = datasets_with_classes(num_classes)
    if not names:
        known = ", ".join(f"{n} {SCHEMAS[n].num_classes}" for n in RELEASE_DATASETS)
        return f"{num_classes} classes match no supported data set ({known})"
    return f"{num_classes} classes: {' or '.join(names)}"
