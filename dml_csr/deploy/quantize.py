"""int8 inference through onnxruntime: post-training static quantization of an exported ONNX file.

The float32 inference form (``export_onnx``: norms folded) is quantized by onnxruntime's static
QDQ quantizer: per-channel int8 weights, uint8 activations whose ranges are calibrated (min/max)
on the crops of N images the user names (a prepared data root, whose ``train_list.txt`` is
sampled evenly, or a folder of images). A few layers stay float32 (the family's
``float_layers``, declared in its own file: the ones whose rounding moved the labels most,
measured layer by layer; docs/inference.md). The result is
a new ONNX file with the float file's metadata (label facts, crop size, channel order) plus
``dml_csr.precision = "int8"`` and ``dml_csr.calibration``.

Two ways to the file, both calibrating once:
- ``tools/export_onnx.py --int8 --calibrate DIR``: the user names the file, run by
  ``FaceParser.from_onnx`` / ``tools/infer.py --onnx``;
- :func:`int8_model` (``FaceParser.from_checkpoint(..., precision="int8", calibrate=DIR)``,
  ``tools/infer.py`` / ``tools/test.py --precision int8``): the file is cached under
  ``cache.cache_dir()``, named by a digest of the weights and the input facts (the key), and reused
  by later calls without ``calibrate`` once the key stored inside it is checked: a file
  truncated or made for other weights (another model's file under this name) is set aside and
  rebuilt; the file is trusted on first use (``cache``'s docstring).

onnxruntime's quantizer logs through the root logger; its lines go to this module's logger at
DEBUG level. Biases shared by the exporter (``Identity`` of an initializer) get their own copy
first, so that every quantized convolution gets an int32 bias (:func:`_own_initializers`).
"""
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from typing import List, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

from ..data.layout import read_split_list, split_list_path
from ..data.transforms import crop_params, normalize_image, warp_image
from ..models.checkpoint import ModelSpec
from ..files import read_image, write_bytes
from .cache import CACHE_KEY, cache_dir, cached_metadata, ready_cache_dir, weights_key
from ..files import IMAGE_EXTS

__all__ = ["calibration_images", "calibration_crops", "quantize_onnx", "int8_model",
           "float_layers"]

logger = logging.getLogger(__name__)



def float_layers(family: str) -> str:
    """The pattern (``re.fullmatch``) of the top-level modules of ``family``'s graph left in
    float32: the family's ``float_layers`` (``models/contract.py``; chosen by quantizing one
    layer at a time on the quick-start models, docs/inference.md); none for a family this
    process does not know. A node whose module cannot be told stays float32 too."""
    from ..models.registry import FAMILIES
    cls = FAMILIES.get(family)
    return (cls.float_layers if cls is not None else "") or r"(?!)"
RECIPE = "qdq-minmax-perchannel/2"   # part of the cache key: bump when the recipe changes


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
    the parser's ``detect=False`` and the benchmark protocol do, normalised as ``spec`` says.
    An image that ``files.read_image`` refuses is skipped with a warning naming it."""
    crops = []
    for path in paths:
        try:
            image = read_image(path)
        except (ValueError, OSError) as exc:     # over the pixel limit, truncated, damaged
            logger.warning("calibration image skipped: %s", exc)
            continue
        center, scale = crop_params(*image.shape[:2], spec.center_mode)
        crop = warp_image(image, center, scale, 0.0, tuple(spec.crop_size), spec.center_mode)
        crops.append(normalize_image(crop, spec.channel_order, spec.mean, spec.std)[None].numpy())
    if not crops:
        raise ValueError(f"none of the {len(paths)} calibration images could be read (each is "
                         f"named in a warning above)")
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
    float32: those of :func:`float_layers`'s modules and those of no known module. A graph
    where that leaves no convolution to quantize is a ValueError."""
    pattern = float_layers(family)
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


def _own_initializers(proto) -> int:
    """Give every ``Identity`` node that reads an initializer its own copy of it instead. The
    TorchScript exporter shares bitwise-equal initializers (e.g. equal folded biases) through such
    nodes; the quantizer quantizes only initializer biases (int32), so a shared one would stay a
    float bias beside int8 weights (and ``Expected ... to be an initializer`` is logged). Returns
    how many were given their own."""
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    done = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]),
                                           node.output[0])
            proto.graph.initializer.append(copy)
            done.append(node)
    for node in done:
        proto.graph.node.remove(node)
    return len(done)


@contextmanager
def _root_log_to_debug():
    """onnxruntime's quantizer logs through the root logger (``logging.warning``: configuring it
    on first use, so its lines reach stderr): for the duration, those records go to this module's
    logger at DEBUG level instead (the handlers of other loggers are untouched)."""
    root = logging.getLogger()

    def to_debug(record: logging.LogRecord) -> bool:
        logger.debug("onnxruntime: %s", record.getMessage())
        return False

    null = None
    if not root.handlers:             # else logging.warning() would install a stderr handler
        null = logging.NullHandler()
        root.addHandler(null)
    root.addFilter(to_debug)
    try:
        yield
    finally:
        root.removeFilter(to_debug)
        if null is not None:
            root.removeHandler(null)


