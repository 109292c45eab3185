"""Binary and category-aware edge labels computed from a label map (docs/data.md).

Rule: a pixel is an edge pixel if one of its 4 neighbours (up, down, left, right) carries a
different label, where neither of the two pixels is the ignore value. Both sides of a boundary are
marked, so a width-1 edge is a 2-pixel band. ``width > 1`` dilates that band by ``width - 1``
pixels with a square (3x3-based, Chebyshev) kernel, i.e. a square structuring element of side
``2 * (width - 1) + 1``. Pixels whose label is the ignore value always carry the ignore value in
both edge maps, so the edge losses skip exactly the pixels the parsing loss skips.

The release ships no category edges; computing both maps from the augmented label crop keeps them
aligned with the crop by construction.
"""
import numpy as np
import cv2

__all__ = ["binary_edges", "category_edges"]


def binary_edges(label: np.ndarray, width: int = 1, ignore_index: int = 255) -> np.ndarray:
    """Binary edge map of an (H, W) label map.

    Returns:
        uint8 (H, W): 1 on edge pixels, 0 elsewhere, ``ignore_index`` where ``label`` is
        ``ignore_index``.
    """
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    if width < 1:
        raise ValueError(f"edge width must be >= 1, got {width}")
    valid = label != ignore_index
    edge = np.zeros(label.shape, dtype=bool)
    # horizontal neighbours: pair (y, x) with (y, x + 1)
    d = (label[:, 1:] != label[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    # vertical neighbours: pair (y, x) with (y + 1, x)
    d = (label[1:, :] != label[:-1, :]) & valid[1:, :] & valid[:-1, :]
    edge[1:, :] |= d
    edge[:-1, :] |= d
    out = edge.view(np.uint8)
    if width > 1:
        k = 2 * (width - 1) + 1
        out = cv2.dilate(out, np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT,
                         borderValue=0)
    else:
        out = out.copy()
    out[~valid] = ignore_index
    return out


def category_edges(label: np.ndarray, binary: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Category-aware edge map: the pixel's class id on binary-edge pixels, 0 elsewhere.

    Args:
        label: (H, W) label map.
        binary: (H, W) output of :func:`binary_edges` for the same label map.

    Returns:
        (H, W) array of ``label``'s dtype, ``ignore_index`` where ``label`` is ``ignore_index``.
    """
    if binary.shape != label.shape:
        raise ValueError(f"label {label.shape} and binary edge {binary.shape} differ in shape")
    out = np.where(binary == 1, label, np.zeros((), dtype=label.dtype))
    out[label == ignore_index] = ignore_index
    return out
