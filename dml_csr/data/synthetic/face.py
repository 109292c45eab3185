"""One synthetic face: :func:`draw_face` and its steps.

The face is decided first, then painted: the head (pose and outline), the colours, the features
(eyes, brows, nose, mouth), the hair style and the accessories are drawn from the generator in
that order; then the part map is painted in occlusion order (back hair, neck and clothes, ears,
face and features, front hair, hat; glasses and an occluder as masks of their own); then the image
is rendered from the part map (flat colours and texture, shading, the details of nose, eyes,
mouth and hair, glasses, occluder, the camera); last the label map is read off the part map.

Parts are painted in the CelebAMask-HQ id space (the richer one) and mapped to the 11-class order
at the end. Ids come from the schema, never from a copy of it. Every step draws from the one
generator in a fixed order, so a seed gives the same face whatever the step boundaries.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np

from ..schemas import Schema, get_schema
from .geometry import (Pose, brow_outline, ellipse, eye_outline, fill, fixed, mouth_outlines,
                       nose_outline, paint_inside, polygon_mask, stroke)
from .palette import any_colour, background, grid, hair_colour, lip_colour, low_freq, skin_colour

__all__ = ["draw_face", "schema_for", "DEFAULT_SIZE"]

DEFAULT_SIZE = 128

_TOKENS19 = get_schema("synthetic19").tokens
_ID = {t: i for i, t in enumerate(_TOKENS19)}
SKIN, NOSE, GLASSES = _ID["skin"], _ID["nose"], _ID["eye_g"]
L_EYE, R_EYE, L_BROW, R_BROW = _ID["l_eye"], _ID["r_eye"], _ID["l_brow"], _ID["r_brow"]
L_EAR, R_EAR, MOUTH, U_LIP, L_LIP = (_ID["l_ear"], _ID["r_ear"], _ID["mouth"], _ID["u_lip"],
                                     _ID["l_lip"])
HAIR, HAT, EARRING, NECKLACE, NECK, CLOTH = (_ID["hair"], _ID["hat"], _ID["ear_r"], _ID["neck_l"],
                                             _ID["neck"], _ID["cloth"])
# CelebAMask-HQ token -> Helen/LaPa token; parts not listed become background.
_TO_11 = {"skin": "face", "nose": "nose", "l_eye": "le", "r_eye": "re", "l_brow": "lb",
          "r_brow": "rb", "mouth": "imouth", "u_lip": "ulip", "l_lip": "llip", "hair": "hair"}


def schema_for(classes: int) -> Schema:
    """The schema of ``classes`` 11 (``synthetic``) or 19 (``synthetic19``)."""
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


def _rgb(colour) -> Tuple[float, ...]:
    return tuple(float(v) for v in colour)


# ------------------------------------------------------------------------------------------------
# What the face is (drawn before anything is painted).


@dataclass(frozen=True)
class _Head:
    """Pose and outline: ``a`` is the face half-width (half-height 1), ``outline`` the canonical
    face outline (the jaw narrowed), ``px`` the pixels per canonical unit."""

    a: float
    pose: Pose
    outline: np.ndarray

    @property
    def px(self) -> float:
        return self.pose.scale


@dataclass(frozen=True)
class _Features:
    """Canonical geometry of eyes (centre ``ex`` off the midline at height ``ey``, half-width
    ``ew``, lid heights ``up``/``low``, ``tilt``, ``gaze``), brows (height ``by``, the remaining
    ``brow_outline`` arguments), nose (outline and depth) and mouth (``mouth_outlines``)."""

    ey: float
    ex: float
    ew: float
    up: float
    low: float
    tilt: float
    gaze: np.ndarray
    by: float
    brow: Tuple[float, ...]
    nose: np.ndarray
    nose_depth: np.ndarray
    mouth: Dict[str, np.ndarray]


@dataclass(frozen=True)
class _HairStyle:
    """``style`` (short, long, bob, bun, none), the hair ellipse (centre ``c``, half-axes ``ax``,
    ``ay``), the hairline (height, ``curve``, ``lean``, ``wave`` amplitude/frequency/phase) and the
    height of the side cut."""

    style: str
    ax: float
    c: Tuple[float, float]
    ay: float
    hairline: float
    curve: float
    lean: float
    wave: Tuple[float, float, float]
    side_cut: float


@dataclass(frozen=True)
class _Extras:
    """Which accessories the face wears."""

    hat: bool
    glasses: bool
    sunglasses: bool
    earrings: bool
    necklace: bool
    occluder: bool


def _sample_head(rng: np.random.Generator, S: int) -> _Head:
    a = rng.uniform(0.66, 0.8)  # face half-width (half-height is 1)
    jaw = rng.uniform(0.0, 0.2)
    pose = Pose(center=(S * (0.5 + rng.uniform(-0.1, 0.1)), S * (0.5 + rng.uniform(-0.06, 0.1))),
                scale=S * rng.uniform(0.28, 0.42),
                angle_deg=float(np.clip(rng.normal(0, 10), -30, 30)),
                yaw=rng.uniform(-0.3, 0.3), half_width=a)
    outline = ellipse(0, 0, a, 1.0, n=64)
    outline[:, 0] *= 1 - jaw * np.clip(outline[:, 1], 0, 1) ** 2
    return _Head(a, pose, outline)


def _sample_colours(rng: np.random.Generator) -> np.ndarray:
    """RGB colour per part id (float 0..255)."""
    skin = skin_colour(rng)
    hair_col = hair_colour(rng)
    lip = lip_colour(rng, skin)
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
    col[CLOTH] = any_colour(rng)
    col[HAT] = any_colour(rng)
    col[NECKLACE] = [(212, 175, 55), (192, 192, 200), tuple(any_colour(rng))][rng.integers(0, 3)]
    col[EARRING] = [(212, 175, 55), (192, 192, 200), tuple(any_colour(rng))][rng.integers(0, 3)]
    return col


def _sample_features(rng: np.random.Generator) -> _Features:
    ey = rng.uniform(-0.14, 0.0)
    ex = rng.uniform(0.29, 0.37)
    ew = rng.uniform(0.11, 0.16)
    up = ew * (rng.uniform(0.3, 0.55) if rng.random() > 0.1 else rng.uniform(0.12, 0.2))
    low = up * rng.uniform(0.5, 0.8)
    tilt = rng.uniform(-0.08, 0.15)
    gaze = rng.uniform(-0.35, 0.35, 2) * [ew, up]
    by = ey - rng.uniform(0.17, 0.25)
    brow = (rng.uniform(0.08, 0.15), rng.uniform(0.43, 0.55), rng.uniform(0.02, 0.08),
            rng.uniform(0.045, 0.085), rng.uniform(-0.01, 0.05))
    nose, nose_depth = nose_outline(ey + rng.uniform(-0.02, 0.08), rng.uniform(0.3, 0.42),
                                    rng.uniform(0.045, 0.07), rng.uniform(0.12, 0.18))
    hu = rng.uniform(0.035, 0.065)
    mouth = mouth_outlines(my=rng.uniform(0.56, 0.66), mw=rng.uniform(0.19, 0.28), hu=hu,
                           hl=hu * rng.uniform(1.1, 1.6), smile=rng.uniform(-0.02, 0.06),
                           bow=hu * rng.uniform(0.0, 0.4),
                           gap=rng.uniform(0.03, 0.13) if rng.random() < 0.45 else 0.0)
    return _Features(ey, ex, ew, up, low, tilt, gaze, by, brow, nose, nose_depth, mouth)


def _sample_hair(rng: np.random.Generator, a: float) -> _HairStyle:
    style = rng.choice(["short", "long", "bob", "bun", "none"], p=[0.35, 0.28, 0.17, 0.1, 0.1])
    short = style in ("short", "bun")
    ax = a * (rng.uniform(1.04, 1.15) if short else rng.uniform(1.12, 1.35))
    c = (rng.uniform(-0.05, 0.05), rng.uniform(-0.18, -0.08))
    ay = rng.uniform(0.98, 1.12)
    if rng.random() < 0.3:  # bangs, may cover the brows
        hairline = rng.uniform(-0.45, -0.22)
    else:
        hairline = rng.uniform(-0.75, -0.45)
    curve, lean = rng.uniform(0.0, 0.35), rng.uniform(-0.25, 0.25)
    wave = (rng.uniform(0.0, 0.04), rng.uniform(8, 20), rng.uniform(0, 2 * np.pi))
    side_cut = rng.uniform(-0.3, 0.15) if short else rng.uniform(0.15, 0.5)
    return _HairStyle(str(style), ax, c, ay, hairline, curve, lean, wave, side_cut)


def _sample_extras(rng: np.random.Generator, full: bool) -> _Extras:
    """Accessories; more of them in the 19-class order, where they are labelled."""
    p_acc = 0.35 if full else 0.12
    hat = rng.random() < p_acc
    glasses = rng.random() < (0.3 if full else 0.15)
    sunglasses = full and glasses and rng.random() < 0.35
    earrings = rng.random() < p_acc
    necklace = rng.random() < p_acc
    occluder = rng.random() < 0.06
    return _Extras(hat, glasses, sunglasses, earrings, necklace, occluder)


# ------------------------------------------------------------------------------------------------
# The part map, painted in occlusion order.


@dataclass
class _Parts:
    """The painted part map (CelebAMask-HQ ids) and the pixel geometry the image steps reuse:
    face, nose, eye and mouth outlines, the glasses (lenses, frame strokes and their thickness,
    the whole glasses mask) and the occluder mask."""

    ids: np.ndarray
    face_px: np.ndarray
    nose_px: np.ndarray
    eyes_px: Dict[int, np.ndarray]
    mouth_px: Dict[str, np.ndarray]
    glasses: np.ndarray
    lenses: np.ndarray
    frame: List[Tuple[np.ndarray, bool]]
    frame_thickness: int
    occluder: np.ndarray


def _paint_back_hair(rng: np.random.Generator, ids: np.ndarray, head: _Head,
                     hair: _HairStyle) -> None:
    """Long hair and bobs fall behind the neck and the head."""
    y_len = rng.uniform(1.2, 2.4) if hair.style == "long" else rng.uniform(0.6, 0.95)
    arc = ellipse(hair.c[0], hair.c[1], hair.ax, hair.ay, np.pi, 2 * np.pi, 24)
    w_b = hair.ax * rng.uniform(0.95, 1.3)
    back = np.concatenate([[[-w_b, y_len]], arc, [[w_b, y_len]]])
    fill(ids, head.pose.outline(back), HAIR)


def _paint_neck_and_clothes(rng: np.random.Generator, ids: np.ndarray, head: _Head,
                            necklace: bool) -> None:
    a, pose = head.a, head.pose
    nw = a * rng.uniform(0.42, 0.58)
    neck_shift = 0.3 * a * np.sin(pose.yaw)
    fill(ids, pose.outline(np.array([[-nw + neck_shift, 0.4], [nw + neck_shift, 0.4],
                                     [nw * 1.15 + neck_shift, 2.6],
                                     [-nw * 1.15 + neck_shift, 2.6]])), NECK)
    y_sh = rng.uniform(1.3, 1.8)
    depth = rng.uniform(0.05, 0.5)
    t = np.linspace(-1, 1, 9)
    neckline = np.stack([t * nw * 1.25,
                         y_sh - 0.05 + depth * (1 - np.abs(t) ** rng.uniform(1, 2.5))], 1)
    cloth = np.concatenate([[[-3.5, 4.5], [-3.5, y_sh + 0.5], [-1.4, y_sh + 0.05]], neckline,
                            [[1.4, y_sh + 0.05], [3.5, y_sh + 0.5], [3.5, 4.5]]])
    fill(ids, pose.outline(cloth), CLOTH)
    if necklace:
        y_n0 = rng.uniform(0.95, 1.2)
        chain = np.stack([t * nw * 1.05, y_n0 + rng.uniform(0.2, 0.5) * (1 - t ** 2)], 1)
        stroke(ids, pose.outline(chain), NECKLACE, round(head.px * rng.uniform(0.025, 0.05)))
        if rng.random() < 0.5:
            fill(ids, pose.outline(ellipse(chain[4, 0], chain[4, 1] + 0.05, 0.05, 0.07, n=12)),
                 NECKLACE)


def _paint_ears(rng: np.random.Generator, ids: np.ndarray, head: _Head, ey: float,
                earrings: bool) -> None:
    """Ears (the face covers their inner half), earrings at the lobes."""
    a, pose = head.a, head.pose
    ear_y = ey + rng.uniform(0.08, 0.16)
    ear_w, ear_h = rng.uniform(0.09, 0.13), rng.uniform(0.17, 0.23)
    for side, ear_id in ((-1, L_EAR), (1, R_EAR)):
        vis = float(np.clip(1.0 - 1.6 * side * pose.yaw, 0.2, 1.6))  # turned-away ear hides
        ecx = side * (a * 0.97 - 0.2 * ear_w + 0.55 * ear_w * vis)
        ear = ellipse(ecx, ear_y, ear_w * (0.6 + 0.4 * vis), ear_h, n=20)
        fill(ids, pose.outline(ear), ear_id)
        if earrings:
            lobe = pose.outline(np.array([[ecx, ear_y + ear_h * 0.95]]))[0]
            r = max(1.2, head.px * rng.uniform(0.03, 0.06))
            fill(ids, ellipse(lobe[0], lobe[1] + r, r, r * rng.uniform(1.0, 1.8), n=12), EARRING)


def _paint_face(ids: np.ndarray, head: _Head, feat: _Features
                ) -> Tuple[np.ndarray, np.ndarray, Dict[int, np.ndarray], Dict[str, np.ndarray]]:
    """Face, nose, brows, eyes, lips and inner mouth; returns their pixel outlines (face, nose,
    eyes by id, mouth parts by name)."""
    pose = head.pose
    face_px = pose.outline(head.outline)
    fill(ids, face_px, SKIN)
    nose_px = pose.feature(feat.nose, feat.nose_depth)
    fill(ids, nose_px, NOSE)
    for side, brow_id in ((-1, L_BROW), (1, R_BROW)):
        fill(ids, pose.feature(brow_outline(side, *feat.brow[:2], feat.by, *feat.brow[2:])),
             brow_id)
    eyes_px = {}
    for side, eye_id in ((-1, L_EYE), (1, R_EYE)):
        eyes_px[eye_id] = pose.feature(eye_outline(side * feat.ex, feat.ey, feat.ew, feat.up,
                                                   feat.low, feat.tilt, side))
        fill(ids, eyes_px[eye_id], eye_id)
    mouth_px = {k: pose.feature(v) for k, v in feat.mouth.items()}
    fill(ids, mouth_px["upper"], U_LIP)
    fill(ids, mouth_px["lower"], L_LIP)
    if "inner" in mouth_px:
        fill(ids, mouth_px["inner"], MOUTH)
    return face_px, nose_px, eyes_px, mouth_px


def _paint_front_hair(ids: np.ndarray, head: _Head, hair: _HairStyle) -> None:
    """The hair ellipse above the side cut, minus the skin below the hairline (and a bun)."""
    a, pose, S = head.a, head.pose, ids.shape[0]
    top = head.outline.copy()
    xs = top[:, 0] / a
    wave_a, wave_f, wave_p = hair.wave
    line = (hair.hairline + hair.curve * xs ** 2 + hair.lean * xs
            + wave_a * np.sin(wave_f * top[:, 0] + wave_p))
    top[:, 1] = np.maximum(top[:, 1], line)
    outer = pose.outline(ellipse(hair.c[0], hair.c[1], hair.ax, hair.ay, n=48))
    cut = hair.side_cut
    above_cut = pose.outline(np.array([[-3, -3], [3, -3], [3, cut], [-3, cut]]))
    skin = polygon_mask(S, pose.outline(top))
    front = polygon_mask(S, outer) & polygon_mask(S, above_cut) & ~skin
    if hair.style == "bun":
        front |= polygon_mask(S, pose.outline(ellipse(hair.c[0], hair.c[1] - hair.ay, 0.35, 0.3,
                                                      n=24)))
    ids[front] = HAIR


def _paint_hat(rng: np.random.Generator, ids: np.ndarray, head: _Head) -> None:
    """A dome and a brim over the hair."""
    y_b = rng.uniform(-0.8, -0.5)
    dome_ax = head.a * rng.uniform(1.15, 1.4)
    dome = ellipse(0, y_b, dome_ax, rng.uniform(0.55, 0.85), np.pi, 2 * np.pi, 24)
    fill(ids, head.pose.outline(dome), HAT)
    brim = ellipse(rng.uniform(-0.1, 0.1), y_b, dome_ax * rng.uniform(1.0, 1.5),
                   rng.uniform(0.04, 0.1), n=32)
    fill(ids, head.pose.outline(brim), HAT)


def _glasses(rng: np.random.Generator, S: int, head: _Head, feat: _Features
             ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[np.ndarray, bool]], int]:
    """Glasses as a mask of their own (eyes stay visible through clear lenses): the glasses and
    lens masks, the frame strokes (points, closed) and their thickness."""
    pose, ex, a = head.pose, feat.ex, head.a
    rx = feat.ew * rng.uniform(1.25, 1.6)
    ry = rx * rng.uniform(0.65, 0.95)
    power = rng.choice([2.0, 3.0, 5.0])
    gy = feat.ey + rng.uniform(-0.01, 0.03)
    lenses = np.zeros((S, S), bool)
    frame_pts = []
    for side in (-1, 1):
        lens = pose.feature(ellipse(side * ex, gy, rx, ry, n=28, power=power))
        lenses |= polygon_mask(S, lens)
        frame_pts.append((lens, True))
    bridge = np.array([[-ex + rx * 0.95, gy - ry * 0.3], [0, gy - ry * 0.45],
                       [ex - rx * 0.95, gy - ry * 0.3]])
    frame_pts.append((pose.feature(bridge), False))
    for side in (-1, 1):
        temple = np.array([[side * (ex + rx * 0.98), gy - ry * 0.2],
                           [side * a * 0.93, gy - ry * 0.25]])
        frame_pts.append((pose.feature(temple), False))
    thick = round(head.px * rng.uniform(0.025, 0.045))
    frame = np.zeros((S, S), np.uint8)
    for pts, closed in frame_pts:
        stroke(frame, pts, 1, thick, closed)
    return lenses | frame.astype(bool), lenses, frame_pts, thick


def _occluder(rng: np.random.Generator, S: int, head: _Head) -> np.ndarray:
    """A hand, microphone, ... in front of everything (labelled background)."""
    px = head.px
    oc = head.pose.outline(np.array([[rng.uniform(-0.8, 0.8), rng.uniform(0.0, 1.2)]]))[0]
    occ = ellipse(oc[0], oc[1], px * rng.uniform(0.2, 0.45), px * rng.uniform(0.2, 0.6), n=24,
                  power=rng.choice([2.0, 4.0]))
    return polygon_mask(S, occ)


def _paint_parts(rng: np.random.Generator, S: int, head: _Head, feat: _Features,
                 hair: _HairStyle, extras: _Extras) -> _Parts:
    ids = np.zeros((S, S), np.uint8)
    if hair.style in ("long", "bob"):
        _paint_back_hair(rng, ids, head, hair)
    _paint_neck_and_clothes(rng, ids, head, extras.necklace)
    _paint_ears(rng, ids, head, feat.ey, extras.earrings)
    face_px, nose_px, eyes_px, mouth_px = _paint_face(ids, head, feat)
    if hair.style != "none":
        _paint_front_hair(ids, head, hair)
    if extras.hat:
        _paint_hat(rng, ids, head)
    if extras.glasses:
        glasses, lenses, frame, thick = _glasses(rng, S, head, feat)
    else:
        glasses, lenses, frame, thick = np.zeros((S, S), bool), np.zeros((S, S), bool), [], 0
    occluder = _occluder(rng, S, head) if extras.occluder else np.zeros((S, S), bool)
    return _Parts(ids, face_px, nose_px, eyes_px, mouth_px, glasses, lenses, frame, thick,
                  occluder)


# ------------------------------------------------------------------------------------------------
# The image, rendered from the part map.


def _flat_image(rng: np.random.Generator, ids: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Background, the parts in their colours, a low-frequency mottling per part (float RGB)."""
    img = background(rng, ids.shape[0])
    fg = ids > 0
    img[fg] = col[ids[fg]]
    texture = np.full(len(_TOKENS19), 0.04, np.float32)  # relative strength of the mottling
    texture[0] = 0.0  # the background has its own
    texture[[HAIR, HAT, CLOTH]] = (0.12, 0.1, 0.1)
    img *= 1 + (texture[ids] * low_freq(rng, ids.shape[0]))[..., None] * rng.uniform(0.5, 1.5)
    return img


