"""Procedural synthetic faces: the project's embedded data set for the quick start and the tests.

None of the real benchmarks (Helen, LaPa, CelebAMask-HQ) can be downloaded on the project's
machines, so the quick start and every test run on faces drawn here instead. Each sample is a
cartoon-like portrait drawn with OpenCV polygons: a face ellipse, hair (several styles, painted
behind the head and over the forehead), brows, eyes with iris and pupil, a nose drawn in skin
colour, lips, a sometimes open mouth, ears, neck, clothes and optional accessories (hat, glasses,
earrings, necklace), over a cluttered background, with random pose, scale, colours, lighting,
blur, noise and JPEG compression. The label map is painted in occlusion order, so the image and
its labels agree pixel for pixel.

Two label orders (from :mod:`dml_csr.data.schemas`):

- ``classes=11``, schema ``synthetic``: the Helen/LaPa order. Ears, neck, clothes and accessories
  are still drawn in the image but are labelled background (glasses leave the label of what is
  behind them), as the real 11-class sets do for neck and clothes.
- ``classes=19``, schema ``synthetic19``: the CelebAMask-HQ order with every class labelled.

"Left" is the viewer's side (smaller x in an upright face), matching the schemas' flip pairs.

Everything is deterministic: sample ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, split_code, i])``, so it does not depend on how many samples the
other splits hold, and the same arguments give byte-identical label PNGs.
"""
import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .schemas import Schema, get_schema

__all__ = ["make_synthetic", "draw_face", "corrupt_label", "is_synthetic_root", "NOISE_KINDS",
           "SPLITS", "INFO_NAME", "DEFAULT_COUNTS", "DEFAULT_SIZE"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_COUNTS = {"train": 240, "valid": 40, "test": 40}
DEFAULT_SIZE = 128
INFO_NAME = "synthetic_info.json"
NOISE_KINDS = ("swap_left_right", "swap_lips", "erode", "dilate", "shift")

_GENERATOR = "dml_csr.data.synthetic"
_FORMAT_VERSION = 1
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
_NOISE_STREAM = 3  # seed stream of the label corruption, apart from the image streams
_NAME_RE = re.compile(r"^(train|valid|test)_\d{5,}\.(jpg|png)$")
_SUBDIRS = ("images", "labels", "labels_clean")

# Parts are painted in the CelebAMask-HQ id space (the richer one) and mapped to the 11-class
# order at the end. Ids come from the schema, never from a copy of it.
_TOKENS19 = get_schema("synthetic19").tokens
_ID = {t: i for i, t in enumerate(_TOKENS19)}
SKIN, NOSE, GLASSES = _ID["skin"], _ID["nose"], _ID["eye_g"]
L_EYE, R_EYE, L_BROW, R_BROW = _ID["l_eye"], _ID["r_eye"], _ID["l_brow"], _ID["r_brow"]
L_EAR, R_EAR, MOUTH, U_LIP, L_LIP = _ID["l_ear"], _ID["r_ear"], _ID["mouth"], _ID["u_lip"], _ID["l_lip"]
HAIR, HAT, EARRING, NECKLACE, NECK, CLOTH = (_ID["hair"], _ID["hat"], _ID["ear_r"], _ID["neck_l"],
                                             _ID["neck"], _ID["cloth"])
# CelebAMask-HQ token -> Helen/LaPa token; parts not listed become background.
_TO_11 = {"skin": "face", "nose": "nose", "l_eye": "le", "r_eye": "re", "l_brow": "lb",
          "r_brow": "rb", "mouth": "imouth", "u_lip": "ulip", "l_lip": "llip", "hair": "hair"}
# Class pairs an annotator confuses (upper/lower lip), in either order's tokens.
_LIP_PAIRS = (("ulip", "llip"), ("u_lip", "l_lip"))


def _schema_for(classes: int) -> Schema:
    if classes not in (11, 19):
        raise ValueError(f"classes must be 11 or 19, got {classes}")
    return get_schema("synthetic" if classes == 11 else "synthetic19")


def _lut_to(schema: Schema) -> np.ndarray:
    """Map from the internal (CelebAMask-HQ) ids to the ids of ``schema``."""
    if schema.tokens == _TOKENS19:
        return np.arange(len(_TOKENS19), dtype=np.uint8)
    index = {t: i for i, t in enumerate(schema.tokens)}
    lut = np.zeros(len(_TOKENS19), np.uint8)
    for t19, t11 in _TO_11.items():
        lut[_ID[t19]] = index[t11]
    return lut


# ------------------------------------------------------------------------------------------------
# Geometry: parts are described in a canonical face frame (origin at the face centre, y down, the
# face ellipse has half-height 1) and mapped to pixels by a pose.


class _Pose:
    """Canonical face frame -> pixels: in-plane rotation, scale, translation and a small yaw.

    Yaw moves the frontal features (eyes, brows, nose, mouth) across the face as if they lay on a
    vertical cylinder of the face's half-width: the side turned away is foreshortened, and points
    with depth (the nose tip) move further. The face outline and hair are not yawed.
    """

    def __init__(self, center: Tuple[float, float], scale: float, angle_deg: float, yaw: float,
                 half_width: float):
        t = np.deg2rad(angle_deg)
        self.rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        self.center = np.asarray(center, np.float64)
        self.scale = scale
        self.yaw = yaw
        self.half_width = half_width

    def outline(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.rot.T * self.scale + self.center

    def feature(self, pts: np.ndarray, depth: Union[float, np.ndarray] = 0.0) -> np.ndarray:
        x, y = pts[:, 0], pts[:, 1]
        w = self.half_width * np.sqrt(np.clip(1.0 - y * y, 0.25, 1.0))
        ang = np.arcsin(np.clip(x / w, -0.95, 0.95)) + self.yaw
        x = w * np.sin(np.clip(ang, -1.45, 1.45)) + depth * np.sin(self.yaw)
        return self.outline(np.stack([x, y], 1))


def _ellipse(cx: float, cy: float, ax: float, ay: float, t0: float = 0.0,
             t1: float = 2 * np.pi, n: int = 40, power: float = 2.0) -> np.ndarray:
    """Points of a (super)ellipse arc; ``power`` > 2 squares the shape off (rectangular lenses)."""
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * np.pi - 1e-9)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / power
    return np.stack([cx + ax * np.sign(c) * np.abs(c) ** e, cy + ay * np.sign(s) * np.abs(s) ** e], 1)


def _fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4 below)


