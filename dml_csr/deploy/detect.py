"""Face detection for in-the-wild photos, and the square crop region around each face.

The default detector is OpenCV's bundled frontal-face Haar cascade
(``cv2.data.haarcascades/haarcascade_frontalface_default.xml``, shipped in opencv-python-headless):
offline, no extra weights, no extra dependency. It finds upright, roughly frontal faces; profiles
and strongly rotated faces are missed (use ``detect=False`` on aligned crops, or pass your own
detector: any callable ``image_bgr (H, W, 3) uint8 -> (F, 4 or 5) array of x1, y1, x2, y2[, score]``).
"""
import os
from typing import Tuple

import cv2
import numpy as np

__all__ = ["HaarFaceDetector", "face_region", "DEFAULT_MARGIN"]

# The square crop side is (1 + 2 * margin) times the longer side of the detector box. The Haar box
# spans roughly brows to chin; the training crops (Helen, LaPa, CelebAMask-HQ) show the whole head
# with hair and some background, about twice that box.
DEFAULT_MARGIN = 0.5


class HaarFaceDetector:
    """OpenCV Haar cascade face detector.

    Args:
        cascade: file name inside ``cv2.data.haarcascades`` or a path to a cascade XML.
        scale_factor, min_neighbors: ``detectMultiScale`` settings (larger min_neighbors: fewer,
            surer detections).
        min_size_ratio: smallest face side as a fraction of the shorter image side (and >= 20 px).

    Call: ``detector(image_bgr)`` -> float32 (F, 5) boxes ``x1, y1, x2, y2, score`` sorted by
    decreasing area; ``score`` is the cascade's level weight (a confidence, not a probability).
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
            return np.zeros((0, 5), np.float32)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        scores = np.asarray(weights, np.float32).reshape(-1)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:], scores[:, None]], axis=1)
        order = np.argsort(-(rects[:, 2] * rects[:, 3]), kind="stable")
        return boxes[order]


def face_region(box, margin: float = DEFAULT_MARGIN) -> Tuple[np.ndarray, float]:
    """Square crop region of a face box: ``(center (x, y), scale)`` for ``get_affine_matrix``.

    ``center`` is the box centre in the pixel-centre convention of ``data/transforms.py`` (a box
    ``x1..x2`` covers pixels ``x1 .. x2 - 1``); ``scale`` (the square side) is
    ``(1 + 2 * margin) * max(box width, box height)``. Regions may extend past the photo: the crop
    pads with black there, as training crops do.
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    center = np.array([(x1 + x2 - 1) / 2.0, (y1 + y2 - 1) / 2.0])
    scale = (1.0 + 2.0 * margin) * max(x2 - x1, y2 - y1, 1.0)
    return center, float(scale)
