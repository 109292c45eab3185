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
   ``p = (1 - S) * p_frame + S * p_previous`` (``smooth`` S in [0, 1)); the labels are their argmax
   and overlapping faces are combined by the photo overlap rule.

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

from ..files import max_pixels
from .detect import as_detections, face_region
from .pipeline import prefetch

__all__ = ["VIDEO_EXTS", "VideoError", "VideoSource", "OneEuroFilter", "FaceTracker",
           "VideoFrame", "parse_video", "DEFAULT_SMOOTH", "GEOMETRY_FILTER", "is_video"]

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_SMOOTH = 0.5
# one-euro filter of the crop geometry: cut-off (Hz) at rest, its rise per face size per second
GEOMETRY_FILTER = {"min_cutoff": 1.0, "beta": 5.0, "d_cutoff": 1.0}
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
                probabilities: bool = False, return_logits: bool = False, batch: int = 1
                ) -> Iterator[VideoFrame]:
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
    """
    smooth = float(smooth)
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
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

            def adjust(indices, probs):
                out = []
                for k, idx in enumerate(indices):
                    t, p = tracks[idx], probs[k]
                    if t.probs is not None and t.probs.shape == p.shape:
                        p = p.mul(1.0 - smooth).add_(t.probs, alpha=smooth)
                    t.probs = p
                    out.append(p)
                return torch.stack(out)
            res = parser.parse_faces([p[1] for p in decoded], [p[3] for p in decoded],
                                     detect=detect, return_logits=return_logits,
                                     probabilities=probabilities,
                                     adjust=adjust if smooth > 0 else None)
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
