"""Face parsing of videos: streamed frames, face tracks, smoothed crops and smoothed maps.

    >>> for frame in parser.video("clip.mp4"):                 # or a sequence / iterator of frames
    ...     frame.index, frame.tracks, frame.result.combined[0], frame.result.label_maps

Per frame (docs/inference.md, "Video"):

1. **frames** are read one at a time (:class:`VideoSource`: OpenCV's FFmpeg reader, or any
   iterable of uint8 arrays, ``None`` standing for a frame that failed to decode); with
   ``threaded=True`` the next frames are decoded and their faces detected in a reader thread
   (``deploy/pipeline.py``) while the network runs. Memory does not grow with the clip's length.
2. **faces** are found by the parser's detector on every ``detect_every``-th frame; in between the
   tracks keep their last geometry. :class:`FaceTracker` matches the detections to the tracks by
   the overlap (IoU) of their boxes with each track's box moved by its own recent motion,
   greedily from the best overlap down (at least ``min_iou``); a detection left over starts a new
   track (a new id), a track left over is kept for ``max_missed`` detection frames at its last
   geometry (marked ``detected: false``) and then ended. Ids are never reused.
3. **crop geometry** (centre, scale, angle of the face's square, ``face_region``) is smoothed per
   track by a one-euro filter (Casiez et al., CHI 2012: a low-pass filter whose cut-off rises with
   the speed, so slow jitter is removed and real motion followed without visible lag);
   positions and speeds are measured in face sizes (:class:`OneEuroFilter`, :data:`GEOMETRY_FILTER`).
4. **maps**: each face is parsed on its crop (``FaceParser.parse_faces``, the photo path of
   ``dml_csr/predict.py``); its softmax probabilities, which live in the face's own aligned
   crop frame, are averaged over time per track with an exponential moving average,
   ``p = (1 - S) * p_frame + S * shift(p_previous)`` (``smooth`` S in [0, 1)). The smoothed crop
   does not follow the face's every pixel of shake (that is what smoothing it is for), so the
   face moves a little inside it from frame to frame: ``shift`` moves the past average by the
   picture's own motion inside the crop, measured on the two frames' grey crops
   (:func:`crop_motion`: Lucas-Kanade, sub-pixel; a weak match, as at a cut, restarts the
   average from the frame). The labels are the argmax of the averaged probabilities warped
   back onto the frame (bilinear, ``parse_faces(fine_edges=True)``: edges on the frame's pixel
   grid, not the crop's), and overlapping faces are combined by the photo overlap rule.

``smooth=0`` turns all of it off (no geometry filter, no map averaging, no carried tracks): each
frame's result is exactly ``parser(frame)``'s; tracks still get ids.

A frame that fails to decode is skipped and counted: its :class:`VideoFrame` repeats the previous
frame's image and result with ``decoded=False``. A clip whose frames change size, and a file that
cannot be read or holds no frame, raise :class:`VideoError` naming it.
"""
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ..data.transforms import warp_image
from ..files import max_pixels
from .detect import as_detections, face_region
from .pipeline import prefetch

__all__ = ["VIDEO_EXTS", "VideoError", "VideoSource", "OneEuroFilter", "FaceTracker",
           "crop_template", "crop_motion", "shift_maps",
           "VideoFrame", "parse_video", "DEFAULT_SMOOTH", "GEOMETRY_FILTER", "is_video"]

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_SMOOTH = 0.7
# one-euro filter of the crop geometry: cut-off (Hz) at rest, its rise per face size per second
GEOMETRY_FILTER = {"min_cutoff": 1.0, "beta": 2.0, "d_cutoff": 1.0}
# motion between a track's consecutive crops (crop_motion): grey crops REGISTER_SIZE px on their
# shorter side; a match below MIN_MATCH (or a shift beyond MAX_SHIFT of the crop) is not trusted,
# and the track's average starts again from the frame
REGISTER_SIZE = 128
MIN_MATCH = 0.8
MAX_SHIFT = 0.2
MAX_DECODE_GAP = 32           # consecutive frames that fail to decode before the clip counts as ended
DEFAULT_FPS = 25.0


