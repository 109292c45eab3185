"""The runtime: which engine runs a parsing network, and the network made ready for it.

    >>> rt = runtime_from_checkpoint("helen_best.pth")        # CPU, float32: onnxruntime
    >>> rt.backend_name, rt.crop_size, rt.channel_order, rt.schema.name
    >>> rt.model(crops, size).parsing                          # the models' contract
    >>> parser = FaceParser.from_runtime(rt, detector="auto")  # photos (parser.py)

A :class:`Runtime` is the callable network in the models' contract (``dml_csr/predict.py``:
``(N, 3, H, W) normalised crops, size -> logits``), on its device and in eval mode, with the input
facts of its weights (label schema, crop size, channel order, crop geometry, normalisation,
output scale) and the engine that runs it (``backend_name``: ``"torch"`` or ``"onnx"``). The photo
parser (``parser.py``, ``FaceParser.from_runtime``) and any other pipeline take one; the choice
below is made here once for all of them.

The rules (docs/inference.md):

- ``precision``: ``"fp32"``, ``"bf16"`` (the torch module, ``fold.py``) or ``"int8"`` (CPU only: an
  int8 ONNX file calibrated once on the user's images and cached, ``quantize.py``, run by
  onnxruntime); ``calibrate`` goes with ``"int8"`` only.
- ``backend="auto"`` (default): float32 on the CPU with ``optimize=True`` runs as ``"onnx"``
  unless multi-scale test-time augmentation asks for other crop sizes than the exported file
  takes; everything else (bf16, CUDA, ``optimize=False``, multi-scale TTA) as ``"torch"``.
- ``"onnx"``: the inference form (norms folded) exported once to a float32 ONNX file in the
  checked cache (``cache.py``) and run by onnxruntime on the CPU (float32 only). The loaded
  module is moved to the ``meta`` device once the file is made: onnxruntime holds the weights
  (about 260 MB less peak memory for DML-CSR). Where this torch cannot export the model (torch
  2.6 and the PSP context at small crops, docs/versions.md), ``"auto"`` falls back to
  ``"torch"`` with a warning; ``"onnx"`` asked for raises the export error.
- ``"torch"``: the PyTorch module on ``device``, optimised in place by
  :func:`~dml_csr.deploy.fold.optimize_for_inference` when ``optimize`` (or a lower precision).
- An ONNX file (:func:`runtime_from_onnx`, or a ``.onnx`` path to
  :func:`runtime_from_checkpoint`) carries its facts in its metadata; one exported with a fixed
  crop size refuses multi-scale TTA (``scales`` other than 1).

Warnings point at the caller's own code (the first frame outside ``dml_csr/deploy``).
"""
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..data.schemas import Schema
from ..models.checkpoint import ModelSpec, load_inference_model
from .cache import float32_model
from .fold import PRECISIONS, optimize_for_inference
from .onnx import OnnxExportError, OnnxParsingModel
from .pretrained import load_pretrained

__all__ = ["Runtime", "runtime_from_model", "runtime_from_checkpoint", "runtime_from_pretrained",
           "runtime_from_onnx", "PARSER_PRECISIONS", "BACKENDS"]

