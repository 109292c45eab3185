"""Video clips made from a still photo along a known camera path, for the video benchmark
(``benchmarks/bench_video.py``) and tests: with the path known, every frame's parse can be warped
back onto the photo (flicker between frames) and the photo's own parse forward into every frame
(fidelity), and the true path of each face is known (track ids, crop-geometry lag).

    >>> path = camera_path(48, photo.shape[:2], seed=0)         # 48 2x3 matrices, photo -> frame
    >>> frames = make_clip(photo, path, seed=0)                 # 48 uint8 BGR frames

The camera (defaults: 48 frames, about 2 s at 25 fps): the frame is a view of the photo whose
centre pans linearly by ``pan`` = (0.2, 0.05) of the photo's (width, height) over the clip, from
half of it before the photo's centre to half of it past (about one face width of the benchmark's
two-portrait canvas), while the zoom rises linearly from 1.0 to 1.15, the view centre landing on
the frame centre; on top, each frame is shifted by its own random offset, Gaussian with ``jitter``
= 1.0 px standard deviation per axis (a hand-held camera's shake; independent from frame to frame
and the same for every ``jitter`` > 0 with the same seed, scaled). Frame ``t``'s matrix maps a
photo point ``p`` to ``z_t * (p - c_t) + f + j_t`` (``c_t`` the view centre, ``z_t`` the zoom, ``f``
the frame centre, ``j_t`` the jitter), pixel centres at integer coordinates, as ``cv2.warpAffine``
uses it. :func:`make_clip` renders the frames with ``cv2.INTER_LINEAR`` (border: constant
grey 128, the benchmark canvas's own background, or ``"replicate"``), adds Gaussian sensor noise of
``noise`` = 2.0 grey levels and passes each frame through a JPEG encode/decode round trip at
``jpeg_quality`` = 85.
"""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .photos import _BORDERS

__all__ = ["camera_path", "make_clip", "move_points", "to_frame", "to_photo"]


def camera_path(n: int = 48, size: Tuple[int, int] = (360, 640), seed: int = 0,
                pan: Sequence[float] = (0.2, 0.05), zoom: Sequence[float] = (1.0, 1.15),
                jitter: float = 1.0, out_size: Optional[Tuple[int, int]] = None
                ) -> List[np.ndarray]:
    """``n`` float64 2x3 matrices (photo pixels -> frame pixels), one per frame (module
    docstring). ``size``: the photo's (h, w); ``out_size``: the frames' (h, w), default the
    photo's; ``pan``: the view centre's travel over the clip in fractions of the photo's (w, h);
    ``zoom``: (first, last) scale; ``jitter``: per-frame random shift, px standard deviation per
    axis (0: the smooth path). The same ``seed`` gives the same path."""
    if n < 1:
        raise ValueError(f"a clip needs at least one frame, got n={n}")
    h, w = size
    oh, ow = out_size or size
    rng = np.random.default_rng(seed)
    shake = rng.standard_normal((n, 2)) * float(jitter)
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    frame_centre = np.array([(ow - 1) / 2.0, (oh - 1) / 2.0])
    travel = np.array([pan[0] * w, pan[1] * h], np.float64)
    out = []
    for t in range(n):
        u = t / (n - 1) if n > 1 else 0.0
        c = centre + (u - 0.5) * travel
        z = zoom[0] + u * (zoom[1] - zoom[0])
        m = np.zeros((2, 3))
        m[0, 0] = m[1, 1] = z
        m[:, 2] = frame_centre - z * c + shake[t]
        out.append(m)
    return out


def move_points(m: np.ndarray, points) -> np.ndarray:
    """``points`` (N, 2) x, y moved by the 2x3 matrix ``m``."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return p @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]


def make_clip(photo: np.ndarray, path: Sequence[np.ndarray],
              out_size: Optional[Tuple[int, int]] = None, noise: float = 2.0,
              jpeg_quality: Optional[int] = 85, seed: int = 0, border: str = "constant",
              border_value: float = 128) -> List[np.ndarray]:
    """The frames (uint8 BGR, (h, w) = ``out_size``, default the photo's) of ``photo`` seen along
    ``path`` (:func:`camera_path`): ``cv2.warpAffine`` (``INTER_LINEAR``, ``border`` "constant"
    with ``border_value`` or "replicate"), Gaussian noise of ``noise`` grey levels (standard
    deviation; 0: none), then a JPEG round trip at ``jpeg_quality`` (None: none). The same
    ``seed`` gives the same frames."""
    oh, ow = out_size or photo.shape[:2]
    rng = np.random.default_rng(seed)
    frames = []
    for m in path:
        f = cv2.warpAffine(photo, np.asarray(m, np.float64), (ow, oh), flags=cv2.INTER_LINEAR,
                           borderMode=_BORDERS[border], borderValue=(border_value,) * 3)
        if noise > 0:
            f = np.clip(f + rng.normal(0.0, noise, f.shape), 0, 255).astype(np.uint8)
        if jpeg_quality is not None:
            ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            f = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        frames.append(f)
    return frames


def to_frame(label_map: np.ndarray, m: np.ndarray, out_size: Tuple[int, int]
             ) -> Tuple[np.ndarray, np.ndarray]:
    """A photo's label map moved into a frame by ``m`` (nearest; 0 outside the photo) and the
    mask of the frame's pixels that the photo covers."""
    oh, ow = out_size
    m = np.asarray(m, np.float64)
    moved = cv2.warpAffine(label_map, m, (ow, oh), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    covered = cv2.warpAffine(np.ones(label_map.shape[:2], np.uint8), m, (ow, oh),
                             flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0) > 0
    return moved, covered


def to_photo(label_map: np.ndarray, m: np.ndarray, size: Tuple[int, int]
             ) -> Tuple[np.ndarray, np.ndarray]:
    """A frame's label map moved back onto the (h, w) = ``size`` photo with the inverse of ``m``
    (nearest; 0 where the frame does not reach) and the mask of the photo's pixels the frame
    covers."""
    return to_frame(label_map, cv2.invertAffineTransform(np.asarray(m, np.float64)), size)