class VideoError(ValueError):
    """A video that cannot be parsed as a whole (unreadable, empty, frames of changing size)."""


def is_video(path: Union[str, os.PathLike]) -> bool:
    return str(path).lower().endswith(VIDEO_EXTS)


# ------------------------------------------------------------------------------------- frames
class VideoSource:
    """The frames of a video file, read one at a time with OpenCV's FFmpeg reader.

    Opening checks the file (a regular, non-empty file that FFmpeg opens; its frame size within
    ``limit`` pixels, ``dml_csr.files.max_pixels``) and raises :class:`VideoError` naming it.
    Iterating yields uint8 BGR frames, ``None`` for a frame that fails to decode when later frames
    decode again (up to :data:`MAX_DECODE_GAP` in a row; after that the clip has ended);
    :attr:`failed` counts them. The reader is released at the end, on an error and on
    :meth:`close`. ``fps``: the container's frame rate (25 when it gives none, with a warning);
    ``frame_count``: the container's count (0 when unknown; it may be an estimate).
    """

    def __init__(self, path: Union[str, os.PathLike], limit: Optional[int] = None):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise VideoError(f"{self.path}: no such file")
        if not os.path.isfile(self.path):
            raise VideoError(f"{self.path}: not a regular file")
        if os.path.getsize(self.path) == 0:
            raise VideoError(f"{self.path}: the file is empty")
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise VideoError(f"{self.path}: cannot be read as a video (OpenCV's FFmpeg reader "
                             f"does not open it: not a video, damaged, or a codec it lacks)")
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        limit = max_pixels(limit)
        if self.width * self.height > limit:
            cap.release()
            raise VideoError(f"{self.path}: frames of {self.width}x{self.height} exceed the "
                             f"limit of {limit} pixels (--max-pixels, $DMLCSR_MAX_PIXELS)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            logger.warning("%s gives no frame rate: %.0f frames per second assumed", self.path,
                           DEFAULT_FPS)
            fps = DEFAULT_FPS
        self.fps = float(fps)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and 0 < count < 1e9 else 0
        self.failed = 0
        self._cap: Optional[cv2.VideoCapture] = cap

    def __iter__(self) -> Iterator[Optional[np.ndarray]]:
        cap = self._cap
        if cap is None:
            raise VideoError(f"{self.path}: already read (a VideoSource is read once)")
        gap = 0
        try:
            while gap < MAX_DECODE_GAP:
                ok = cap.grab()
                frame = cap.retrieve()[1] if ok else None
                if frame is None:
                    gap += 1
                    continue
                for _ in range(gap):             # frames that failed between decoded ones
                    self.failed += 1
                    yield None
                gap = 0
                yield frame
        finally:
            self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _checked_frames(frames: Iterable[Optional[np.ndarray]], name: str
                    ) -> Iterator[Optional[np.ndarray]]:
    """``frames`` as uint8 BGR (H, W, 3) arrays of one size (``None`` passes: a failed frame);
    a frame of another size or type raises :class:`VideoError` naming ``name`` and the frame."""
    size = None
    for i, f in enumerate(frames):
        if f is None:
            yield None
            continue
        a = np.asarray(f)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise VideoError(f"{name}: frame {i} is not a uint8 (H, W, 3) image "
                             f"(dtype {a.dtype}, shape {a.shape})")
        if size is None:
            size = a.shape[:2]
        elif a.shape[:2] != size:
            raise VideoError(f"{name}: frame {i} is {a.shape[1]}x{a.shape[0]}, the frames "
                             f"before it {size[1]}x{size[0]}: the frame size changes")
        yield a


