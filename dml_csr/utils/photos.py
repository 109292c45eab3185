"""Turned copies of photos, for the detector tests and benchmarks (a photo turned by a known angle
must give the same faces, and its labels warped back the same parse)."""
from typing import Tuple

import cv2
import numpy as np

__all__ = ["turn_matrix", "turn_photo"]

_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}
_INTERP = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def turn_matrix(size: Tuple[int, int], degrees: float,
                expand: bool = True) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The 2x3 map turning an ``(h, w)`` photo counter-clockwise by ``degrees`` about its centre,
    and the ``(h, w)`` of the turned canvas: large enough to hold the whole photo with ``expand``,
    else the photo's own size."""
    h, w = size
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    if not expand:
        return m, (h, w)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(round(h * s + w * c)), int(round(h * c + w * s))
    m[:, 2] += ((nw - w) / 2.0, (nh - h) / 2.0)
    return m, (nh, nw)


def turn_photo(image: np.ndarray, degrees: float, expand: bool = True,
               interpolation: str = "linear", border: str = "constant",
               value: float = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``image`` (a photo or a label map) turned counter-clockwise by ``degrees`` (``turn_matrix``),
    and the 2x3 map from its pixels to the turned copy's."""
    m, (h, w) = turn_matrix(image.shape[:2], degrees, expand)
    out = cv2.warpAffine(image, m, (w, h), flags=_INTERP[interpolation],
                         borderMode=_BORDERS[border], borderValue=(value,) * 3)
    return out, m