def _fill(canvas: np.ndarray, pts: np.ndarray, value) -> None:
    cv2.fillPoly(canvas, [_fixed(pts)], value, lineType=cv2.LINE_8, shift=4)


def _stroke(canvas: np.ndarray, pts: np.ndarray, value, thickness: int, closed: bool = False) -> None:
    cv2.polylines(canvas, [_fixed(pts)], closed, value, int(max(1, thickness)), cv2.LINE_8, shift=4)


def _mask(size: int, *polys: np.ndarray) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    for p in polys:
        _fill(m, p, 1)
    return m.astype(bool)


# ------------------------------------------------------------------------------------------------
# Part shapes in the canonical frame.


def _eye(cx: float, cy: float, ew: float, up: float, low: float, tilt: float, side: int) -> np.ndarray:
    u = np.linspace(-1.0, 1.0, 11)
    upper = np.stack([cx + u * ew, cy - up * (1 - u ** 2) ** 0.8], 1)
    lower = np.stack([cx + u * ew, cy + low * (1 - u ** 2) ** 0.9], 1)[::-1][1:-1]
    pts = np.concatenate([upper, lower])
    pts[:, 1] -= tilt * (pts[:, 0] - cx) * side  # outer corner raised (side * x > 0 is outward)
    return pts


def _brow(side: int, x_in: float, x_out: float, y0: float, arch: float, thick: float,
          tail: float) -> np.ndarray:
    u = np.linspace(0.0, 1.0, 10)
    x = side * (x_in + u * (x_out - x_in))
    yc = y0 - arch * np.sin(np.pi * u ** 0.8) + tail * u ** 2
    half = 0.5 * thick * (1.0 - 0.55 * u)
    return np.concatenate([np.stack([x, yc - half], 1), np.stack([x, yc + half], 1)[::-1]])


def _nose(y_top: float, y_bot: float, wb: float, wn: float) -> Tuple[np.ndarray, np.ndarray]:
    """Nose outline (bridge to nostril wings) and the depth of each point."""
    h = y_bot - y_top
    right = np.array([[wb, y_top], [wb * 1.05, y_top + 0.45 * h], [wn * 0.55, y_bot - 0.1],
                      [wn * 0.95, y_bot - 0.05], [wn, y_bot - 0.01], [wn * 0.7, y_bot + 0.02],
                      [wn * 0.3, y_bot + 0.015], [0.0, y_bot + 0.025]])
    depth_r = np.array([0.05, 0.1, 0.16, 0.13, 0.12, 0.17, 0.21, 0.23])
    left = right[::-1][1:] * [-1.0, 1.0]
    return np.concatenate([right, left]), np.concatenate([depth_r, depth_r[::-1][1:]])


def _mouth(my: float, mw: float, hu: float, hl: float, smile: float, bow: float,
           gap: float) -> Dict[str, np.ndarray]:
    u = np.linspace(-1.0, 1.0, 15)
    x = u * mw
    line = my - smile * u ** 2  # lip parting line, corners up when smiling
    g = gap * (1 - u ** 2) ** 0.8
    top = line - g / 2 - hu * (1 - u ** 2) ** 0.6 + bow * np.exp(-(u / 0.18) ** 2)  # cupid's bow
    bot = line + g / 2 + hl * (1 - u ** 2) ** 0.6
    upper_inner = np.stack([x, line - g / 2], 1)
    lower_inner = np.stack([x, line + g / 2], 1)
    parts = {
        "upper": np.concatenate([np.stack([x, top], 1), upper_inner[::-1][1:-1]]),
        "lower": np.concatenate([lower_inner, np.stack([x, bot], 1)[::-1][1:-1]]),
        "line": np.stack([x, line], 1),
    }
    if gap > 0:
        parts["inner"] = np.concatenate([upper_inner, lower_inner[::-1][1:-1]])
    return parts