# ----------------------------------------------------------------------------------- geometry
class OneEuroFilter:
    """One-euro filter (Casiez, Roussel and Vogel, CHI 2012) of a vector signal.

    Each step low-passes the signal with cut-off ``min_cutoff + beta * |speed|`` (Hz), the speed
    being the signal's own derivative low-passed at ``d_cutoff``: at rest the cut-off is low
    (jitter removed), in motion it rises (little lag). ``units``: per component, what one unit of
    speed is (``beta`` is per unit per second); the speed is the largest of the components'.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        if not (min_cutoff > 0 and d_cutoff > 0 and beta >= 0):
            raise ValueError(f"one-euro filter needs min_cutoff > 0, d_cutoff > 0, beta >= 0; "
                             f"got {min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x: Optional[np.ndarray] = None
        self.dx: Optional[np.ndarray] = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, value: Sequence[float], dt: float,
                 units: Optional[Sequence[float]] = None) -> np.ndarray:
        x = np.asarray(value, np.float64)
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return self.x.copy()
        dx = (x - self.x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * dx + (1.0 - a_d) * self.dx
        u = np.ones_like(x) if units is None else np.asarray(units, np.float64)
        speed = float(np.max(np.abs(self.dx) / u))
        a = self._alpha(self.min_cutoff + self.beta * speed, dt)
        self.x = a * x + (1.0 - a) * self.x
        return self.x.copy()


# ------------------------------------------------------------------------------- registration
_WINDOWS: Dict[Tuple[int, int], np.ndarray] = {}     # Hann windows by (h, w)


def crop_template(grey: np.ndarray, square, crop_size: Tuple[int, int],
                  center_mode: str = "exact") -> np.ndarray:
    """The grey (H, W) frame's crop of ``square`` = (centre, scale, angle), on the network crop's
    geometry (``crop_size``, ``center_mode``) shrunk to :data:`REGISTER_SIZE` px on its shorter
    side: float32, for :func:`crop_motion`."""
    h, w = crop_size
    f = min(1.0, REGISTER_SIZE / float(min(h, w)))
    size = (max(8, int(round(h * f))), max(8, int(round(w * f))))
    center, scale, angle = square
    return warp_image(grey, center, scale, angle, size, center_mode).astype(np.float32)


def _window(h: int, w: int) -> np.ndarray:
    win = _WINDOWS.get((h, w))
    if win is None:
        win = _WINDOWS.setdefault((h, w), np.outer(np.hanning(h), np.hanning(w)).astype(np.float32))
    return win


def _shifted(image: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``x + d`` (bilinear, edges repeated)."""
    h, w = image.shape
    return cv2.warpAffine(image, np.array([[1.0, 0.0, d[0]], [0.0, 1.0, d[1]]]), (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def crop_motion(previous: Optional[np.ndarray], current: np.ndarray
                ) -> Optional[Tuple[float, float]]:
    """How far the picture moved inside the crop from ``previous`` to ``current`` (two
    :func:`crop_template` arrays): ``(dx, dy)`` in fractions of the crop's (width, height).

    Lucas-Kanade for a translation (Gauss-Newton on the brightness difference, Hann-weighted,
    coarse to fine over an image pyramid; sub-pixel). None where it is not to be trusted: no
    previous crop, a picture without texture, a match (Hann-weighted normalised correlation of
    the two crops after the shift) below :data:`MIN_MATCH` (the picture changed: a cut, an
    occlusion) or a shift beyond :data:`MAX_SHIFT` of the crop. (OpenCV's ``phaseCorrelate``
    was tried first: in OpenCV 4.14 it returns different shifts for the same two arrays from
    one call to the next.)"""
    if previous is None or previous.shape != current.shape:
        return None
    pa, pb = [np.asarray(previous, np.float32)], [np.asarray(current, np.float32)]
    while min(pa[-1].shape) >= 32 and len(pa) < 4:
        pa.append(cv2.pyrDown(pa[-1]))
        pb.append(cv2.pyrDown(pb[-1]))
    d = np.zeros(2)
    for level in range(len(pa) - 1, -1, -1):
        a, b, f = pa[level], pb[level], 2.0 ** level
        win = _window(*a.shape)
        gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        wx, wy = win * gx, win * gy
        hess = np.array([[np.sum(wx * gx), np.sum(wx * gy)], [np.sum(wx * gy), np.sum(wy * gy)]],
                        np.float64)
        if not np.trace(hess) > 0 or np.linalg.det(hess) <= 1e-9 * np.trace(hess) ** 2:
            return None                                   # no texture to follow
        inv = np.linalg.inv(hess)
        dl = d / f
        for _ in range(20):
            e = _shifted(b, dl) - a
            step = -inv @ np.array([np.sum(wx * e), np.sum(wy * e)], np.float64)
            dl = dl + step
            if np.abs(step).max() < 1e-3:
                break
        d = dl * f
    h, w = pa[0].shape
    if not (np.all(np.isfinite(d)) and abs(d[0]) <= MAX_SHIFT * w and abs(d[1]) <= MAX_SHIFT * h):
        return None
    win = _window(h, w)
    x, y = pa[0], _shifted(pb[0], d)
    x = x - np.sum(win * x) / np.sum(win)
    y = y - np.sum(win * y) / np.sum(win)
    match = float(np.sum(win * x * y) / np.sqrt(np.sum(win * x * x) * np.sum(win * y * y) + 1e-12))
    return (float(d[0]) / w, float(d[1]) / h) if match >= MIN_MATCH else None


def shift_maps(maps: torch.Tensor, dx: float, dy: float, mode: str = "bicubic") -> torch.Tensor:
    """(K, h, w) maps with their content moved by ``dx`` * w, ``dy`` * h pixels: bicubic by
    default (a bilinear shift, repeated frame after frame, blurs the average until small classes
    vanish: FP-LIIF's F1 against the still photo fell by 2.2 points at S = 0.7,
    docs/inference.md), clamped to [0, 1]; the pixels moved in from outside repeat the edge."""
    theta = torch.tensor([[[1.0, 0.0, -2.0 * dx], [0.0, 1.0, -2.0 * dy]]],
                         dtype=torch.float32, device=maps.device)
    src = maps[None].float()
    grid = torch.nn.functional.affine_grid(theta, list(src.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(src, grid, mode=mode, padding_mode="border",
                                          align_corners=False)
    return out[0].clamp_(0.0, 1.0).to(maps.dtype)


def _box_of(center, scale: float) -> np.ndarray:
    c = np.asarray(center, np.float64)
    return np.array([c[0] - scale / 2, c[1] - scale / 2, c[0] + scale / 2, c[1] + scale / 2])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    """One face followed through the clip."""

    id: int
    row: np.ndarray                        # the detector's last row (15 numbers)
    center: np.ndarray                     # crop square used (smoothed), photo pixels
    scale: float
    angle: float                           # degrees
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))   # box centre px / frame
    missed: int = 0                        # detection frames in a row without its face
    detected: bool = True                  # found by the detector on this frame
    filter: Optional[OneEuroFilter] = None
    probs: Optional[torch.Tensor] = None   # the averaged crop-space probabilities (K, h, w)
    template: Optional[np.ndarray] = None  # the last frame's grey crop (crop_template)

    @property
    def square(self) -> Tuple[np.ndarray, float, float]:
        return self.center.copy(), float(self.scale), float(self.angle)


class FaceTracker:
    """Track ids and smoothed crop squares over a clip (module docstring, steps 2 and 3).

    ``update(rows, margin, dt)`` with the detector's rows of a frame (None on frames the detector
    did not run: the tracks keep their geometry) returns the tracks to parse on it: the detected
    ones in the detector's order (largest box first), then those carried. A track missed by the
    detector keeps its id for ``max_missed`` detection frames. ``smooth=False``: squares as
    ``face_region`` gives them, and a missed face is not parsed (the per-frame result).
    """

    def __init__(self, smooth: bool = True, max_missed: int = 5, min_iou: float = 0.2,
                 geometry_filter: Optional[Dict[str, float]] = None):
        self.smooth = bool(smooth)
        self.max_missed = max(0, int(max_missed))
        self.min_iou = float(min_iou)
        self.filter_args = dict(GEOMETRY_FILTER if geometry_filter is None else geometry_filter)
        OneEuroFilter(**self.filter_args)               # checked here, once
        self.tracks: List[Track] = []
        self.next_id = 0

    def _match(self, boxes: List[np.ndarray]) -> Dict[int, int]:
        """detection index -> track index, greedy from the best overlap with each track's box
        moved by its velocity."""
        pairs = []
        for t, track in enumerate(self.tracks):
            predicted = track.row[:4].astype(np.float64) + np.tile(track.velocity, 2)
            for d, box in enumerate(boxes):
                iou = _iou(predicted, box)
                if iou >= self.min_iou:
                    pairs.append((iou, d, t))
        taken_d, taken_t, out = set(), set(), {}
        for iou, d, t in sorted(pairs, key=lambda p: -p[0]):
            if d not in taken_d and t not in taken_t:
                out[d] = t
                taken_d.add(d)
                taken_t.add(t)
        return out

    def _geometry(self, track: Track, row: np.ndarray, margin: float, dt: float) -> None:
        center, scale, angle = face_region(row, margin)
        if self.smooth:
            if track.filter is None:
                track.filter = OneEuroFilter(**self.filter_args)
            else:              # unwrap the angle next to the filtered one (no 359 -> 1 jump)
                angle = track.angle + ((angle - track.angle + 180.0) % 360.0 - 180.0)
            s = max(track.scale if track.filter.x is not None else scale, 1.0)
            # speed units: face sizes for the centre and the scale, 30 degrees for the angle
            x = track.filter([center[0], center[1], scale, angle], dt, units=(s, s, s, 30.0))
            center, scale, angle = x[:2], float(x[2]), float(x[3])
        track.center, track.scale, track.angle = np.asarray(center, np.float64), scale, angle

    def update(self, rows: Optional[np.ndarray], margin: float, dt: float) -> List[Track]:
        """Tracks to parse on this frame; ``rows`` None: no detection ran on it."""
        if rows is None:                       # carry every track (a frame between detections)
            for t in self.tracks:
                t.detected = False
            return list(self.tracks)
        rows = as_detections(rows)
        boxes = [r[:4].astype(np.float64) for r in rows]
        match = self._match(boxes)
        matched_tracks = set(match.values())
        alive = []
        for t, track in enumerate(self.tracks):
            if t in matched_tracks:
                continue
            track.missed += 1
            track.detected = False
            if track.missed <= self.max_missed:
                alive.append(track)
        for d, row in enumerate(rows):
            if d in match:
                track = self.tracks[match[d]]
                old = (track.row[:2] + track.row[2:4]) / 2.0
                new = (row[:2] + row[2:4]) / 2.0
                track.velocity = 0.5 * track.velocity + 0.5 * (new - old).astype(np.float64)
                track.missed, track.detected = 0, True
            else:
                track = Track(id=self.next_id, row=row, center=np.zeros(2), scale=0.0, angle=0.0)
                self.next_id += 1
            track.row = row.copy()
            self._geometry(track, row, margin, dt)
            alive.append(track)
        # the detector's order (largest box first, as for photos), then the carried tracks
        carried = alive[:len(alive) - len(rows)]
        self.tracks = alive[len(alive) - len(rows):] + carried
        return self.tracks if self.smooth else self.tracks[:len(rows)]


# ------------------------------------------------------------------------------------ results
@dataclass
class VideoFrame:
    """One frame's result.

    index: frame number from 0; image: the uint8 BGR frame (the last decoded one when this frame
    failed to decode); result: a one-image ``FaceParsingResult`` (faces largest first);
    tracks: track id of each face; detected: whether the detector found the face on this frame
    (False: carried from an earlier frame); decoded: False when the frame failed to decode (image
    and result repeat the previous frame's; before the first decoded frame: black, no face).
    """

    index: int
    image: np.ndarray
    result: object
    tracks: List[int]
    detected: List[bool]
    decoded: bool = True

    def summary(self) -> Dict[str, object]:
        """The frame's JSON line: ``{"frame": i, "decoded": bool, "faces": [...]}``, each face as
        ``FaceParsingResult.summary`` gives it plus its ``track`` id and ``detected``."""
        faces = self.result.summary(0)["faces"] if self.result is not None else []
        for face, track, det in zip(faces, self.tracks, self.detected):
            face["track"] = int(track)
            face["detected"] = bool(det)
        faces = [dict([("track", f.pop("track"))] + list(f.items())) for f in faces]
        return {"frame": int(self.index), "decoded": bool(self.decoded), "faces": faces}


def parse_video(parser, source: Union[str, os.PathLike, Iterable[Optional[np.ndarray]]], *,
                smooth: float = DEFAULT_SMOOTH, detect_every: int = 1, fps: Optional[float] = None,
                max_missed: Optional[int] = None, rgb: bool = False, threaded: bool = True,
                limit: Optional[int] = None, geometry_filter: Optional[Dict[str, float]] = None,
                probabilities: bool = False, return_logits: bool = False, batch: int = 1,
                parse_every: int = 1) -> Iterator[VideoFrame]:
    """Parse a clip frame by frame with ``parser`` (a ``FaceParser``); yields a
    :class:`VideoFrame` per frame (module docstring). ``FaceParser.video`` calls this.

    Args:
        source: a video file (read by :class:`VideoSource`; or an open one), or an iterable of frames (uint8 BGR
            arrays, RGB with ``rgb=True``; ``None`` = a frame that failed to decode).
        smooth: S in [0, 1): weight of the past in the maps' moving average; > 0 also smooths
            the crop geometry and carries missed faces; 0: exactly per-frame parsing.
        detect_every: run the detector on every N-th frame (the first always).
        fps: frames per second of an iterable (the filter's time step; default 25, a file's own).
        max_missed: detection frames a track survives without its face (default a fifth of a
            second). threaded: decode and detect the next frames in a reader thread.
        limit: a file's largest frame in pixels (``dml_csr.files.max_pixels``).
        geometry_filter: the one-euro filter's arguments (default :data:`GEOMETRY_FILTER`).
        return_logits, probabilities: as for photos (each face's maps on its region).
        batch: frames whose faces go through the network together (up to the parser's
            ``max_batch`` faces per forward pass; each track's average still goes frame by frame,
            so the results equal ``batch=1``'s): for a GPU; on the CPU one frame at a time is as
            fast (docs/inference.md).
        parse_every: run the network on a track's face on every N-th frame only (needs
            ``smooth`` > 0 and ``batch`` 1); in between, the face's averaged probabilities are
            carried, moved with the picture (:func:`crop_motion`); where the motion cannot be
            measured the network runs. For a CPU too slow for the frame rate (docs/inference.md).
    """
    smooth = float(smooth)
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    parse_every = int(parse_every)
    if parse_every < 1:
        raise ValueError(f"parse_every must be at least 1, got {parse_every}")
    if parse_every > 1 and (smooth == 0 or batch > 1):
        raise ValueError(f"parse_every={parse_every} needs smooth > 0 and batch 1 (got smooth "
                         f"{smooth}, batch {batch})")
    detect_every = int(detect_every)
    if detect_every < 1:
        raise ValueError(f"detect_every must be at least 1, got {detect_every}")
    if isinstance(source, (str, os.PathLike, VideoSource)):
        reader = source if isinstance(source, VideoSource) else VideoSource(source, limit)
        name, frames, rate = reader.path, iter(reader), reader.fps
    else:
        reader, name, frames, rate = None, "the frames", iter(source), DEFAULT_FPS
    rate = float(fps) if fps else rate
    if not rate > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_missed is None:
        max_missed = max(1, int(round(rate / 5.0 / detect_every)))
    detect = parser.detector is not None
    mode = parser.crop_mode(detect)            # the crops' geometry, as parse_faces makes them
    tracker = FaceTracker(smooth > 0, max_missed, geometry_filter=geometry_filter)

    def prepare(item):
        i, frame = item
        if frame is None:
            return i, None, None
        if rgb:
            frame = np.ascontiguousarray(frame[:, :, ::-1])
        rows = parser.faces(frame, detect)[0] if detect and i % detect_every == 0 else None
        return i, frame, rows

    checked = enumerate(_checked_frames(frames, name))
    whole = Track(id=0, row=as_detections([[0, 0, 1, 1]])[0], center=np.zeros(2), scale=0.0,
                  angle=0.0)                       # detect=False: the whole frame, one track
    state = {"previous": None, "blank": None}

    def run(pending):
        """Parse the decoded frames of ``pending`` in one ``parse_faces`` call (their faces in
        order, so each track's average goes frame by frame) and yield every frame in order."""
        decoded = [p for p in pending if p[1] is not None]
        if decoded:
            tracks = [t for p in decoded for t in p[2]]
            templates = []
            if smooth > 0:                       # each face's grey crop, to follow its motion
                for p in decoded:
                    grey = cv2.cvtColor(p[1], cv2.COLOR_BGR2GRAY)
                    templates += [crop_template(grey, sq, parser.crop_size, mode)
                                  for sq in p[3][1]]

            given = {}                           # faces carried without the network
            if parse_every > 1 and decoded[0][0] % parse_every:
                for idx, t in enumerate(tracks):
                    if t.probs is not None:
                        move = crop_motion(t.template, templates[idx])
                        if move is not None:
                            given[idx] = shift_maps(t.probs, *move)

            def adjust(indices, probs):
                out = []
                for k, idx in enumerate(indices):
                    t, p = tracks[idx], probs[k]
                    if idx in given:
                        pass
                    elif t.probs is not None and t.probs.shape == p.shape:
                        move = crop_motion(t.template, templates[idx])
                        if move is not None:         # the past, moved as the picture moved
                            p = p.mul(1.0 - smooth).add_(shift_maps(t.probs, *move),
                                                         alpha=smooth)
                    t.probs, t.template = p, templates[idx]
                    out.append(p)
                return torch.stack(out)
            res = parser.parse_faces([p[1] for p in decoded], [p[3] for p in decoded],
                                     detect=detect, return_logits=return_logits,
                                     probabilities=probabilities,
                                     adjust=adjust if smooth > 0 else None,
                                     fine_edges=smooth > 0, given=given)
            results = iter(range(len(decoded)))
        for i, frame, tracks, _, ids, found in pending:
            previous = state["previous"]
            if frame is None:                    # failed to decode: repeat the previous frame
                if previous is None:
                    if state["blank"] is None and reader is not None:
                        state["blank"] = np.zeros((reader.height, reader.width, 3), np.uint8)
                    yield VideoFrame(i, state["blank"], None, [], [], decoded=False)
                else:
                    yield VideoFrame(i, previous.image, previous.result, previous.tracks,
                                     previous.detected, decoded=False)
                continue
            one = res if len(decoded) == 1 else res.image(next(results))
            state["previous"] = VideoFrame(i, frame, one, ids, found)
            yield state["previous"]

    pending = []
    try:
        for i, frame, rows in prefetch(checked, prepare, depth=2 + batch, threaded=threaded):
            if frame is None:
                pending.append((i, None, [], None, [], []))
            else:
                if detect:
                    tracks = tracker.update(rows, parser.margin, 1.0 / rate)
                    faces = (np.stack([t.row for t in tracks]) if tracks else as_detections([]),
                             [t.square for t in tracks])
                else:
                    tracks, faces = [whole], parser.faces(frame, False)
                pending.append((i, frame, list(tracks), faces, [t.id for t in tracks],
                                [t.detected for t in tracks]))
            if sum(p[1] is not None for p in pending) >= batch:
                yield from run(pending)
                pending = []
        yield from run(pending)
        if state["previous"] is None and reader is not None:
            raise VideoError(f"{name}: no frame could be decoded")
    finally:
        if reader is not None:
            reader.close()