# what a runtime runs: the torch module's precisions (fold.py) and int8 through onnxruntime
PARSER_PRECISIONS = PRECISIONS + ("int8",)
BACKENDS = ("auto", "torch", "onnx")

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Runtime:
    """A network ready to run and the input facts of its weights (module docstring).

    Attributes:
        model: the network in the models' contract, on its device and in eval mode (the
            optimised torch module or an ``OnnxParsingModel``).
        backend_name: ``"torch"`` or ``"onnx"``: what runs ``model``.
        schema: label facts of the weights. crop_size: (h, w) network input.
        channel_order: ``bgr`` | ``rgb`` of the weights. center_mode: crop geometry of a
            whole-photo crop (``crop_params``). mean, std: the input normalisation.
        output_scale: the logits' grid is ``round(output_scale x crop_size)``.
    """

    model: Union[nn.Module, Callable]
    backend_name: str
    schema: Schema
    crop_size: Tuple[int, int]
    channel_order: str
    center_mode: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    output_scale: float

    @classmethod
    def of(cls, model: Union[nn.Module, Callable], spec: ModelSpec,
           backend_name: str) -> "Runtime":
        """``model`` run by ``backend_name`` with the input facts of ``spec``."""
        return cls(model, backend_name, schema=spec.schema(), crop_size=tuple(spec.crop_size),
                   channel_order=spec.channel_order, center_mode=spec.center_mode,
                   mean=tuple(spec.mean), std=tuple(spec.std), output_scale=spec.output_scale)

    def input_facts(self) -> Dict[str, Any]:
        """The input facts as keyword arguments (``FaceParser``'s)."""
        return dict(schema=self.schema, crop_size=self.crop_size,
                    channel_order=self.channel_order, center_mode=self.center_mode,
                    mean=self.mean, std=self.std, output_scale=self.output_scale)


def runtime_from_checkpoint(path: PathLike, dataset: Optional[str] = None,
                            device: Union[str, torch.device] = "cpu",
                            crop_size: Optional[Sequence[int]] = None,
                            channel_order: Optional[str] = None, optimize: bool = True,
                            backend: str = "auto", output_size: Optional[Sequence[int]] = None,
                            precision: str = "fp32", calibrate: Optional[PathLike] = None,
                            calibrate_count: int = 32, trust_checkpoint: bool = False,
                            scales: Sequence[float] = (1.0,),
                            fold_bn: Optional[bool] = None) -> Runtime:
    """The runtime of a local checkpoint (``load_inference_model``: ours, self-describing, or
    the release's bare state_dict; ``dataset``, ``crop_size``, ``channel_order`` override the
    file's facts) chosen by :func:`runtime_from_model`'s rules. A ``.onnx`` path goes to
    :func:`runtime_from_onnx` (the other arguments but ``scales`` unused).
    ``trust_checkpoint``: unpickle a file that ``torch.load(weights_only=True)`` refuses (it
    runs any code the file holds). ``fold_bn``: ``FaceParser``'s former name of ``optimize``
    (deprecated, warns)."""
    if str(path).endswith(".onnx"):
        return runtime_from_onnx(path, scales=scales)
    _check_backend(backend)
    model, spec = load_inference_model(path, dataset=dataset, trust_checkpoint=trust_checkpoint)
    return runtime_from_model(model, spec.with_input(crop_size, channel_order), device=device,
                              optimize=optimize, backend=backend, output_size=output_size,
                              precision=precision, calibrate=calibrate,
                              calibrate_count=calibrate_count, scales=scales, fold_bn=fold_bn)


def runtime_from_pretrained(name: str, weights_dir: Optional[PathLike] = None,
                            trust_checkpoint: bool = False, **kwargs) -> Runtime:
    """The runtime of one of the authors' checkpoints by name (``pretrained.load_pretrained``:
    read from ``weights_dir``, nothing downloaded). ``kwargs``: as :func:`runtime_from_model`."""
    model, spec = load_pretrained(name, weights_dir, trust_checkpoint)
    return runtime_from_model(model, spec, **kwargs)


