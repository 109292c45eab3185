"""Deployment: from trained weights to face parsing of whole photographs, and faster inference.

- ``parser.py``: the parser API, :class:`FaceParser` (``dml_csr.FaceParser``) and its
  :class:`FaceParsingResult`, overlays (:func:`colorize`, :func:`draw_overlay`), image reading,
  the torch and onnxruntime backends (docs/inference.md);
- ``detect.py``: face detection (OpenCV's Haar cascade) and the square crop region of a face;
- ``onnx.py``: :func:`export_onnx` and :func:`read_onnx_metadata` (the file's metadata carries the
  model's facts);
- ``fold.py``: :func:`optimize_for_inference` (norms folded into convolutions, channels_last,
  in-place activations, Winograd), :func:`set_inference_threads`;
- ``winograd.py``: :class:`WinogradConv2d`, the F(m x m, 3 x 3) convolution ``fold.py`` uses.
"""
from .detect import DEFAULT_MARGIN, HaarFaceDetector, face_region
from .fold import fold_norms, optimize_for_inference, set_inference_threads
from .onnx import export_onnx, read_onnx_metadata
from .parser import FaceParser, FaceParsingResult, NoFaceWarning, colorize, draw_overlay, read_image
from .winograd import WinogradConv2d

__all__ = ["FaceParser", "FaceParsingResult", "NoFaceWarning", "colorize", "draw_overlay",
           "read_image", "HaarFaceDetector", "face_region", "DEFAULT_MARGIN", "export_onnx",
           "read_onnx_metadata", "optimize_for_inference", "fold_norms", "set_inference_threads",
           "WinogradConv2d"]
