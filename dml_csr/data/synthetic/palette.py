"""Colours and backgrounds of the synthetic faces (RGB, float 0..255): skin, hair and lip tones,
low-frequency mottling, and the cluttered background whose colours are often taken from the face
palettes, so that colour alone cannot segment a face."""
from functools import lru_cache
from typing import Tuple

import cv2
import numpy as np

from .geometry import ellipse, fill, stroke

__all__ = ["skin_colour", "hair_colour", "lip_colour", "any_colour", "grid", "low_freq",
           "background"]

_SKIN_TONES = np.array([[245, 215, 190], [225, 180, 150], [195, 145, 110], [150, 100, 70],
                        [100, 65, 45]], np.float64)
_HAIR_TONES = np.array([[20, 18, 18], [55, 38, 28], [105, 70, 42], [200, 165, 110],
                        [150, 68, 35], [165, 165, 165], [235, 225, 200]], np.float64)
_HAIR_P = np.array([0.25, 0.25, 0.18, 0.13, 0.08, 0.07, 0.04])


def skin_colour(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    c = _SKIN_TONES[i] + (t - i) * (_SKIN_TONES[i + 1] - _SKIN_TONES[i])
    return c + rng.normal(0, 7, 3)


def hair_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.08:  # dyed
        return rng.uniform(20, 235, 3)
    return _HAIR_TONES[rng.choice(len(_HAIR_TONES), p=_HAIR_P)] * rng.uniform(0.85, 1.15) + rng.normal(0, 6, 3)


def lip_colour(rng: np.random.Generator, skin: np.ndarray) -> np.ndarray:
    if rng.random() < 0.3:  # lipstick
        return np.array([rng.uniform(120, 230), rng.uniform(10, 80), rng.uniform(30, 130)])
    return skin * np.array([0.85, 0.62, 0.66]) * rng.uniform(0.8, 1.05) + rng.normal(0, 6, 3)


def any_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """Background colours, often taken from the face palettes so colour alone cannot segment."""
    r = rng.random()
    if r < 0.25:
        return skin_colour(rng)
    if r < 0.4:
        return hair_colour(rng)
    if r < 0.5:
        return lip_colour(rng, skin_colour(rng))
    return any_colour(rng)


@lru_cache(maxsize=8)
def grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) divided by ``size``, float32 (size, size); shared, read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def low_freq(rng: np.random.Generator, size: int, cells: int = 6) -> np.ndarray:
    noise = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    c1, c2 = _distractor_colour(rng), _distractor_colour(rng)
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = grid(size)
    ramp = np.clip(0.5 + (xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi), 0, 1)
    img = c1.astype(np.float32) + (c2 - c1).astype(np.float32) * ramp[..., None]
    for _ in range(int(rng.integers(0, 8))):
        colour = tuple(float(v) for v in _distractor_colour(rng))
        kind = rng.integers(0, 4)
        c = rng.uniform(-0.1, 1.1, 2) * size
        r = rng.uniform(0.04, 0.3, 2) * size
        if kind == 0:
            fill(img, ellipse(c[0], c[1], r[0], r[1], n=24), colour)
        elif kind == 1:
            fill(img, np.array([c - r, [c[0] + r[0], c[1] - r[1]], c + r, [c[0] - r[0], c[1] + r[1]]]), colour)
        elif kind == 2:
            fill(img, c + rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2)) * r, colour)
        else:
            stroke(img, c + rng.uniform(-1, 1, (int(rng.integers(2, 5)), 2)) * r, colour,
                    int(rng.integers(1, max(2, size // 24))))
    img *= 1 + rng.uniform(0.0, 0.12) * low_freq(rng, size, 8)[..., None]
    return img
