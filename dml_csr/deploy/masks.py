"""Editing masks from label maps: chosen classes, grown or shrunk, with a soft edge.

A mask is a uint8 alpha matte (0 = out, 255 = in) on the photo's own pixel grid, made in three
steps (``FaceParsingResult.mask`` picks the label map; docs/inference.md, "Masks"):

1. the classes: the pixels whose label is one of them (:func:`class_ids` turns class names,
   tokens and the description's named groups into ids);
2. ``grow=R``: a dilation by the disk of radius R pixels (the pixels within Euclidean distance R
   of the set), a negative R an erosion by the disk of radius -R (the pixels farther than -R from
   every pixel outside the set; the photo's border is not an edge, as in ``cv2.erode``). Both are
   read off an exact Euclidean distance transform, so any radius costs the same;
3. ``feather=F``: the grown 0 / 255 mask blurred by a Gaussian of standard deviation F / 5 cut at
   F / 2 pixels from its centre (a (2 ceil(F/2) + 1)-pixel square kernel, normalised): a soft edge
   about F pixels wide, half-way (128) on a straight edge, reaching 0 and 255 within F / 2 pixels
   of it in x and y (F / sqrt(2) along a diagonal); farther pixels keep 0 or 255. The kernel sums
   to 1, so the mask's area (the sum of alpha / 255) stays that of the hard set, thin parts (a
   strand of hair narrower than F) included: they get fainter, not wider in area. A distance ramp
   (alpha from the signed distance to the edge) was measured and not taken: it keeps the 128 line
   on the edge but adds area around anything narrower than F (+45 % for F = 16 on the quick
   start's hair; benchmarks/bench_masks.py, docs/inference.md "Masks").

Soft masks (``soft=True``) start from the summed probability of the classes instead of a hard set;
``grow`` is then a grey dilation (erosion) by the same disk and ``feather`` the same blur.
"""
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = ["MaskClassError", "class_ids", "grow_mask", "feather_mask", "grow_soft", "hard_mask",
           "disk", "check_amounts"]

Classes = Union[str, int, Iterable[Union[str, int]]]


class MaskClassError(ValueError):
    """A class name that the labels do not define; the message lists the valid ones."""


def class_ids(classes: Classes, named: Dict[str, Tuple[int, ...]],
              num_classes: int) -> Tuple[int, ...]:
    """The class ids ``classes`` selects: a comma-separated string or a list of class names,
    tokens, group names (``named``: ``Schema.named_sets``; exact, else ignoring case and ``_`` /
    space) or ids. MaskClassError listing the valid names for an unknown one or an empty list."""
    items = classes.split(",") if isinstance(classes, str) else \
        [classes] if isinstance(classes, (int, np.integer)) else list(classes)
    loose = {}
    for name in named:
        loose.setdefault(_loose(name), name)
    ids = set()
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < num_classes:
                raise MaskClassError(f"class id {int(item)} is not one of 0..{num_classes - 1}")
            ids.add(int(item))
            continue
        word = str(item).strip()
        if not word:
            continue
        key = word if word in named else loose.get(_loose(word))
        if key is None:
            raise MaskClassError(f"unknown class {word!r}: the classes are "
                                 f"{', '.join(named)}")
        ids.update(named[key])
    if not ids:
        raise MaskClassError(f"no class given for the mask: choose from {', '.join(named)}")
    return tuple(sorted(ids))


def _loose(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def disk(radius: float) -> np.ndarray:
    """uint8 structuring element: the pixel offsets (dx, dy) with dx^2 + dy^2 <= radius^2."""
    r = int(np.floor(abs(radius)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def _distance(inside: np.ndarray) -> np.ndarray:
    """float32: each pixel of ``inside`` (bool) -> Euclidean distance to the nearest pixel that is
    not; 0 elsewhere; a large value when every pixel is inside."""
    return cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def grow_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Bool ``mask`` dilated by the disk of ``radius`` pixels (eroded for a negative one)."""
    mask = np.asarray(mask, bool)
    if radius == 0 or not mask.any():
        return mask.copy()
    if radius > 0:
        return _distance(~mask) <= radius
    return _distance(mask) > -radius


def feather_mask(mask: np.ndarray, width: float) -> np.ndarray:
    """uint8 alpha: ``mask`` (bool, or uint8 alpha) with a soft edge ``width`` pixels wide: the
    cut Gaussian blur of the module docstring; 0 / 255 as it is where ``width`` is 0."""
    mask = np.asarray(mask)
    alpha = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
    if width <= 0:
        return alpha
    half = int(np.ceil(width / 2.0))
    blurred = cv2.GaussianBlur(alpha.astype(np.float32), (2 * half + 1, 2 * half + 1),
                               sigmaX=width / 5.0, sigmaY=width / 5.0,
                               borderType=cv2.BORDER_REFLECT)
    return np.rint(np.clip(blurred, 0.0, 255.0)).astype(np.uint8)


def grow_soft(alpha: np.ndarray, radius: float) -> np.ndarray:
    """Grey dilation (erosion for a negative ``radius``) of ``alpha`` by the disk."""
    if radius == 0:
        return alpha.copy()
    kernel = disk(radius)
    op = cv2.dilate if radius > 0 else cv2.erode
    return op(alpha, kernel, borderType=cv2.BORDER_REPLICATE)


def hard_mask(labels: np.ndarray, ids: Sequence[int], grow: float = 0,
              feather: float = 0) -> np.ndarray:
    """uint8 alpha of the pixels of ``labels`` in ``ids``, grown and feathered (module
    docstring)."""
    lut = np.zeros(256, bool)
    lut[list(ids)] = True
    return feather_mask(grow_mask(lut[labels], grow), feather)


def check_amounts(grow: float, feather: float, size: Optional[Tuple[int, int]] = None) -> None:
    """ValueError naming a grow or feather that is not a finite number, a negative feather, or,
    with the photo's ``size`` (h, w), a grow or feather of more pixels than its longer side (they
    would select all or nothing, and a soft mask's grey dilation costs R^2 per pixel)."""
    for name, value in (("grow", grow), ("feather", feather)):
        if not np.isfinite(float(value)):
            raise ValueError(f"mask {name} must be a finite number of pixels, got {value!r}")
        if size is not None and abs(value) > max(size):
            raise ValueError(f"mask {name} {value:g} px is more than the photo's longer side "
                             f"({max(size)} px)")
    if feather < 0:
        raise ValueError(f"mask feather must be 0 or more pixels, got {feather:g}")
