"""Drawing primitives of the synthetic faces: the pose that maps the canonical face frame to
pixels, (super)ellipses, sub-pixel polygon filling and stroking, and the outlines of eyes, brows,
nose and mouth.

Parts are described in a canonical face frame (origin at the face centre, y down, the face
ellipse has half-height 1) and mapped to pixels by a :class:`Pose`.
"""
from typing import Dict, Tuple, Union

import cv2
import numpy as np

__all__ = ["Pose", "ellipse", "fixed", "fill", "stroke", "polygon_mask", "eye_outline",
           "brow_outline", "nose_outline", "mouth_outlines", "paint_inside"]


class Pose:
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


def ellipse(cx: float, cy: float, ax: float, ay: float, t0: float = 0.0,
             t1: float = 2 * np.pi, n: int = 40, power: float = 2.0) -> np.ndarray:
    """Points of a (super)ellipse arc; ``power`` > 2 squares the shape off (rectangular lenses)."""
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * np.pi - 1e-9)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / power
    return np.stack([cx + ax * np.sign(c) * np.abs(c) ** e, cy + ay * np.sign(s) * np.abs(s) ** e], 1)


def fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4 below)


def fill(canvas: np.ndarray, pts: np.ndarray, value) -> None:
    cv2.fillPoly(canvas, [fixed(pts)], value, lineType=cv2.LINE_8, shift=4)


def stroke(canvas: np.ndarray, pts: np.ndarray, value, thickness: int, closed: bool = False) -> None:
    cv2.polylines(canvas, [fixed(pts)], closed, value, int(max(1, thickness)), cv2.LINE_8, shift=4)


def polygon_mask(size: int, *polys: np.ndarray) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    for p in polys:
        fill(m, p, 1)
    return m.astype(bool)


# ------------------------------------------------------------------------------------------------
# Part shapes in the canonical frame.


def eye_outline(cx: float, cy: float, ew: float, up: float, low: float, tilt: float, side: int) -> np.ndarray:
    u = np.linspace(-1.0, 1.0, 11)
    upper = np.stack([cx + u * ew, cy - up * (1 - u ** 2) ** 0.8], 1)
    lower = np.stack([cx + u * ew, cy + low * (1 - u ** 2) ** 0.9], 1)[::-1][1:-1]
    pts = np.concatenate([upper, lower])
    pts[:, 1] -= tilt * (pts[:, 0] - cx) * side  # outer corner raised (side * x > 0 is outward)
    return pts


def brow_outline(side: int, x_in: float, x_out: float, y0: float, arch: float, thick: float,
          tail: float) -> np.ndarray:
    u = np.linspace(0.0, 1.0, 10)
    x = side * (x_in + u * (x_out - x_in))
    yc = y0 - arch * np.sin(np.pi * u ** 0.8) + tail * u ** 2
    half = 0.5 * thick * (1.0 - 0.55 * u)
    return np.concatenate([np.stack([x, yc - half], 1), np.stack([x, yc + half], 1)[::-1]])


def nose_outline(y_top: float, y_bot: float, wb: float, wn: float) -> Tuple[np.ndarray, np.ndarray]:
    """Nose outline (bridge to nostril wings) and the depth of each point."""
    h = y_bot - y_top
    right = np.array([[wb, y_top], [wb * 1.05, y_top + 0.45 * h], [wn * 0.55, y_bot - 0.1],
                      [wn * 0.95, y_bot - 0.05], [wn, y_bot - 0.01], [wn * 0.7, y_bot + 0.02],
                      [wn * 0.3, y_bot + 0.015], [0.0, y_bot + 0.025]])
    depth_r = np.array([0.05, 0.1, 0.16, 0.13, 0.12, 0.17, 0.21, 0.23])
    left = right[::-1][1:] * [-1.0, 1.0]
    return np.concatenate([right, left]), np.concatenate([depth_r, depth_r[::-1][1:]])


def mouth_outlines(my: float, mw: float, hu: float, hl: float, smile: float, bow: float,
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


def paint_inside(img: np.ndarray, mask: np.ndarray, draw) -> None:
    """Apply ``draw(layer)`` to a copy of ``img`` and keep the result only inside ``mask``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    layer = img.copy()  # drawing is clipped by the image border, so draw on a full-size copy
    draw(layer)
    np.copyto(img[box], layer[box], where=mask[box][..., None])
