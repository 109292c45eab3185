"""The parser API: one line from a local weights path to face parsing of whole photographs.

    >>> parser = dml_csr.FaceParser.from_checkpoint("helen_best.pth")          # ours: self-describing
    >>> parser = dml_csr.FaceParser.from_checkpoint("DML_CSR_helen.pth", dataset="helen")  # release
    >>> res = parser(["a.jpg", image_bgr])       # paths / BGR arrays (rgb=True for RGB arrays)
    >>> res.image_ids, res.boxes, res.label_maps[0].shape, res.combined[1].shape

Pipeline per photo (docs/inference.md):

1. faces: the detector's boxes (default OpenCV's Haar cascade, ``dml_csr/deploy/detect.py``), each grown
   by ``margin`` into a square region; ``detect=False``: the whole photo is one face (aligned crops,
   the benchmark protocol: longer side fitted, shorter padded);
2. crop: the training/evaluation affine crop (centre, scale, rotation 0 -> ``get_affine_matrix``)
   to ``crop_size``, normalised with the checkpoint's channel order;
3. one forward pass over all faces of all photos (chunks of ``max_batch``); DML-CSR's 1/4-size
   logits upsampled bilinearly (align_corners=True) to the crop, FP-LIIF asked for the crop size;
4. argmax in crop space, warped back onto the FULL photo with the inverse affine (nearest, border
   background), as the evaluation protocol; logits / probabilities warped back bilinearly;
5. the combined map of a photo (overlap rule): a pixel is background unless some face claims a
   foreground class there; among the faces claiming foreground the one with the higher max-softmax
   probability at that pixel wins (ties: the larger face region).

Results are flat over faces (facer-style): ``image_ids[i]`` is the photo of face ``i``.
"""
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.schemas import Schema
from ..data.transforms import MEAN, STD, crop_params, normalize_image, warp_back, warp_image
from ..models.checkpoint import ModelSpec, load_inference_model
from .detect import DEFAULT_MARGIN, HaarFaceDetector, face_region
from .onnx import ONNX_INPUT, ONNX_OUTPUT, export_onnx, read_onnx_metadata

__all__ = ["FaceParser", "FaceParsingResult", "colorize", "draw_overlay", "read_image",
           "NoFaceWarning"]

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, np.ndarray]
Detector = Callable[[np.ndarray], np.ndarray]


class NoFaceWarning(UserWarning):
    """A photo in which the detector found no face (its result is empty)."""