# ------------------------------------------------------------------------------------------------
# Colours (RGB, float 0..255).

_SKIN_TONES = np.array([[245, 215, 190], [225, 180, 150], [195, 145, 110], [150, 100, 70],
                        [100, 65, 45]], np.float64)
_HAIR_TONES = np.array([[20, 18, 18], [55, 38, 28], [105, 70, 42], [200, 165, 110],
                        [150, 68, 35], [165, 165, 165], [235, 225, 200]], np.float64)
_HAIR_P = np.array([0.25, 0.25, 0.18, 0.13, 0.08, 0.07, 0.04])


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    c = _SKIN_TONES[i] + (t - i) * (_SKIN_TONES[i + 1] - _SKIN_TONES[i])
    return c + rng.normal(0, 7, 3)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.08:  # dyed
        return rng.uniform(20, 235, 3)
    return _HAIR_TONES[rng.choice(len(_HAIR_TONES), p=_HAIR_P)] * rng.uniform(0.85, 1.15) + rng.normal(0, 6, 3)


def _lip_colour(rng: np.random.Generator, skin: np.ndarray) -> np.ndarray:
    if rng.random() < 0.3:  # lipstick
        return np.array([rng.uniform(120, 230), rng.uniform(10, 80), rng.uniform(30, 130)])
    return skin * np.array([0.85, 0.62, 0.66]) * rng.uniform(0.8, 1.05) + rng.normal(0, 6, 3)


def _any_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """Background colours, often taken from the face palettes so colour alone cannot segment."""
    r = rng.random()
    if r < 0.25:
        return _skin_colour(rng)
    if r < 0.4:
        return _hair_colour(rng)
    if r < 0.5:
        return _lip_colour(rng, _skin_colour(rng))
    return _any_colour(rng)


