"""int8 inference through onnxruntime: post-training static quantization of an exported ONNX file.

The float32 inference form (``export_onnx``: norms folded) is quantized by onnxruntime's static
QDQ quantizer: per-channel int8 weights, uint8 activations whose ranges are calibrated (min/max)
on the crops of N images the user names (a prepared data root, whose ``train_list.txt`` is
sampled evenly, or a folder of images). A few layers stay float32 (``FLOAT_LAYERS``: the ones
whose rounding moved the labels most, measured layer by layer; docs/inference.md). The result is
a new ONNX file with the float file's metadata (label facts, crop size, channel order) plus
``dml_csr.precision = "int8"`` and ``dml_csr.calibration``.

Two ways to the file, both calibrating once:
- ``tools/export_onnx.py --int8 --calibrate DIR``: the user names the file, run by
  ``FaceParser.from_onnx`` / ``tools/infer.py --onnx``;
- :func:`int8_model` (``FaceParser.from_checkpoint(..., precision="int8", calibrate=DIR)``,
  ``tools/infer.py`` / ``tools/test.py --precision int8``): the file is cached under
  :func:`cache_dir`, named by a digest of the weights and the input facts, and reused by later
  calls without ``calibrate``.
"""
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

from ..data.layout import read_split_list, split_list_path
from ..data.transforms import crop_params, normalize_image, warp_image
from ..models.checkpoint import ModelSpec
from .parser import IMAGE_EXTS, read_image

__all__ = ["calibration_images", "calibration_crops", "quantize_onnx", "int8_model", "cache_dir",
           "FLOAT_LAYERS"]

logger = logging.getLogger(__name__)

# Layers left in float32, per model family: a pattern (re.fullmatch) of the top-level module a
# graph node belongs to. DML-CSR: the first stem convolution and the decoder (layer6); FP-LIIF:
# everything after the encoder (the reduction convolutions and the LIIF decoder, whose coordinate
# inputs and MLP lose most in 8 bits). Chosen by quantizing one layer at a time on the quick-start
# models (docs/inference.md, "int8"). A node whose module cannot be told stays float32 too.
FLOAT_LAYERS: Dict[str, str] = {
    "dml_csr": r"conv1|layer6",
    "fp_liif": r"(?!encoder$).*",
}
RECIPE = "qdq-minmax-perchannel/1"   # part of the cache key: bump when the recipe changes


def calibration_images(source: Union[str, os.PathLike], count: int = 32) -> List[str]:
    """Up to ``count`` image paths, evenly spread: the images of a prepared data root's
    ``train_list.txt`` (``data/layout.py``), else the image files of the folder
    ``source``. ValueError naming ``source`` when it holds none."""
    source = os.fspath(source)
    listing = split_list_path(source, "train")
    if os.path.isfile(listing):
        paths = [image for _, image, _ in read_split_list(listing, os.path.join(source, "train"))]
    elif os.path.isdir(source):
        paths = [os.path.join(source, n) for n in sorted(os.listdir(source))
                 if n.lower().endswith(IMAGE_EXTS)]
    else:
        raise ValueError(f"calibration source {source} is neither a data root nor a folder")
    if not paths:
        raise ValueError(f"calibration source {source} holds no images (a data root with "
                         f"train_list.txt, or a folder of {', '.join(IMAGE_EXTS)} files)")
    if count < 1:
        raise ValueError(f"the calibration count must be positive, got {count}")
    picks = np.linspace(0, len(paths) - 1, num=min(count, len(paths))).round().astype(int)
    return [paths[i] for i in sorted(set(picks.tolist()))]


def calibration_crops(paths: Sequence[str], spec: ModelSpec) -> List[np.ndarray]:
    """float32 (1, 3, H, W) network inputs of ``paths``: each whole image fitted to the crop, as
    the parser's ``detect=False`` and the benchmark protocol do, normalised as ``spec`` says."""
    crops = []
    for path in paths:
        image = read_image(path)
        center, scale = crop_params(*image.shape[:2], spec.center_mode)
        crop = warp_image(image, center, scale, 0.0, tuple(spec.crop_size), spec.center_mode)
        crops.append(normalize_image(crop, spec.channel_order, spec.mean, spec.std)[None].numpy())
    return crops


def _top_module(node, initializers) -> Optional[str]:
    """The top-level module of the model a graph node comes from: the TorchScript exporter's
    scope (``/model/<module>/.../<op>``), else the name of a parameter it reads (``model.<module>
    .weight``: the dynamo exporter keeps those); None when neither tells."""
    parts = node.name.split("/")
    if len(parts) >= 4 and parts[0] == "" and parts[1] == "model":
        return parts[2]
    for name in node.input:
        if name in initializers and name.startswith("model.") and name.count(".") >= 2:
            return name.split(".")[1]
    return None


def float_nodes(model_proto, family: str) -> List[str]:
    """The node names of ``model_proto`` (an ``export_onnx`` graph of ``family``) to leave in
    float32: those of ``FLOAT_LAYERS[family]``'s modules and those of no known module. A graph
    where that leaves no convolution to quantize is a ValueError."""
    pattern = FLOAT_LAYERS.get(family, r"(?!)")
    inits = {i.name for i in model_proto.graph.initializer}
    keep, quantized = [], 0
    for node in model_proto.graph.node:
        top = _top_module(node, inits)
        if top is None or re.fullmatch(pattern, top):
            keep.append(node.name)
        elif node.op_type == "Conv":
            quantized += 1
    if not quantized:
        raise ValueError(f"no convolution of this {family} graph can be told to belong to a layer "
                         f"that int8 may quantize (node names and parameter names unknown); "
                         f"export it with tools/export_onnx.py")
    return keep


