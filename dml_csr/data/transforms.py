"""Geometry and normalisation of the data pipeline (docs/data.md, docs/evaluation.md).

Every sample is cut out of its image by one affine map: the square source region of side ``scale``
centred on ``center`` (source pixels, x then y) is rotated by ``rotation`` degrees and resized onto
the output crop. Coordinates follow the pixel-centre convention: pixel ``i`` covers ``[i - 0.5,
i + 0.5]``, so the image centre is ``((w - 1) / 2, (h - 1) / 2)`` and it lands on the crop centre
``((W - 1) / 2, (H - 1) / 2)``; the outer edges of the source square land on the outer edges of the
crop. A positive rotation turns the image content counter-clockwise on screen (the sign of
``cv2.getRotationMatrix2D``).

The same matrix, inverted, maps predictions back onto the original image (``warp_back``), which is
what the evaluation protocol and the inference API use.
"""
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

__all__ = ["MEAN", "STD", "crop_params", "get_affine_matrix", "warp_image", "warp_label",
           "warp_back", "normalize_image", "crop_input", "sample_augmentation", "AUGMENT_MODES"]

# ImageNet statistics in RGB order. With channel_order="bgr" they are applied, as in the release,
# to the B, G, R channels in that order (official checkpoints expect exactly this input).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

AUGMENT_MODES = ("none", "paper", "released")
CENTER_MODES = ("exact", "released")

_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}
_CV_MAX_CHANNELS = 512  # cv2 refuses images with more channels; warp_back splits larger stacks


def crop_params(h: int, w: int, center_mode: str = "exact") -> Tuple[np.ndarray, float]:
    """Centre and scale that map the whole ``h`` x ``w`` image onto the square crop.

    Args:
        h, w: image size in pixels.
        center_mode: the crop geometry (``CENTER_MODES``). ``"exact"``: the source square of side
            max(h, w) centred on ((w - 1) / 2, (h - 1) / 2) fills the crop pixel for pixel.
            ``"released"``: the release's geometry, the same float centre but a source span of
            max(h, w) - 1 pixels (its box runs from pixel 0 to pixel w - 1); see
            ``get_affine_matrix`` and ``warp_back`` for the rest of it.

    Returns:
        center: float64 (2,) array (x, y) in source pixels.
        scale: side of the square source region (the shorter image side is padded).
    """
    _check_center_mode(center_mode)
    center = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    side = float(max(h, w))
    return center, side - 1.0 if center_mode == "released" else side


def _check_center_mode(center_mode: str) -> None:
    if center_mode not in CENTER_MODES:
        raise ValueError(f"center_mode must be one of {CENTER_MODES}, got {center_mode!r}")


def get_affine_matrix(center, scale: float, rotation_deg: float, out_size: Tuple[int, int],
                      inverse: bool = False, center_mode: str = "exact") -> np.ndarray:
    """2x3 float64 matrix mapping source pixels to crop pixels (or back with ``inverse=True``).

    ``center_mode="exact"``: the source square of side ``scale`` around ``center`` is fitted onto
    the shorter side of ``out_size`` (h, w), ``center`` landing on the crop's centre pixel
    ((w - 1) / 2, (h - 1) / 2); for the usual square crop it fills the crop exactly.
    ``center_mode="released"``: the release's ``get_affine_transform``: ``scale`` source pixels
    onto the crop's width, ``center`` landing on (w / 2, h / 2).
    """
    _check_center_mode(center_mode)
    out_h, out_w = out_size
    cx, cy = float(center[0]), float(center[1])
    if center_mode == "released":
        f = out_w / float(scale)
        ox, oy = out_w / 2.0, out_h / 2.0
    else:
        f = min(out_h, out_w) / float(scale)
        ox, oy = (out_w - 1) / 2.0, (out_h - 1) / 2.0
    theta = np.deg2rad(rotation_deg)
    a, b = f * np.cos(theta), f * np.sin(theta)
    if not inverse:
        # crop = f * R * (src - center) + crop_centre
        return np.array([[a, b, ox - a * cx - b * cy],
                         [-b, a, oy + b * cx - a * cy]], dtype=np.float64)
    # src = R^T / f * (crop - crop_centre) + center, written out instead of inverting numerically
    ia, ib = np.cos(theta) / f, np.sin(theta) / f
    return np.array([[ia, -ib, cx - ia * ox + ib * oy],
                     [ib, ia, cy - ib * ox - ia * oy]], dtype=np.float64)


