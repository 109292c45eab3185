"""Label noise of the synthetic training labels: :func:`corrupt_label`, the mistakes of careless
annotation (left/right or lips swapped, a part eroded, dilated or shifted)."""
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from ..schemas import Schema

__all__ = ["corrupt_label", "NOISE_KINDS"]

NOISE_KINDS = ("swap_left_right", "swap_lips", "erode", "dilate", "shift")

# Class pairs an annotator confuses (upper/lower lip), in either order's tokens.
_LIP_PAIRS = (("ulip", "llip"), ("u_lip", "l_lip"))


def _fill_nearest(label: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """``label`` with the ``unknown`` pixels set to the label of the nearest known pixel."""
    out = label.copy()
    if not unknown.any() or unknown.all():
        return out
    _, idx = cv2.distanceTransformWithLabels(unknown.astype(np.uint8), cv2.DIST_L2, 3,
                                             labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(idx.max()) + 1, np.uint8)
    lut[idx[~unknown]] = label[~unknown]  # every known pixel is its own seed
    out[unknown] = lut[idx[unknown]]
    return out


def _kernel(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, int]:
    r = int(rng.integers(1, max(1, size // 64) + 1))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)), r


def corrupt_label(label: np.ndarray, rng: Union[int, np.random.Generator], schema: Schema,
                  kinds: Sequence[str] = NOISE_KINDS) -> Tuple[np.ndarray, dict]:
    """Corrupt one label map the way careless annotation does.

    Kinds: ``swap_left_right`` (every left/right pair of the schema swapped), ``swap_lips`` (upper
    and lower lip swapped), ``erode`` / ``dilate`` (one part shrunk into / grown over its
    neighbours with a 3x3..(2r+1)^2 ellipse, r up to size/64), ``shift`` (one part moved by a few
    pixels, the uncovered area taken by its neighbours). Kinds are tried in a random order until
    one changes the label.

    Returns:
        ``(corrupted, record)``; ``record`` holds ``kind``, ``classes`` (tokens), ``params`` and
        ``changed_pixels``; kind ``none`` if no kind could change this label.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    unknown = set(kinds) - set(NOISE_KINDS)
    if unknown:
        raise ValueError(f"unknown noise kinds {sorted(unknown)}; known: {list(NOISE_KINDS)}")
    tok = schema.tokens
    size = label.shape[0]
    present = [int(c) for c, n in enumerate(np.bincount(label.ravel(), minlength=len(tok)))
               if c > 0 and c < len(tok) and n >= 4]
    for kind in [kinds[i] for i in rng.permutation(len(kinds))]:
        out, classes, params = label, [], {}
        if kind == "swap_left_right":
            lut = np.array(schema.flip_permutation(), np.uint8)
            out = lut[label]
            classes = [t for pair in schema.flip_pairs for t in (tok[pair[0]], tok[pair[1]])]
        elif kind == "swap_lips":
            pair = next(((tok.index(u), tok.index(l)) for u, l in _LIP_PAIRS if u in tok), None)
            if pair is not None:
                lut = np.arange(len(tok), dtype=np.uint8)
                lut[pair[0]], lut[pair[1]] = pair[1], pair[0]
                out = lut[label]
                classes = [tok[pair[0]], tok[pair[1]]]
        elif present:
            c = int(rng.choice(present))
            part = label == c
            classes = [tok[c]]
            if kind == "erode":
                kernel, r = _kernel(rng, size)
                kept = cv2.erode(part.astype(np.uint8), kernel).astype(bool)
                out = _fill_nearest(label, part)
                out[kept] = c
                params = {"radius": r}
            elif kind == "dilate":
                kernel, r = _kernel(rng, size)
                out = label.copy()
                out[cv2.dilate(part.astype(np.uint8), kernel).astype(bool)] = c
                params = {"radius": r}
            else:  # shift
                k = max(1, round(size / 40))
                dx, dy = 0, 0
                while dx == 0 and dy == 0:
                    dx, dy = (int(v) for v in rng.integers(-k, k + 1, 2))
                m = np.float32([[1, 0, dx], [0, 1, dy]])
                moved = cv2.warpAffine(part.astype(np.uint8), m, (size, size), flags=cv2.INTER_NEAREST)
                out = _fill_nearest(label, part)
                out[moved.astype(bool)] = c
                params = {"dx": dx, "dy": dy}
        changed = int(np.count_nonzero(out != label))
        if changed:
            return out, {"kind": kind, "classes": classes, "params": params, "changed_pixels": changed}
    return label.copy(), {"kind": "none", "classes": [], "params": {}, "changed_pixels": 0}