def _shade(img: np.ndarray, parts: _Parts, px: float) -> None:
    """The face darkens towards its outline; the neck is darker under the chin."""
    ids = parts.ids
    face_mask = polygon_mask(ids.shape[0], parts.face_px).astype(np.float32)
    blur = max(1.0, 0.25 * px)
    shade = 0.78 + 0.22 * cv2.GaussianBlur(face_mask, (0, 0), blur)
    on_face = np.isin(ids, (SKIN, NOSE, U_LIP, L_LIP, L_BROW, R_BROW))
    img[on_face] *= shade[on_face, None]
    chin_shadow = cv2.GaussianBlur(face_mask, (0, 0), blur)
    neck = ids == NECK
    img[neck] *= 1.0 - 0.35 * chin_shadow[neck, None]


def _draw_nose(img: np.ndarray, nose_px: np.ndarray, col: np.ndarray, px: float) -> None:
    """Shadowed sides, nostrils, a highlight on the tip (all inside the skin-coloured nose)."""
    dark = _rgb(col[NOSE] * 0.72)
    for sgn in (-1, 1):
        side_line = nose_px[:6] if sgn > 0 else nose_px[::-1][:6]
        stroke(img, side_line[1:5], dark, 1)
    nostril_r = max(0.8, 0.028 * px)
    for k in (5, -6):
        p = nose_px[k] + 0.3 * (nose_px[7] - nose_px[k])
        fill(img, ellipse(p[0], p[1], nostril_r * 1.4, nostril_r, n=10), _rgb(col[NOSE] * 0.45))
    tip = nose_px[7] + 0.35 * (0.5 * (nose_px[0] + nose_px[-1]) - nose_px[7])
    fill(img, ellipse(tip[0], tip[1], nostril_r * 1.5, nostril_r * 1.5, n=10),
         _rgb(np.minimum(col[NOSE] * 1.12, 255)))