def quantize_onnx(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                  crops: Sequence[np.ndarray], calibration: Optional[dict] = None,
                  cache_key: Optional[str] = None) -> str:
    """Quantize the float32 ONNX file ``src`` (from ``export_onnx``) into ``dst``: QDQ format,
    per-channel int8 weights, int32 biases, uint8 activations calibrated (min/max) on ``crops``
    (float32 (1, 3, H, W) inputs), the family's float layers (:func:`float_layers`) left in
    float32. ``dst`` keeps
    ``src``'s metadata and adds ``dml_csr.precision``, ``dml_csr.calibration_images``,
    ``dml_csr.recipe``, ``dml_csr.calibration`` (``calibration``: what the caller wants recorded,
    e.g. the source) and, when given, ``dml_csr.cache_key`` (what :func:`int8_model` checks). The
    quantizer's log lines go to this module's logger (DEBUG); ``dst`` is written atomically
    (``files.write_bytes``). Returns ``dst``."""
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
    proto = onnx.load(src)
    meta = {p.key: p.value for p in proto.metadata_props}
    family = json.loads(meta.get("dml_csr.model_name", '"dml_csr"'))
    keep = float_nodes(proto, family)
    shared = _own_initializers(proto)
    if shared:
        logger.debug("%s: %d shared initializers given their own copy", src, shared)
    with tempfile.TemporaryDirectory(prefix="dml_csr_int8_") as tmp, _root_log_to_debug():
        fixed, out = os.path.join(tmp, "float32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(proto, fixed)
        del proto
        quantize_static(fixed, out, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep)
        model = onnx.load(out)
    meta["dml_csr.precision"] = json.dumps("int8")
    meta["dml_csr.calibration_images"] = json.dumps(len(crops))
    meta["dml_csr.recipe"] = json.dumps(RECIPE)
    meta["dml_csr.calibration"] = json.dumps(dict(calibration or {}, images=len(crops)))
    if cache_key is not None:
        meta[CACHE_KEY] = json.dumps(cache_key)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    write_bytes(dst, model.SerializeToString(), fsync=True)
    return dst


def int8_model(model: nn.Module, spec: ModelSpec, calibrate: Optional[Union[str, os.PathLike]] = None,
               count: int = 32, output_size: Optional[Sequence[int]] = None,
               cache: Optional[Union[str, os.PathLike]] = None) -> str:
    """The int8 ONNX file of ``model`` (float32, as ``load_inference_model`` gives it), from the
    cache when there is one, else exported, calibrated on ``count`` images of ``calibrate`` (a
    data root or an image folder: :func:`calibration_images`) and saved there.

    The cached file is named by a digest of the weights and ``spec``'s input facts (the key),
    which is also stored inside the file (``dml_csr.cache_key``) and checked before the file is
    used: a later call for the same weights finds it without ``calibrate``. The calibrated file
    is trusted on first use (``cache``'s docstring says what the key does not check). A file
    that is unreadable, truncated or holds another key is never used: it is set aside (renamed
    ``NAME.rejected``, with a warning naming it) and rebuilt when ``calibrate`` is given. A call
    whose ``calibrate`` or ``count`` differ from the cached file's calibrates again and replaces
    it. ``cache``: the folder (default ``cache.cache_dir()``). Without ``calibrate`` and without a
    usable cached file: ValueError saying what to pass. Returns the file's path."""
    output_size = None if output_size is None else [int(v) for v in output_size]
    folder = cache_dir(cache)
    key = weights_key(model, spec, output_size, RECIPE)
    path = folder / f"{key}.int8.onnx"
    wanted = None
    if calibrate is not None:
        wanted = {"source": os.path.abspath(os.fspath(calibrate)), "count": int(count)}
    meta, refused = cached_metadata(path, key, "int8")
    if meta is not None:
        try:
            have = dict(json.loads(meta.get("dml_csr.calibration", "{}")))
        except (ValueError, TypeError):
            have = {}                     # no record: calibrated again when calibrate is given
        if wanted is None or all(have.get(k) == v for k, v in wanted.items()):
            logger.info("int8 model from the cache: %s (calibrated on %s images of %s)", path,
                        have.get("images"), have.get("source"))
            return str(path)
    if wanted is None:
        why = (f"the cached file was not usable and was set aside as {refused}" if refused
               else "these weights have no calibrated file yet")
        raise ValueError(f"precision 'int8' needs calibration images: {why}; pass calibrate=DIR "
                         f"(tools: --calibrate DIR), a prepared data root or a folder of face "
                         f"photos; the calibrated model is then kept in {folder}")
    from .onnx import export_onnx
    crops = calibration_crops(calibration_images(calibrate, count), spec)
    ready_cache_dir(cache)                 # private; a killed calibration's temporaries go
    with tempfile.TemporaryDirectory(prefix="dml_csr_int8_") as tmp:
        float_path = os.path.join(tmp, "float32.onnx")
        export_onnx(model, float_path, spec, dynamic_batch=True, output_size=output_size)
        quantize_onnx(float_path, path, crops, calibration=wanted, cache_key=key)
    logger.info("int8 model calibrated on %d images of %s, saved to %s", len(crops), calibrate, path)
    return str(path)