def quantize_onnx(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                  crops: Sequence[np.ndarray], calibration: Optional[dict] = None) -> str:
    """Quantize the float32 ONNX file ``src`` (from ``export_onnx``) into ``dst``: QDQ format,
    per-channel int8 weights, uint8 activations calibrated (min/max) on ``crops`` (float32
    (1, 3, H, W) inputs), the family's ``FLOAT_LAYERS`` left in float32. ``dst`` keeps ``src``'s
    metadata and adds ``dml_csr.precision``, ``dml_csr.calibration_images``, ``dml_csr.recipe``
    and ``dml_csr.calibration`` (``calibration``: what the caller wants recorded, e.g. the
    source). Returns ``dst``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    from .onnx import ONNX_INPUT

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(crops)

        def get_next(self):
            x = next(self._items, None)
            return None if x is None else {ONNX_INPUT: x}

    if not crops:
        raise ValueError("quantize_onnx needs at least one calibration crop")
    src, dst = os.fspath(src), os.fspath(dst)
    proto = onnx.load(src, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    family = json.loads(meta.get("dml_csr.model_name", '"dml_csr"'))
    keep = float_nodes(proto, family)
    quantize_static(src, dst, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep)
    meta["dml_csr.precision"] = json.dumps("int8")
    meta["dml_csr.calibration_images"] = json.dumps(len(crops))
    meta["dml_csr.recipe"] = json.dumps(RECIPE)
    meta["dml_csr.calibration"] = json.dumps(dict(calibration or {}, images=len(crops)))
    model = onnx.load(dst)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, dst)
    return dst


# ----------------------------------------------------------------------- the calibration cache
def cache_dir() -> Path:
    """Where :func:`int8_model` keeps its files: ``$DMLCSR_CACHE``, else
    ``$XDG_CACHE_HOME/dml_csr``, else ``~/.cache/dml_csr``."""
    if os.environ.get("DMLCSR_CACHE"):
        return Path(os.environ["DMLCSR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dml_csr"


def _digest(model: nn.Module, spec: ModelSpec, output_size) -> str:
    """What the int8 file depends on: the weights (every tensor of the state_dict), the input
    facts, the output size, the recipe and onnxruntime's version."""
    import onnxruntime
    h = hashlib.blake2b(digest_size=12)
    facts = {"spec": spec.to_checkpoint(), "output_size": output_size, "recipe": RECIPE,
             "onnxruntime": onnxruntime.__version__}
    h.update(json.dumps(facts, sort_keys=True, default=list).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _recorded_calibration(path: Path) -> dict:
    import onnx
    for p in onnx.load(str(path), load_external_data=False).metadata_props:
        if p.key == "dml_csr.calibration":
            return json.loads(p.value)
    return {}


def int8_model(model: nn.Module, spec: ModelSpec, calibrate: Optional[Union[str, os.PathLike]] = None,
               count: int = 32, output_size: Optional[Sequence[int]] = None,
               cache: Optional[Union[str, os.PathLike]] = None) -> str:
    """The int8 ONNX file of ``model`` (float32, as ``load_inference_model`` gives it), from the
    cache when there is one, else exported, calibrated on ``count`` images of ``calibrate`` (a
    data root or an image folder: :func:`calibration_images`) and saved there.

    The cached file is named by a digest of the weights and ``spec``'s input facts, so a later call
    for the same weights finds it without ``calibrate``; a call whose ``calibrate`` or ``count``
    differ from the cached file's calibrates again and replaces it. ``cache``: the folder (default
    :func:`cache_dir`). Without ``calibrate`` and without a cached file: ValueError saying what to
    pass. Returns the file's path."""
    output_size = None if output_size is None else [int(v) for v in output_size]
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"{spec.family}-{spec.dataset}-{_digest(model, spec, output_size)}.int8.onnx"
    wanted = None
    if calibrate is not None:
        wanted = {"source": os.path.abspath(os.fspath(calibrate)), "count": int(count)}
    if path.is_file():
        have = _recorded_calibration(path)
        if wanted is None or all(have.get(k) == v for k, v in wanted.items()):
            logger.info("int8 model from the cache: %s (calibrated on %s images of %s)", path,
                        have.get("images"), have.get("source"))
            return str(path)
    if wanted is None:
        raise ValueError(f"precision 'int8' needs calibration images the first time for these "
                         f"weights: pass calibrate=DIR (tools: --calibrate DIR), a prepared data "
                         f"root or a folder of face photos; the calibrated model is then kept "
                         f"in {folder}")
    from .onnx import export_onnx
    crops = calibration_crops(calibration_images(calibrate, count), spec)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dml_csr_int8_") as tmp:
        float_path = os.path.join(tmp, "float32.onnx")
        export_onnx(model, float_path, spec, dynamic_batch=True, output_size=output_size)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")  # renamed when whole
        try:
            quantize_onnx(float_path, part, crops, calibration=wanted)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    logger.info("int8 model calibrated on %d images of %s, saved to %s", len(crops), calibrate, path)
    return str(path)