def _draw_eyes(rng: np.random.Generator, img: np.ndarray, parts: _Parts, head: _Head,
               feat: _Features) -> None:
    """Iris, pupil and catch light inside each eye; a lash line along the upper lid."""
    iris = np.clip(rng.choice([[90, 55, 30], [60, 100, 160], [80, 120, 70], [120, 120, 120],
                               [40, 30, 25]]) * rng.uniform(0.7, 1.2), 0, 255)
    iris_r = max(1.0, head.px * feat.up * rng.uniform(1.0, 1.3))
    for eye_id, pts in parts.eyes_px.items():
        side = -1 if eye_id == L_EYE else 1
        centre = np.array([[side * feat.ex + feat.gaze[0], feat.ey + feat.gaze[1]]])
        c = head.pose.feature(centre)[0]

        def _iris(layer, c=c):
            fill(layer, ellipse(c[0], c[1], iris_r, iris_r, n=20), _rgb(iris))
            fill(layer, ellipse(c[0], c[1], iris_r * 0.45, iris_r * 0.45, n=12), (10.0, 10.0, 12.0))
            fill(layer, ellipse(c[0] - iris_r * 0.3, c[1] - iris_r * 0.3, iris_r * 0.2,
                                iris_r * 0.2, n=8), (250.0, 250.0, 250.0))
        paint_inside(img, parts.ids == eye_id, _iris)
        stroke(img, pts[:11], (25.0, 20.0, 20.0), 1)