@lru_cache(maxsize=8)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) divided by ``size``, float32 (size, size); shared, read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _low_freq(rng: np.random.Generator, size: int, cells: int = 6) -> np.ndarray:
    noise = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c1, c2 = _distractor_colour(rng), _distractor_colour(rng)
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = _grid(size)
    ramp = np.clip(0.5 + (xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi), 0, 1)
    img = c1.astype(np.float32) + (c2 - c1).astype(np.float32) * ramp[..., None]
    for _ in range(int(rng.integers(0, 8))):
        colour = tuple(float(v) for v in _distractor_colour(rng))
        kind = rng.integers(0, 4)
        c = rng.uniform(-0.1, 1.1, 2) * size
        r = rng.uniform(0.04, 0.3, 2) * size
        if kind == 0:
            _fill(img, _ellipse(c[0], c[1], r[0], r[1], n=24), colour)
        elif kind == 1:
            _fill(img, np.array([c - r, [c[0] + r[0], c[1] - r[1]], c + r, [c[0] - r[0], c[1] + r[1]]]), colour)
        elif kind == 2:
            _fill(img, c + rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2)) * r, colour)
        else:
            _stroke(img, c + rng.uniform(-1, 1, (int(rng.integers(2, 5)), 2)) * r, colour,
                    int(rng.integers(1, max(2, size // 24))))
    img *= 1 + rng.uniform(0.0, 0.12) * _low_freq(rng, size, 8)[..., None]
    return img


def _paint_inside(img: np.ndarray, mask: np.ndarray, draw) -> None:
    """Apply ``draw(layer)`` to a copy of ``img`` and keep the result only inside ``mask``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    layer = img.copy()  # drawing is clipped by the image border, so draw on a full-size copy
    draw(layer)
    np.copyto(img[box], layer[box], where=mask[box][..., None])


# ------------------------------------------------------------------------------------------------
# One face.


def draw_face(rng: Union[int, Sequence[int], np.random.Generator], size: int = DEFAULT_SIZE,
              classes: int = 11) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic face.

    Args:
        rng: a numpy Generator or a seed for one.
        size: side of the square image in pixels (>= 32).
        classes: 11 (schema ``synthetic``, Helen/LaPa order) or 19 (``synthetic19``,
            CelebAMask-HQ order).

    Returns:
        ``(image, label)``: image uint8 (size, size, 3) in BGR order (for ``cv2.imwrite``);
        label uint8 (size, size) with ids of the schema.
    """
    schema = _schema_for(classes)
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    full = classes == 19
    S = size

    # --- pose and face shape
    a = rng.uniform(0.66, 0.8)  # face half-width (half-height is 1)
    jaw = rng.uniform(0.0, 0.2)
    pose = _Pose(center=(S * (0.5 + rng.uniform(-0.1, 0.1)), S * (0.5 + rng.uniform(-0.06, 0.1))),
                 scale=S * rng.uniform(0.28, 0.42), angle_deg=float(np.clip(rng.normal(0, 10), -30, 30)),
                 yaw=rng.uniform(-0.3, 0.3), half_width=a)
    px = pose.scale  # pixels per canonical unit

    face_c = _ellipse(0, 0, a, 1.0, n=64)
    face_c[:, 0] *= 1 - jaw * np.clip(face_c[:, 1], 0, 1) ** 2

    # --- colours
    skin = _skin_colour(rng)
    hair_col = _hair_colour(rng)
    lip = _lip_colour(rng, skin)
    col = np.zeros((len(_TOKENS19), 3))
    col[SKIN] = skin
    col[NOSE] = skin * rng.uniform(0.96, 1.05)
    col[L_EAR] = col[R_EAR] = skin * rng.uniform(0.88, 1.0)
    col[NECK] = skin * rng.uniform(0.8, 0.93)
    col[HAIR] = hair_col
    brow = hair_col * rng.uniform(0.55, 1.0)
    alpha = rng.uniform(0.55, 0.95)
    col[L_BROW] = col[R_BROW] = alpha * brow + (1 - alpha) * skin
    col[L_EYE] = col[R_EYE] = np.array([228, 222, 215]) * rng.uniform(0.8, 1.0)
    col[U_LIP] = lip * rng.uniform(0.85, 0.97)
    col[L_LIP] = lip
    col[MOUTH] = np.array([95, 30, 40]) * rng.uniform(0.5, 1.2)
    col[CLOTH] = _any_colour(rng)
    col[HAT] = _any_colour(rng)
    col[NECKLACE] = [(212, 175, 55), (192, 192, 200), tuple(_any_colour(rng))][rng.integers(0, 3)]
    col[EARRING] = [(212, 175, 55), (192, 192, 200), tuple(_any_colour(rng))][rng.integers(0, 3)]

    # --- feature geometry (canonical)
    ey = rng.uniform(-0.14, 0.0)
    ex = rng.uniform(0.29, 0.37)
    ew = rng.uniform(0.11, 0.16)
    up = ew * (rng.uniform(0.3, 0.55) if rng.random() > 0.1 else rng.uniform(0.12, 0.2))
    low = up * rng.uniform(0.5, 0.8)
    tilt = rng.uniform(-0.08, 0.15)
    gaze = rng.uniform(-0.35, 0.35, 2) * [ew, up]
    by = ey - rng.uniform(0.17, 0.25)
    brow_geo = (rng.uniform(0.08, 0.15), rng.uniform(0.43, 0.55), rng.uniform(0.02, 0.08),
                rng.uniform(0.045, 0.085), rng.uniform(-0.01, 0.05))
    nose_pts, nose_depth = _nose(ey + rng.uniform(-0.02, 0.08), rng.uniform(0.3, 0.42),
                                 rng.uniform(0.045, 0.07), rng.uniform(0.12, 0.18))
    hu = rng.uniform(0.035, 0.065)
    mouth = _mouth(my=rng.uniform(0.56, 0.66), mw=rng.uniform(0.19, 0.28), hu=hu,
                   hl=hu * rng.uniform(1.1, 1.6), smile=rng.uniform(-0.02, 0.06),
                   bow=hu * rng.uniform(0.0, 0.4),
                   gap=rng.uniform(0.03, 0.13) if rng.random() < 0.45 else 0.0)

    # --- hair, accessories: what is there
    style = rng.choice(["short", "long", "bob", "bun", "none"], p=[0.35, 0.28, 0.17, 0.1, 0.1])
    hair_ax = a * (rng.uniform(1.04, 1.15) if style in ("short", "bun") else rng.uniform(1.12, 1.35))
    hair_c = (rng.uniform(-0.05, 0.05), rng.uniform(-0.18, -0.08))
    hair_ay = rng.uniform(0.98, 1.12)
    if rng.random() < 0.3:  # bangs, may cover the brows
        hairline = rng.uniform(-0.45, -0.22)
    else:
        hairline = rng.uniform(-0.75, -0.45)
    curve, lean = rng.uniform(0.0, 0.35), rng.uniform(-0.25, 0.25)
    wave_a, wave_f, wave_p = rng.uniform(0.0, 0.04), rng.uniform(8, 20), rng.uniform(0, 2 * np.pi)
    side_cut = rng.uniform(-0.3, 0.15) if style in ("short", "bun") else rng.uniform(0.15, 0.5)
    p_acc = 0.35 if full else 0.12
    has_hat = rng.random() < p_acc
    has_glasses = rng.random() < (0.3 if full else 0.15)
    sunglasses = full and has_glasses and rng.random() < 0.35
    has_earrings = rng.random() < p_acc
    has_necklace = rng.random() < p_acc
    has_occluder = rng.random() < 0.06

    parts = np.zeros((S, S), np.uint8)

    # 1. long hair falls behind the neck and the head
    if style in ("long", "bob"):
        y_len = rng.uniform(1.2, 2.4) if style == "long" else rng.uniform(0.6, 0.95)
        arc = _ellipse(hair_c[0], hair_c[1], hair_ax, hair_ay, np.pi, 2 * np.pi, 24)
        w_b = hair_ax * rng.uniform(0.95, 1.3)
        back = np.concatenate([[[-w_b, y_len]], arc, [[w_b, y_len]]])
        _fill(parts, pose.outline(back), HAIR)

    # 2. neck, clothes, necklace
    nw = a * rng.uniform(0.42, 0.58)
    neck_shift = 0.3 * a * np.sin(pose.yaw)
    _fill(parts, pose.outline(np.array([[-nw + neck_shift, 0.4], [nw + neck_shift, 0.4],
                                        [nw * 1.15 + neck_shift, 2.6], [-nw * 1.15 + neck_shift, 2.6]])),
          NECK)
    y_sh = rng.uniform(1.3, 1.8)
    depth = rng.uniform(0.05, 0.5)
    t = np.linspace(-1, 1, 9)
    neckline = np.stack([t * nw * 1.25, y_sh - 0.05 + depth * (1 - np.abs(t) ** rng.uniform(1, 2.5))], 1)
    cloth = np.concatenate([[[-3.5, 4.5], [-3.5, y_sh + 0.5], [-1.4, y_sh + 0.05]], neckline,
                            [[1.4, y_sh + 0.05], [3.5, y_sh + 0.5], [3.5, 4.5]]])
    _fill(parts, pose.outline(cloth), CLOTH)
    if has_necklace:
        y_n0 = rng.uniform(0.95, 1.2)
        chain = np.stack([t * nw * 1.05, y_n0 + rng.uniform(0.2, 0.5) * (1 - t ** 2)], 1)
        _stroke(parts, pose.outline(chain), NECKLACE, round(px * rng.uniform(0.025, 0.05)))
        if rng.random() < 0.5:
            _fill(parts, pose.outline(_ellipse(chain[4, 0], chain[4, 1] + 0.05, 0.05, 0.07, n=12)),
                  NECKLACE)

    # 3. ears (the face covers their inner half), earrings at the lobes
    ear_y = ey + rng.uniform(0.08, 0.16)
    ear_w, ear_h = rng.uniform(0.09, 0.13), rng.uniform(0.17, 0.23)
    for side, ear_id in ((-1, L_EAR), (1, R_EAR)):
        vis = float(np.clip(1.0 - 1.6 * side * pose.yaw, 0.2, 1.6))  # turned-away ear hides
        ecx = side * (a * 0.97 - 0.2 * ear_w + 0.55 * ear_w * vis)
        ear = _ellipse(ecx, ear_y, ear_w * (0.6 + 0.4 * vis), ear_h, n=20)
        _fill(parts, pose.outline(ear), ear_id)
        if has_earrings:
            lobe = pose.outline(np.array([[ecx, ear_y + ear_h * 0.95]]))[0]
            r = max(1.2, px * rng.uniform(0.03, 0.06))
            _fill(parts, _ellipse(lobe[0], lobe[1] + r, r, r * rng.uniform(1.0, 1.8), n=12), EARRING)

    # 4. face, nose, brows, eyes, lips, inner mouth
    face_px = pose.outline(face_c)
    _fill(parts, face_px, SKIN)
    nose_px = pose.feature(nose_pts, nose_depth)
    _fill(parts, nose_px, NOSE)
    for side, brow_id in ((-1, L_BROW), (1, R_BROW)):
        _fill(parts, pose.feature(_brow(side, *brow_geo[:2], by, *brow_geo[2:])), brow_id)
    eyes_px = {}
    for side, eye_id in ((-1, L_EYE), (1, R_EYE)):
        eyes_px[eye_id] = pose.feature(_eye(side * ex, ey, ew, up, low, tilt, side))
        _fill(parts, eyes_px[eye_id], eye_id)
    mouth_px = {k: pose.feature(v) for k, v in mouth.items()}
    _fill(parts, mouth_px["upper"], U_LIP)
    _fill(parts, mouth_px["lower"], L_LIP)
    if "inner" in mouth_px:
        _fill(parts, mouth_px["inner"], MOUTH)

    # 5. front hair: the hair ellipse above the side cut, minus the skin below the hairline
    if style != "none":
        top = face_c.copy()
        xs = top[:, 0] / a
        line = hairline + curve * xs ** 2 + lean * xs + wave_a * np.sin(wave_f * top[:, 0] + wave_p)
        top[:, 1] = np.maximum(top[:, 1], line)
        outer = pose.outline(_ellipse(hair_c[0], hair_c[1], hair_ax, hair_ay, n=48))
        above_cut = pose.outline(np.array([[-3, -3], [3, -3], [3, side_cut], [-3, side_cut]]))
        front = _mask(S, outer) & _mask(S, above_cut) & ~_mask(S, pose.outline(top))
        if style == "bun":
            front |= _mask(S, pose.outline(_ellipse(hair_c[0], hair_c[1] - hair_ay, 0.35, 0.3, n=24)))
        parts[front] = HAIR

    # 6. hat over the hair
    if has_hat:
        y_b = rng.uniform(-0.8, -0.5)
        dome_ax = a * rng.uniform(1.15, 1.4)
        dome = _ellipse(0, y_b, dome_ax, rng.uniform(0.55, 0.85), np.pi, 2 * np.pi, 24)
        _fill(parts, pose.outline(dome), HAT)
        _fill(parts, pose.outline(_ellipse(rng.uniform(-0.1, 0.1), y_b, dome_ax * rng.uniform(1.0, 1.5),
                                           rng.uniform(0.04, 0.1), n=32)), HAT)

    # 7. glasses: a separate mask, eyes stay visible through clear lenses
    glasses = np.zeros((S, S), bool)
    lenses = np.zeros((S, S), bool)
    frame_pts = []
    if has_glasses:
        rx = ew * rng.uniform(1.25, 1.6)
        ry = rx * rng.uniform(0.65, 0.95)
        power = rng.choice([2.0, 3.0, 5.0])
        gy = ey + rng.uniform(-0.01, 0.03)
        for side in (-1, 1):
            lens = pose.feature(_ellipse(side * ex, gy, rx, ry, n=28, power=power))
            lenses |= _mask(S, lens)
            frame_pts.append((lens, True))
        frame_pts.append((pose.feature(np.array([[-ex + rx * 0.95, gy - ry * 0.3], [0, gy - ry * 0.45],
                                                 [ex - rx * 0.95, gy - ry * 0.3]])), False))
        for side in (-1, 1):
            frame_pts.append((pose.feature(np.array([[side * (ex + rx * 0.98), gy - ry * 0.2],
                                                     [side * a * 0.93, gy - ry * 0.25]])), False))
        thick = round(px * rng.uniform(0.025, 0.045))
        frame = np.zeros((S, S), np.uint8)
        for pts, closed in frame_pts:
            _stroke(frame, pts, 1, thick, closed)
        glasses = lenses | frame.astype(bool)

    # 8. an occluder (hand, microphone, ...) in front of everything, labelled background
    occluder = np.zeros((S, S), bool)
    if has_occluder:
        oc = pose.outline(np.array([[rng.uniform(-0.8, 0.8), rng.uniform(0.0, 1.2)]]))[0]
        occ = _ellipse(oc[0], oc[1], px * rng.uniform(0.2, 0.45), px * rng.uniform(0.2, 0.6), n=24,
                       power=rng.choice([2.0, 4.0]))
        occluder = _mask(S, occ)

    # --- image
    img = _background(rng, S)
    fg = parts > 0
    img[fg] = col[parts[fg]]
    texture = np.full(len(_TOKENS19), 0.04, np.float32)  # relative strength of the mottling
    texture[0] = 0.0  # the background has its own
    texture[[HAIR, HAT, CLOTH]] = (0.12, 0.1, 0.1)
    img *= 1 + (texture[parts] * _low_freq(rng, S))[..., None] * rng.uniform(0.5, 1.5)

    # shading: the face darkens towards its outline; the neck is darker under the chin
    face_mask = _mask(S, face_px).astype(np.float32)
    blur = max(1.0, 0.25 * px)
    shade = 0.78 + 0.22 * cv2.GaussianBlur(face_mask, (0, 0), blur)
    on_face = np.isin(parts, (SKIN, NOSE, U_LIP, L_LIP, L_BROW, R_BROW))
    img[on_face] *= shade[on_face, None]
    chin_shadow = cv2.GaussianBlur(face_mask, (0, 0), blur)
    neck = parts == NECK
    img[neck] *= 1.0 - 0.35 * chin_shadow[neck, None]

    # nose: shadowed sides, nostrils, highlight on the tip (all inside the skin-coloured nose)
    dark = tuple(float(v) for v in col[NOSE] * 0.72)
    for sgn in (-1, 1):
        side_line = nose_px[:6] if sgn > 0 else nose_px[::-1][:6]
        _stroke(img, side_line[1:5], dark, 1)
    nostril_r = max(0.8, 0.028 * px)
    for k in (5, -6):
        p = nose_px[k] + 0.3 * (nose_px[7] - nose_px[k])
        _fill(img, _ellipse(p[0], p[1], nostril_r * 1.4, nostril_r, n=10), tuple(float(v) for v in col[NOSE] * 0.45))
    tip = nose_px[7] + 0.35 * (0.5 * (nose_px[0] + nose_px[-1]) - nose_px[7])
    _fill(img, _ellipse(tip[0], tip[1], nostril_r * 1.5, nostril_r * 1.5, n=10),
          tuple(float(v) for v in np.minimum(col[NOSE] * 1.12, 255)))

    # eyes: iris, pupil, catch light inside the eye; lash line along the upper lid
    iris = np.clip(rng.choice([[90, 55, 30], [60, 100, 160], [80, 120, 70], [120, 120, 120],
                               [40, 30, 25]]) * rng.uniform(0.7, 1.2), 0, 255)
    iris_r = max(1.0, px * up * rng.uniform(1.0, 1.3))
    for eye_id, pts in eyes_px.items():
        side = -1 if eye_id == L_EYE else 1
        c = pose.feature(np.array([[side * ex + gaze[0], ey + gaze[1]]]))[0]

        def _iris(layer, c=c):
            _fill(layer, _ellipse(c[0], c[1], iris_r, iris_r, n=20), tuple(float(v) for v in iris))
            _fill(layer, _ellipse(c[0], c[1], iris_r * 0.45, iris_r * 0.45, n=12), (10.0, 10.0, 12.0))
            _fill(layer, _ellipse(c[0] - iris_r * 0.3, c[1] - iris_r * 0.3, iris_r * 0.2, iris_r * 0.2, n=8),
                  (250.0, 250.0, 250.0))
        _paint_inside(img, parts == eye_id, _iris)
        _stroke(img, pts[:11], (25.0, 20.0, 20.0), 1)

    # mouth: teeth in an open mouth, a dark parting line in a closed one
    if "inner" in mouth_px:
        if rng.random() < 0.6:
            # upper half of the opening: between the upper lip's lower edge and the parting line
            band = np.concatenate([mouth_px["upper"][-13:][::-1], mouth_px["line"][1:-1][::-1]])

            def _teeth(layer, band=band):
                _fill(layer, band, (235.0, 232.0, 220.0))
            _paint_inside(img, parts == MOUTH, _teeth)
    else:
        _stroke(img, mouth_px["line"], tuple(float(v) for v in col[U_LIP] * 0.5), 1)

    # hair strands
    hair_yx = np.flatnonzero(parts == HAIR)
    if hair_yx.size:
        starts = rng.choice(hair_yx, size=int(rng.integers(10, 40)))
        p0 = np.stack([starts % S, starts // S], 1).astype(np.float64)
        d = rng.normal(0, px * 0.25, (len(starts), 2))
        strands = np.stack([p0, p0 + d, p0 + d * [1.8, 2.2]], 1)  # (n, 3 points, xy)
        shades = rng.uniform(0.6, 1.4, 2)

        def _strands(layer):
            for half, shade in zip((strands[::2], strands[1::2]), shades):
                cv2.polylines(layer, [_fixed(p) for p in half], False,
                              tuple(float(v) for v in np.clip(col[HAIR] * shade, 0, 255)), 1, cv2.LINE_8, 4)
        _paint_inside(img, parts == HAIR, _strands)

    # glasses: tinted lenses (dark ones hide the eyes) and the frame
    if has_glasses:
        tint = rng.uniform(0, 60, 3) if sunglasses else rng.uniform(150, 255, 3)
        opacity = rng.uniform(0.85, 0.95) if sunglasses else rng.uniform(0.05, 0.2)
        img[lenses] = (1 - opacity) * img[lenses] + opacity * tint.astype(np.float32)
        frame_col = tuple(float(v) for v in rng.choice([[15, 15, 15], [80, 50, 30], [180, 180, 190],
                                                        list(_any_colour(rng))]))
        for pts, closed in frame_pts:
            _stroke(img, pts, frame_col, thick, closed)

    if has_occluder:
        occ_col = _skin_colour(rng) if rng.random() < 0.5 else _any_colour(rng)
        img[occluder] = occ_col * (1 + 0.08 * _low_freq(rng, S)[occluder, None])

    # global lighting, blur, sensor noise
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = _grid(S)
    img *= (1 + rng.uniform(0.0, 0.5) * ((xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi)))[..., None]
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-15, 15)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.0, 6.0)
    image = np.clip(img, 0, 255).astype(np.uint8)[..., ::-1].copy()  # RGB -> BGR

    # --- label in the requested order
    if full:
        label = parts.copy()
        if sunglasses:
            label[glasses] = GLASSES
        else:
            label[glasses & (parts != L_EYE) & (parts != R_EYE)] = GLASSES
    else:
        label = _lut_to(schema)[parts]
    label[occluder] = 0
    return image, label


# ------------------------------------------------------------------------------------------------
# Label noise (training labels only).


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


# ------------------------------------------------------------------------------------------------
# The data set on disk.


def is_synthetic_root(path: Union[str, Path]) -> bool:
    """True if ``path`` holds output of :func:`make_synthetic` (its ``synthetic_info.json``)."""
    info = Path(path) / INFO_NAME
    try:
        return json.loads(info.read_text()).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _imwrite(path: Path, array: np.ndarray, params: Sequence[int] = ()) -> None:
    if not cv2.imwrite(str(path), array, list(params)):
        raise OSError(f"could not write {path}")


def _write_info(root: Path, info: dict) -> None:
    (root / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")


def make_synthetic(out_dir: Union[str, Path], num_train: int = DEFAULT_COUNTS["train"],
                   num_valid: int = DEFAULT_COUNTS["valid"], num_test: int = DEFAULT_COUNTS["test"],
                   size: int = DEFAULT_SIZE, seed: int = 0, classes: int = 11,
                   noise_fraction: float = 0.0, noise_kinds: Sequence[str] = NOISE_KINDS,
                   overwrite: bool = False) -> dict:
    """Write a synthetic face-parsing data set in the project's layout.

    Layout: ``label_names.txt``, ``{train,valid,test}_list.txt`` (lines
    ``images/NAME.jpg labels/NAME.png``), ``<split>/images/NAME.jpg`` (BGR JPEG),
    ``<split>/labels/NAME.png`` (uint8 ids) and ``synthetic_info.json``. With label noise the clean
    training labels of the corrupted images are kept in ``train/labels_clean/NAME.png``.

    Args:
        out_dir: output folder; must be empty, missing, or a previous output of this function,
            unless ``overwrite`` (then same-named files are replaced, other files kept).
        num_train, num_valid, num_test: images per split (names ``<split>_00000`` ...).
        size: image side in pixels.
        seed: base seed; the same arguments give byte-identical label PNGs.
        classes: 11 (Helen/LaPa order) or 19 (CelebAMask-HQ order).
        noise_fraction: fraction of TRAINING images (rounded to a count) whose labels are
            corrupted by :func:`corrupt_label`; validation and test labels are always clean.
        noise_kinds: the corruption kinds to draw from.
        overwrite: allow writing into a non-empty folder that is not a previous output.

    Returns:
        The dictionary written to ``synthetic_info.json``.
    """
    schema = _schema_for(classes)
    counts = {"train": int(num_train), "valid": int(num_valid), "test": int(num_test)}
    if min(counts.values()) < 0:
        raise ValueError(f"image counts must be >= 0, got {counts}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
    noise_kinds = tuple(noise_kinds)
    if not noise_kinds or set(noise_kinds) - set(NOISE_KINDS):
        raise ValueError(f"noise_kinds must be a non-empty subset of {list(NOISE_KINDS)}, got {list(noise_kinds)}")

    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder")
    previous = is_synthetic_root(root)
    if root.exists() and any(root.iterdir()) and not previous and not overwrite:
        raise FileExistsError(
            f"{root} is not empty and is not a previous synthetic data set (no {INFO_NAME}); "
            "choose an empty or new folder, or pass overwrite=True / --overwrite (files of the "
            "same names are replaced, other files are kept)")
    root.mkdir(parents=True, exist_ok=True)

    n_noisy = int(round(noise_fraction * counts["train"]))
    noisy = set(np.random.default_rng([seed, _NOISE_STREAM]).choice(counts["train"], n_noisy, replace=False).tolist())
    info = {"generator": _GENERATOR, "format_version": _FORMAT_VERSION, "complete": False,
            "schema": schema.name, "classes": classes, "size": size, "seed": seed, "counts": counts,
            "noise_fraction": noise_fraction, "noise_kinds": list(noise_kinds),
            "num_corrupted": n_noisy, "clean_labels": "train/labels_clean" if n_noisy else None,
            "corrupted": []}
    _write_info(root, info)  # first, so that an interrupted run is still recognised as ours
    (root / "label_names.txt").write_text("\n".join(schema.tokens) + "\n")

    written = set()
    for split in SPLITS:
        folders = {"images": root / split / "images", "labels": root / split / "labels"}
        if split == "train" and n_noisy:
            folders["labels_clean"] = root / split / "labels_clean"
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(counts[split]):
            name = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
            image, label = draw_face(rng, size, classes)
            quality = int(rng.integers(75, 96))
            if split == "train" and i in noisy:
                _imwrite(folders["labels_clean"] / f"{name}.png", label)
                written.add(folders["labels_clean"] / f"{name}.png")
                label, record = corrupt_label(label, np.random.default_rng([seed, _NOISE_STREAM, i]),
                                              schema, noise_kinds)
                info["corrupted"].append({"name": name, **record})
            _imwrite(folders["images"] / f"{name}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            _imwrite(folders["labels"] / f"{name}.png", label)
            written.update((folders["images"] / f"{name}.jpg", folders["labels"] / f"{name}.png"))
            lines.append(f"images/{name}.jpg labels/{name}.png\n")
        (root / f"{split}_list.txt").write_text("".join(lines))

    if previous:  # drop what an earlier, larger or noisier run left behind; nothing else
        for split in SPLITS:
            for sub in _SUBDIRS:
                folder = root / split / sub
                if not folder.is_dir():
                    continue
                stale = [f for f in folder.iterdir() if _NAME_RE.match(f.name) and f not in written]
                for f in stale:
                    f.unlink()
                if stale:
                    logger.info("removed %d stale generated files from %s", len(stale), folder)
                if sub == "labels_clean" and not any(folder.iterdir()):
                    folder.rmdir()

    info["complete"] = True
    _write_info(root, info)
    return info