def _warp(src: np.ndarray, inverse_matrix: np.ndarray, out_size: Tuple[int, int], interp: int,
          border_value: float) -> np.ndarray:
    # WARP_INVERSE_MAP: hand cv2 the dst -> src matrix we computed in closed form.
    out_h, out_w = out_size
    return cv2.warpAffine(src, inverse_matrix, (out_w, out_h), flags=interp | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def warp_image(image: np.ndarray, center, scale: float, rotation: float,
               out_size: Tuple[int, int], center_mode: str = "exact") -> np.ndarray:
    """Crop an (H, W[, C]) image: bilinear, border 0. Returns (out_h, out_w[, C]), same dtype."""
    inv = get_affine_matrix(center, scale, rotation, out_size, inverse=True, center_mode=center_mode)
    return _warp(image, inv, out_size, cv2.INTER_LINEAR, 0)


def warp_label(label: np.ndarray, center, scale: float, rotation: float,
               out_size: Tuple[int, int], ignore_index: int = 255,
               center_mode: str = "exact") -> np.ndarray:
    """Crop an (H, W) label map: nearest, border ``ignore_index``. Returns (out_h, out_w)."""
    inv = get_affine_matrix(center, scale, rotation, out_size, inverse=True, center_mode=center_mode)
    return _warp(label, inv, out_size, cv2.INTER_NEAREST, ignore_index)


ArrayLike = Union[np.ndarray, torch.Tensor]


def warp_back(array: ArrayLike, center, scale: float, rotation: float, orig_size: Tuple[int, int],
              interpolation: Optional[str] = None, layout: str = "chw",
              center_mode: str = "exact") -> ArrayLike:
    """Map a crop-space array back onto the original image (inverse of the crop), border 0.

    Args:
        array: (H, W) label map, or a (C, H, W) / (H, W, C) logit or probability stack, in crop
            space; numpy or torch (a tensor comes back as a tensor on its device and dtype).
        center, scale, rotation: the crop parameters of the sample.
        orig_size: (h, w) of the original image.
        interpolation: ``"nearest"`` or ``"bilinear"``; default nearest for 2-D arrays (label
            maps, as the evaluation protocol prescribes) and bilinear for 3-D stacks.
        layout: ``"chw"`` or ``"hwc"`` for 3-D arrays.
        center_mode: the crop geometry (``crop_params``). ``"released"`` also truncates the centre
            to integers first, as the release's scorer does (it stores the centres as int32), so
            the map back is half a pixel off the crop on even image sides.

    Returns:
        (h, w), (C, h, w) or (h, w, C) array, matching the input layout.
    """
    if layout not in ("chw", "hwc"):
        raise ValueError(f"layout must be 'chw' or 'hwc', got {layout!r}")
    as_tensor = isinstance(array, torch.Tensor)
    if as_tensor:
        device, dtype = array.device, array.dtype
        x = array.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    else:
        x = np.asarray(array)
    if x.ndim not in (2, 3):
        raise ValueError(f"warp_back expects a 2-D or 3-D array, got shape {x.shape}")
    if interpolation is None:
        interpolation = "nearest" if x.ndim == 2 else "bilinear"
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    chw = x.ndim == 3 and layout == "chw"
    if chw:
        x = x.transpose(1, 2, 0)
    # cv2 has no int64/bool warps: carry integer maps as int32 (ids fit) and restore the dtype
    orig_dtype = x.dtype
    if x.dtype in (np.int64, np.uint32, np.uint64, np.bool_):
        x = x.astype(np.int32)
    elif x.dtype == np.float16:
        x = x.astype(np.float32)
    crop_size = x.shape[:2]
    # the inverse of the crop is the forward matrix, used as cv2's dst -> src map
    if center_mode == "released":
        center = np.trunc(np.asarray(center, dtype=np.float64))
    fwd = get_affine_matrix(center, scale, rotation, crop_size, inverse=False,
                            center_mode=center_mode)
    h, w = int(orig_size[0]), int(orig_size[1])
    interp = _INTERP[interpolation]
    if x.ndim == 3 and x.shape[2] > _CV_MAX_CHANNELS:
        parts = [_warp(np.ascontiguousarray(x[:, :, i:i + _CV_MAX_CHANNELS]), fwd, (h, w), interp, 0)
                 for i in range(0, x.shape[2], _CV_MAX_CHANNELS)]
        out = np.concatenate([p.reshape(h, w, -1) for p in parts], axis=2)
    else:
        out = _warp(np.ascontiguousarray(x), fwd, (h, w), interp, 0)
        if x.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
            out = out[:, :, None]
    if chw:
        out = np.ascontiguousarray(out.transpose(2, 0, 1))
    out = out.astype(orig_dtype, copy=False)
    if as_tensor:
        return torch.from_numpy(out).to(device=device, dtype=dtype)
    return out


def normalize_image(image: np.ndarray, channel_order: str = "bgr",
                    mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 (H, W, 3) BGR image (as OpenCV reads it) -> normalised float32 (3, H, W) tensor.

    ``"bgr"`` keeps the BGR channel order and applies the RGB ImageNet statistics to it channel by
    channel, as the release does; ``"rgb"`` reorders to RGB first (the statistics then match).
    ``mean`` / ``std``: per channel of the output order (default the ImageNet statistics, the one
    copy of them in the package: ``MEAN``, ``STD``).
    """
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    src = (0, 1, 2) if channel_order == "bgr" else (2, 1, 0)
    h, w = image.shape[:2]
    out = np.empty((3, h, w), dtype=np.float32)
    for c in range(3):
        # (x / 255 - mean) / std as one multiply-add per channel
        a = 1.0 / (255.0 * std[c])
        b = -mean[c] / std[c]
        np.multiply(image[:, :, src[c]], np.float32(a), out=out[c], dtype=np.float32)
        out[c] += np.float32(b)
    return torch.from_numpy(out)


def crop_input(image: np.ndarray, center, scale: float, rotation: float,
               crop_size: Tuple[int, int], center_mode: str = "exact", channel_order: str = "bgr",
               mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """The network input of one region: uint8 (H, W, 3) BGR image -> float32 (3, *crop_size)
    tensor, the affine crop (``warp_image``) normalised (``normalize_image``). The data sets'
    crops and the parser's are this one function (``dml_csr/predict.py``)."""
    return normalize_image(warp_image(image, center, scale, rotation, crop_size, center_mode),
                           channel_order, mean, std)


def sample_augmentation(rng: np.random.Generator, mode: str) -> Tuple[float, float]:
    """Draw (scale factor, rotation in degrees) for one training sample.

    ``"paper"``: scale ~ U(0.75, 1.25), rotation ~ U(-30, 30).
    ``"released"``: scale = clip(1 + 0.25 N(0, 1), 0.75, 1.25); with probability 0.6 rotation =
    clip(30 N(0, 1), -60, 60), else 0.
    ``"none"``: (1.0, 0.0), drawing nothing.

    The scale factor multiplies the crop's source side: above 1 zooms out, below 1 zooms in.
    """
    if mode == "none":
        return 1.0, 0.0
    if mode == "paper":
        s = rng.uniform(0.75, 1.25)
        r = rng.uniform(-30.0, 30.0)
        return float(s), float(r)
    if mode == "released":
        s = np.clip(1.0 + 0.25 * rng.standard_normal(), 0.75, 1.25)
        r = np.clip(30.0 * rng.standard_normal(), -60.0, 60.0) if rng.random() < 0.6 else 0.0
        return float(s), float(r)
    raise ValueError(f"augmentation mode must be one of {AUGMENT_MODES}, got {mode!r}")