@dataclass
class FaceParsingResult:
    """Parsing of a list of photos, flat over all detected faces.

    Per face ``i`` (F faces in all):
        image_ids: int64 (F,) index of the photo the face belongs to.
        boxes: float32 (F, 4) detector box x1, y1, x2, y2 in photo pixels (whole photo when
            ``detect=False``); scores: float32 (F,) detector score (1 for whole-photo faces).
        centers: float64 (F, 2), scales: float64 (F,): the square crop region (rotation 0).
        label_maps: F arrays uint8 (h, w) of the face's photo: class ids, background outside the
            crop region.
        logits: F arrays float32 (K, h, w) (probabilities with ``probabilities=True``) on the photo,
            or None when not requested.
    Per photo ``j``:
        image_sizes: (h, w); no_face: True when the detector found nothing (its maps are all
        background and it has no faces); combined: uint8 (h, w) label map of all its faces
        (overlap rule in the module docstring).
    Label facts: dataset, class_names, tokens, palette (RGB per id).
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    label_maps: List[np.ndarray]
    logits: Optional[List[np.ndarray]]
    combined: List[np.ndarray]
    image_sizes: List[Tuple[int, int]]
    no_face: List[bool]
    dataset: str
    class_names: Tuple[str, ...]
    tokens: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]
    probabilities: bool = False

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)

    def faces_of(self, image_id: int) -> List[int]:
        """Indices of the faces of photo ``image_id``."""
        return [i for i, j in enumerate(self.image_ids.tolist()) if j == image_id]


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """uint8 (H, W, 3) BGR image of ``path``; ValueError naming the file when it cannot be read."""
    data = np.fromfile(str(path), dtype=np.uint8) if os.path.isfile(path) else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise ValueError(f"cannot read image {path} (missing, empty or not an image)")
    return image


def _as_bgr(image: ImageInput, rgb: bool) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.shape[2] == 1:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    a = a[:, :, :3]
    return np.ascontiguousarray(a[:, :, ::-1] if rgb else a)


def colorize(label_map: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 (H, W) ids -> uint8 (H, W, 3) BGR colours of ``palette`` (RGB per id)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = np.asarray(palette, np.uint8)[:, ::-1]
    return lut[label_map]


def draw_overlay(image_bgr: np.ndarray, label_map: np.ndarray, class_names: Sequence[str],
                 palette: Sequence[Sequence[int]], alpha: float = 0.5,
                 boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """Photo blended with the coloured label map, face boxes, and a legend (name + colour of every
    class present) in a panel to the right. Returns uint8 BGR (H, W + legend width, 3)."""
    colour = colorize(label_map, palette)
    fg = (label_map > 0)[:, :, None]
    out = np.where(fg, (image_bgr * (1 - alpha) + colour * alpha).astype(np.uint8), image_bgr)
    for b in (boxes if boxes is not None else []):
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]) - 1, int(b[3]) - 1), (0, 255, 0), 1)
    h = out.shape[0]
    present = [int(c) for c in np.unique(label_map)] or [0]
    row = max(14, min(28, h // max(len(class_names), 1)))
    legend = np.full((max(h, row * len(present) + 8), 170, 3), 255, np.uint8)
    for k, c in enumerate(present):
        y = 4 + k * row
        bgr = tuple(int(v) for v in palette[c][::-1])
        cv2.rectangle(legend, (4, y), (4 + row - 4, y + row - 4), bgr, -1)
        cv2.rectangle(legend, (4, y), (4 + row - 4, y + row - 4), (0, 0, 0), 1)
        cv2.putText(legend, class_names[c], (row + 6, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if legend.shape[0] > h:
        out = cv2.copyMakeBorder(out, 0, legend.shape[0] - h, 0, 0, cv2.BORDER_CONSTANT, value=0)
    return np.concatenate([out, legend[:out.shape[0]]], axis=1)


# ------------------------------------------------------------------------------------ backends
class _TorchBackend:
    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device

    def __call__(self, batch: torch.Tensor, crop_size: Tuple[int, int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch.to(self.device), size=crop_size).parsing.float().cpu()


class _OnnxBackend:
    def __init__(self, path: str, providers: Optional[Sequence[str]] = None, threads: int = 0):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_hw = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None

    def __call__(self, batch: torch.Tensor, crop_size: Tuple[int, int]) -> torch.Tensor:
        x = batch.numpy().astype(np.float32, copy=False)
        if self.fixed_hw is not None and tuple(x.shape[2:]) != self.fixed_hw:
            raise ValueError(f"the ONNX model takes {self.fixed_hw} crops, got {tuple(x.shape[2:])}")
        step = self.fixed_batch or len(x)
        outs = []
        for s in range(0, len(x), step):
            chunk = x[s:s + step]
            n = len(chunk)
            if self.fixed_batch and n < step:  # pad a fixed-batch model's last chunk
                chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: chunk})[0][:n])
        return torch.from_numpy(np.concatenate(outs))


# ------------------------------------------------------------------------------------- parser
class FaceParser:
    """Face parser for whole photographs (module docstring). Build it with :meth:`from_checkpoint`
    or :meth:`from_onnx`; call it on images.

    Args:
        backend: callable ``(N, 3, H, W) normalised crops, crop_size -> (N, K, h, w) logits``.
        schema: label facts of the weights.
        crop_size: (h, w) network input. channel_order: ``bgr`` | ``rgb`` of the weights.
        mean, std: the input normalisation of the weights. output_scale: the logits' grid is
            ``round(output_scale x crop_size)`` (FP-LIIF decodes there; others are upsampled).
        detector: ``"opencv"`` (Haar cascade), None (no detection: whole photo = one face) or a
            callable ``image_bgr -> (F, 4|5) boxes``.
        margin: square region side = (1 + 2 * margin) * longer box side.
        max_batch: faces per forward pass. center_mode: crop geometry of the whole-photo crop
            (``crop_params``; detected faces use ``face_region``).
    """

    def __init__(self, backend: Callable, schema: Schema, crop_size: Tuple[int, int] = (473, 473),
                 channel_order: str = "bgr", detector: Union[str, Detector, None] = "opencv",
                 margin: float = DEFAULT_MARGIN, max_batch: int = 8, center_mode: str = "exact",
                 backend_name: str = "torch", mean: Sequence[float] = MEAN,
                 std: Sequence[float] = STD, output_scale: float = 1.0):
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.backend = backend
        self.backend_name = backend_name
        self.schema = schema
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if not output_scale > 0:
            raise ValueError(f"output_scale must be positive, got {output_scale}")
        # the logits' grid over the crop: FP-LIIF decodes there, others are upsampled to it
        self.output_size = tuple(max(1, int(round(v * output_scale))) for v in self.crop_size)
        self.channel_order = channel_order
        self.detector = HaarFaceDetector() if detector == "opencv" else detector
        if self.detector is not None and not callable(self.detector):
            raise ValueError(f"detector must be 'opencv', None or a callable, got {detector!r}")
        self.margin = float(margin)
        self.max_batch = max(1, int(max_batch))
        self.center_mode = center_mode
        self.mean, self.std = tuple(mean), tuple(std)

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], dataset: Optional[str] = None,
                        device: Union[str, torch.device] = "cpu",
                        detector: Union[str, Detector, None] = "opencv",
                        crop_size: Optional[Sequence[int]] = None,
                        channel_order: Optional[str] = None, margin: float = DEFAULT_MARGIN,
                        fold_bn: bool = True, backend: str = "torch", max_batch: int = 8,
                        output_size: Optional[Sequence[int]] = None) -> "FaceParser":
        """Parser from a local checkpoint: ours (self-describing: model, dataset, crop size and
        channel order come from the file) or the release's bare state_dict (DML-CSR, crop 473 x 473,
        bgr; the data set from its class count when that decides it, 19: celebamask_hq; 11-class
        files need ``dataset="helen"`` or ``"lapa"``). Explicit arguments override the file's
        values; a ``dataset`` with another class count than the weights is an error.

        ``fold_bn``: run :func:`dml_csr.deploy.fold.optimize_for_inference` (same outputs, faster).
        ``backend="onnx"``: export the inference form to a temporary ONNX file (dynamic batch) and
        run it with onnxruntime; a ``.onnx`` path is handed to :meth:`from_onnx`.
        """
        if str(path).endswith(".onnx"):
            return cls.from_onnx(path, detector=detector, margin=margin, max_batch=max_batch)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        model, spec = load_inference_model(path, dataset=dataset)
        spec = spec.with_input(crop_size, channel_order)
        kw = dict(detector=detector, margin=margin, max_batch=max_batch)
        if backend == "onnx":
            import tempfile
            tmp = os.path.join(tempfile.mkdtemp(prefix="dml_csr_onnx_"), "model.onnx")
            export_onnx(model, tmp, spec, dynamic_batch=True, output_size=output_size)
            return cls.from_onnx(tmp, **kw)
        device = torch.device(device)
        model = model.to(device).eval()
        if fold_bn:
            from .fold import optimize_for_inference
            model = optimize_for_inference(model, channels_last=device.type == "cpu")
        return cls(_TorchBackend(model, device), backend_name="torch", **_input_facts(spec), **kw)

    @classmethod
    def from_onnx(cls, path: Union[str, os.PathLike], detector: Union[str, Detector, None] = "opencv",
                  margin: float = DEFAULT_MARGIN, max_batch: int = 8,
                  providers: Optional[Sequence[str]] = None, threads: int = 0) -> "FaceParser":
        """Parser running an ONNX file written by :func:`export_onnx` (tools/export_onnx.py) with
        onnxruntime; label names, dataset, channel order and crop size come from its metadata."""
        spec = read_onnx_metadata(path)
        return cls(_OnnxBackend(path, providers, threads), detector=detector, margin=margin,
                   max_batch=max_batch, backend_name="onnx", **_input_facts(spec))

    # ------------------------------------------------------------------------------- parsing
    def regions(self, image_bgr: np.ndarray, detect: bool = True):
        """Face boxes (F, 5) and square regions [(center, scale)] of one photo."""
        h, w = image_bgr.shape[:2]
        if not detect or self.detector is None:
            center, scale = crop_params(h, w, self.center_mode)
            return np.array([[0, 0, w, h, 1.0]], np.float32), [(center, scale)]
        boxes = np.asarray(self.detector(image_bgr), np.float32)
        boxes = boxes.reshape(0, 5) if boxes.size == 0 else boxes.reshape(len(boxes), -1)
        if boxes.shape[1] == 4:
            boxes = np.concatenate([boxes, np.ones((len(boxes), 1), np.float32)], axis=1)
        return boxes[:, :5], [face_region(b, self.margin) for b in boxes]

    def _logits(self, crops: List[torch.Tensor]) -> torch.Tensor:
        """(F, 3, H, W) crops -> (F, K, h, w) logits on ``output_size`` over the crop region,
        ``max_batch`` at a time."""
        outs = []
        for s in range(0, len(crops), self.max_batch):
            out = self.backend(torch.stack(crops[s:s + self.max_batch]), self.output_size)
            if tuple(out.shape[-2:]) != self.output_size:
                out = F.interpolate(out, size=self.output_size, mode="bilinear", align_corners=True)
            outs.append(out)
        return torch.cat(outs)

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]], *, rgb: bool = False,
                 detect: bool = True, return_logits: bool = True,
                 probabilities: bool = False) -> FaceParsingResult:
        """Parse one photo or a list of photos (paths, or uint8 arrays: BGR, RGB with ``rgb=True``).

        Args:
            detect: find faces with the detector; False: the whole photo is one face.
            return_logits: also return per-face (K, h, w) logits on the photo (memory: K floats
                per photo pixel per face).
            probabilities: return softmax probabilities instead of logits.
        """
        single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray)
                                                            and images.ndim in (2, 3)
                                                            and images.dtype != object)
        photos = [_as_bgr(im, rgb) for im in ([images] if single else list(images))]
        ids, boxes, regions = [], [], []
        # the checkpoint's crop geometry for the whole-photo crop; detected faces: face_region's
        mode = self.center_mode if not detect or self.detector is None else "exact"
        crops: List[torch.Tensor] = []
        no_face = []
        for j, photo in enumerate(photos):
            b, regs = self.regions(photo, detect)
            no_face.append(len(regs) == 0)
            if not regs:
                msg = f"no face found in image {j} ({photo.shape[1]}x{photo.shape[0]})"
                logger.warning(msg)
                warnings.warn(msg, NoFaceWarning, stacklevel=2)
            for box, (center, scale) in zip(b, regs):
                ids.append(j)
                boxes.append(box)
                regions.append((center, scale))
                crop = warp_image(photo, center, scale, 0.0, self.crop_size, mode)
                crops.append(normalize_image(crop, self.channel_order, self.mean, self.std))
        logits = self._logits(crops) if crops else torch.zeros(0, self.schema.num_classes,
                                                                *self.output_size)
        if logits.shape[1] != self.schema.num_classes:
            raise RuntimeError(f"the model predicts {logits.shape[1]} classes, the {self.schema.name} "
                               f"schema has {self.schema.num_classes}")
        probs = torch.softmax(logits, dim=1)
        conf, labels = probs.max(dim=1)                                   # (F, H, W)
        label_maps, confs, full = [], [], [] if return_logits else None
        for i, (center, scale) in enumerate(regions):
            h, w = photos[ids[i]].shape[:2]
            label_maps.append(warp_back(labels[i].numpy().astype(np.uint8), center, scale, 0.0,
                                        (h, w), center_mode=mode))
            confs.append(warp_back(conf[i].numpy(), center, scale, 0.0, (h, w),
                                   interpolation="nearest", center_mode=mode))
            if return_logits:
                src = probs[i] if probabilities else logits[i]
                full.append(warp_back(src.numpy(), center, scale, 0.0, (h, w), center_mode=mode))
        combined = [self._combine([label_maps[i] for i in range(len(ids)) if ids[i] == j],
                                  [confs[i] for i in range(len(ids)) if ids[i] == j],
                                  [regions[i][1] for i in range(len(ids)) if ids[i] == j],
                                  photo.shape[:2])
                    for j, photo in enumerate(photos)]
        s = self.schema
        return FaceParsingResult(
            image_ids=np.asarray(ids, np.int64),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 5)[:, :4],
            scores=np.asarray(boxes, np.float32).reshape(-1, 5)[:, 4],
            centers=np.asarray([r[0] for r in regions], np.float64).reshape(-1, 2),
            scales=np.asarray([r[1] for r in regions], np.float64),
            label_maps=label_maps, logits=full, combined=combined,
            image_sizes=[tuple(p.shape[:2]) for p in photos], no_face=no_face, dataset=s.name,
            class_names=s.class_names, tokens=s.tokens, palette=s.palette,
            probabilities=probabilities)

    @staticmethod
    def _combine(labels: List[np.ndarray], confs: List[np.ndarray], scales: List[float],
                 size: Tuple[int, int]) -> np.ndarray:
        """Overlap rule: foreground beats background; among foreground claims the higher max-prob
        wins; ties go to the larger face region (faces are visited largest first, argmax keeps the
        first maximum)."""
        if not labels:
            return np.zeros(size, np.uint8)
        order = np.argsort(-np.asarray(scales), kind="stable")
        lab = np.stack([labels[k] for k in order])                         # (F, h, w)
        claim = np.where(lab > 0, np.stack([confs[k] for k in order]), -1.0)
        winner = claim.argmax(axis=0)
        out = np.take_along_axis(lab, winner[None], axis=0)[0]
        return out.astype(np.uint8)


# ----------------------------------------------------------------------------- model loading
def _input_facts(spec: ModelSpec) -> Dict[str, Any]:
    """FaceParser's arguments that come from a checkpoint or ONNX file."""
    return dict(schema=spec.schema(), crop_size=spec.crop_size, channel_order=spec.channel_order,
                center_mode=spec.center_mode, mean=spec.mean, std=spec.std,
                output_scale=spec.output_scale)
