"""Label schemas of the supported data sets: one place for class names, tokens, pairs and palettes.

Every other part of the project (data preparation, flipping, scoring, tables, visualisation, the
inference API) reads label facts from here, never from its own copy.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = ["Schema", "SCHEMAS", "RELEASE_DATASETS", "get_schema", "schema_from_tokens",
           "datasets_with_classes", "describe_class_count"]


@dataclass(frozen=True)
class Schema:
    """Label facts of one data set.

    Attributes:
        name: data-set name (``helen``, ``lapa``, ``celebamask_hq``, ...).
        class_names: human-readable name per id.
        tokens: the ``label_names.txt`` token per id (first is ``bg``); the scorer's merged names
            (eyes, brows, mouth, overall) are defined over these tokens.
        flip_pairs: (left id, right id) pairs swapped by a horizontal flip.
        palette: RGB colour per id for overlays.
    """

    name: str
    class_names: Tuple[str, ...]
    tokens: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    palette: Tuple[Tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.tokens)

    def flip_permutation(self) -> List[int]:
        """Index permutation p with p[c] = the class that c becomes after a horizontal flip."""
        perm = list(range(self.num_classes))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm


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

SCHEMAS: Dict[str, Schema] = {
    "helen": Schema("helen", _HELEN_NAMES, _HELEN_TOKENS, ((2, 3), (4, 5)), _HELEN_PALETTE),
    "lapa": Schema("lapa", _HELEN_NAMES, _HELEN_TOKENS, ((2, 3), (4, 5)), _HELEN_PALETTE),
    "celebamask_hq": Schema("celebamask_hq", _CELEBA_NAMES, _CELEBA_TOKENS,
                            ((4, 5), (6, 7), (8, 9)), _CELEBA_PALETTE),
    # The synthetic data set uses the Helen/LaPa order (11 classes) or, with ``--classes 19``,
    # the CelebAMask-HQ order.
    "synthetic": Schema("synthetic", _HELEN_NAMES, _HELEN_TOKENS, ((2, 3), (4, 5)), _HELEN_PALETTE),
    "synthetic19": Schema("synthetic19", _CELEBA_NAMES, _CELEBA_TOKENS,
                          ((4, 5), (6, 7), (8, 9)), _CELEBA_PALETTE),
}


# The benchmarks with published (release) checkpoints; the synthetic schemas are for tests.
RELEASE_DATASETS = ("helen", "lapa", "celebamask_hq")


def get_schema(name: str) -> Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}: choose one of {', '.join(sorted(SCHEMAS))} "
                       "(data.dataset in the config, --dataset on the command line)") from None


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


def schema_from_tokens(tokens: Sequence[str]) -> Schema:
    """The schema whose tokens equal ``tokens`` (as read from a ``label_names.txt``)."""
    tokens = tuple(tokens)
    for schema in SCHEMAS.values():
        if schema.tokens == tokens:
            return schema
    raise ValueError(f"label_names {list(tokens)} match no known schema")