def runtime_from_model(model: nn.Module, spec: ModelSpec, device: Union[str, torch.device] = "cpu",
                       optimize: bool = True, backend: str = "auto",
                       output_size: Optional[Sequence[int]] = None, precision: str = "fp32",
                       calibrate: Optional[PathLike] = None, calibrate_count: int = 32,
                       scales: Sequence[float] = (1.0,),
                       fold_bn: Optional[bool] = None) -> Runtime:
    """The runtime of a loaded float32 ``model`` with the facts ``spec`` (module docstring's rules).
    The model is ours alone afterwards: it is optimised in place, or moved to the ``meta`` device
    once an ONNX file holds its weights.

    ``output_size``: the exported files' logits size (None: the model's own). ``scales``: the
    test-time augmentation's resize factors the runtime must take (other than 1: not a
    fixed-size ONNX file). ``calibrate`` / ``calibrate_count``: the int8 file's calibration images
    (a data root or an image folder), needed the first time only (``quantize.int8_model``).
    """
    if fold_bn is not None:
        _warn("FaceParser's fold_bn= is now optimize= (it does more than fold the norms); "
              "fold_bn will be removed", DeprecationWarning)
        optimize = fold_bn
    _check_backend(backend)
    if precision not in PARSER_PRECISIONS:
        raise ValueError(f"precision must be one of {PARSER_PRECISIONS}, got {precision!r}")
    if precision != "int8" and calibrate is not None:
        raise ValueError(f"calibrate={calibrate!r} goes with precision='int8'")
    if precision == "int8":
        if torch.device(device).type != "cpu":
            raise ValueError(f"precision 'int8' runs on the CPU (onnxruntime), not {device}")
        from .quantize import int8_model
        return runtime_from_onnx(int8_model(model, spec, calibrate, calibrate_count, output_size),
                                 scales=scales)
    device = torch.device(device)
    auto = backend == "auto"
    if auto:                   # an exported file takes one crop size: no multi-scale TTA
        fast = device.type == "cpu" and precision == "fp32" and optimize
        backend = "onnx" if fast and not _other_crop_sizes(scales) else "torch"
    if backend == "onnx" and precision != "fp32":
        raise ValueError(f"precision {precision!r} runs on the torch backend; the ONNX "
                         f"backend is float32 or int8")
    if backend == "onnx":
        if device.type != "cpu":
            raise ValueError(f"the ONNX backend runs on the CPU, not {device}")
        try:
            path = float32_model(model, spec, output_size)
        except OnnxExportError as exc:
            if not auto:
                raise
            # e.g. torch 2.6 and the PSP context at small crops (docs/versions.md)
            _warn(f"this torch cannot export the model to ONNX, so the parser runs it in "
                  f"PyTorch (backend 'auto'): {str(exc)[:300]}")
            path = None
        if path is not None:
            # the loaded module is ours alone and onnxruntime holds the weights now: free its
            # tensors before the session loads (about 260 MB less peak for DML-CSR)
            model.to("meta")
            return runtime_from_onnx(path, scales=scales)
    model = model.to(device).eval()
    if optimize or precision != "fp32":
        # in place: the loaded model is ours alone, and a copy would double the load's peak
        model = optimize_for_inference(model, fold=optimize, channels_last=device.type == "cpu",
                                       inplace=True, precision=precision)
    return Runtime.of(model, spec, "torch")


def runtime_from_onnx(path: PathLike, threads: int = 0, providers: Optional[Sequence[str]] = None,
                      scales: Sequence[float] = (1.0,)) -> Runtime:
    """The runtime of an ONNX file written by ``export_onnx`` (tools/export_onnx.py), run by
    onnxruntime (``threads``: 0 = its default; ``providers``: default the CPU's); the facts come
    from its metadata. ``scales`` other than 1 need a file exported without a fixed crop size."""
    model = OnnxParsingModel(path, threads=threads, providers=providers)
    fixed = model.session.fixed_hw
    if fixed is not None and _other_crop_sizes(scales):
        raise ValueError(f"multi-scale TTA (scales={tuple(scales)}) needs other crop sizes; "
                         f"{path} takes {fixed[0]}x{fixed[1]} crops only: run the "
                         f"checkpoint with backend='torch'")
    return Runtime.of(model, model.spec, "onnx")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _other_crop_sizes(scales: Sequence[float]) -> bool:
    """Whether the TTA ``scales`` run the model on other crop sizes than its own (an exported
    file with a fixed crop size cannot)."""
    return any(float(s) != 1.0 for s in scales)


def _warn(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` pointed at the first frame outside ``dml_csr/deploy``: the user's call,
    however many of this package's builders lie between."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