def _draw_mouth(rng: np.random.Generator, img: np.ndarray, parts: _Parts, col: np.ndarray) -> None:
    """Teeth in an open mouth, a dark parting line in a closed one."""
    mouth_px = parts.mouth_px
    if "inner" not in mouth_px:
        stroke(img, mouth_px["line"], _rgb(col[U_LIP] * 0.5), 1)
        return
    if rng.random() < 0.6:
        # upper half of the opening: between the upper lip's lower edge and the parting line
        band = np.concatenate([mouth_px["upper"][-13:][::-1], mouth_px["line"][1:-1][::-1]])

        def _teeth(layer, band=band):
            fill(layer, band, (235.0, 232.0, 220.0))
        paint_inside(img, parts.ids == MOUTH, _teeth)


def _draw_hair_strands(rng: np.random.Generator, img: np.ndarray, ids: np.ndarray,
                       col: np.ndarray, px: float) -> None:
    """Short strands in two shades of the hair colour, inside the hair."""
    S = ids.shape[0]
    hair_yx = np.flatnonzero(ids == HAIR)
    if not hair_yx.size:
        return
    starts = rng.choice(hair_yx, size=int(rng.integers(10, 40)))
    p0 = np.stack([starts % S, starts // S], 1).astype(np.float64)
    d = rng.normal(0, px * 0.25, (len(starts), 2))
    strands = np.stack([p0, p0 + d, p0 + d * [1.8, 2.2]], 1)  # (n, 3 points, xy)
    shades = rng.uniform(0.6, 1.4, 2)

    def _strands(layer):
        for half, shade in zip((strands[::2], strands[1::2]), shades):
            cv2.polylines(layer, [fixed(p) for p in half], False,
                          _rgb(np.clip(col[HAIR] * shade, 0, 255)), 1, cv2.LINE_8, 4)
    paint_inside(img, ids == HAIR, _strands)


def _draw_glasses(rng: np.random.Generator, img: np.ndarray, parts: _Parts,
                  sunglasses: bool) -> None:
    """Tinted lenses (dark ones hide the eyes) and the frame."""
    lenses = parts.lenses
    tint = rng.uniform(0, 60, 3) if sunglasses else rng.uniform(150, 255, 3)
    opacity = rng.uniform(0.85, 0.95) if sunglasses else rng.uniform(0.05, 0.2)
    img[lenses] = (1 - opacity) * img[lenses] + opacity * tint.astype(np.float32)
    frame_col = _rgb(rng.choice([[15, 15, 15], [80, 50, 30], [180, 180, 190],
                                 list(any_colour(rng))]))
    for pts, closed in parts.frame:
        stroke(img, pts, frame_col, parts.frame_thickness, closed)


def _draw_occluder(rng: np.random.Generator, img: np.ndarray, occluder: np.ndarray) -> None:
    occ_col = skin_colour(rng) if rng.random() < 0.5 else any_colour(rng)
    img[occluder] = occ_col * (1 + 0.08 * low_freq(rng, occluder.shape[0])[occluder, None])


def _photograph(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Global lighting, blur and sensor noise; uint8 BGR."""
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = grid(img.shape[0])
    ramp = (xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi)
    img *= (1 + rng.uniform(0.0, 0.5) * ramp)[..., None]
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-15, 15)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.0, 6.0)
    return np.clip(img, 0, 255).astype(np.uint8)[..., ::-1].copy()  # RGB -> BGR


def _render(rng: np.random.Generator, parts: _Parts, col: np.ndarray, head: _Head,
            feat: _Features, extras: _Extras) -> np.ndarray:
    img = _flat_image(rng, parts.ids, col)
    _shade(img, parts, head.px)
    _draw_nose(img, parts.nose_px, col, head.px)
    _draw_eyes(rng, img, parts, head, feat)
    _draw_mouth(rng, img, parts, col)
    _draw_hair_strands(rng, img, parts.ids, col, head.px)
    if extras.glasses:
        _draw_glasses(rng, img, parts, extras.sunglasses)
    if extras.occluder:
        _draw_occluder(rng, img, parts.occluder)
    return _photograph(rng, img)


# ------------------------------------------------------------------------------------------------
# The label map.


def _label_map(parts: _Parts, schema: Schema, sunglasses: bool) -> np.ndarray:
    """The part map in ``schema``'s order: with 19 classes glasses are labelled (clear lenses keep
    the eyes behind them); with 11 the parts without a Helen/LaPa class become background. The
    occluder is background in both."""
    if schema.tokens == _TOKENS19:
        label = parts.ids.copy()
        if sunglasses:
            label[parts.glasses] = GLASSES
        else:
            label[parts.glasses & (parts.ids != L_EYE) & (parts.ids != R_EYE)] = GLASSES
    else:
        label = _lut_to(schema)[parts.ids]
    label[parts.occluder] = 0
    return label


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
    schema = schema_for(classes)
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    full = classes == 19
    head = _sample_head(rng, size)
    col = _sample_colours(rng)
    feat = _sample_features(rng)
    hair = _sample_hair(rng, head.a)
    extras = _sample_extras(rng, full)
    parts = _paint_parts(rng, size, head, feat, hair, extras)
    image = _render(rng, parts, col, head, feat, extras)
    return image, _label_map(parts, schema, extras.sunglasses)
