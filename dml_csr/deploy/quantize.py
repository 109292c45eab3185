"""int8 inference through onnxruntime: post-training static quantization of an exported ONNX file.

The float32 inference form (``export_onnx``: norms folded) is quantized by onnxruntime's static
QDQ quantizer: per-channel int8 weights, uint8 activations whose ranges are calibrated (min/max)
on the crops of N images the user names (a prepared data root, whose ``train_list.txt`` is
sampled evenly, or a folder of images). The result is a new ONNX file with the float file's
metadata (label facts, crop size, channel order) plus ``dml_csr.precision = "int8"``: calibration
runs once, and ``FaceParser.from_onnx`` / ``tools/infer.py --onnx`` run the saved file.
``tools/export_onnx.py --int8 --calibrate DIR`` is the command (docs/inference.md).
"""
import json
import os
from typing import List, Sequence, Union

import numpy as np

from ..data.layout import read_split_list, split_list_path
from ..data.transforms import crop_params, normalize_image, warp_image
from ..models.checkpoint import ModelSpec
from .parser import IMAGE_EXTS, read_image

__all__ = ["calibration_images", "calibration_crops", "quantize_onnx"]


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


def quantize_onnx(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                  crops: Sequence[np.ndarray]) -> str:
    """Quantize the float32 ONNX file ``src`` (from ``export_onnx``) into ``dst``: QDQ format,
    per-channel int8 weights, uint8 activations calibrated (min/max) on ``crops`` (float32
    (1, 3, H, W) inputs). ``dst`` keeps ``src``'s metadata and adds ``dml_csr.precision`` and
    ``dml_csr.calibration_images``. Returns ``dst``."""
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
    quantize_static(src, dst, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    meta = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
    meta["dml_csr.precision"] = json.dumps("int8")
    meta["dml_csr.calibration_images"] = json.dumps(len(crops))
    model = onnx.load(dst)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, dst)
    return dst
