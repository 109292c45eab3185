"""ONNX: the inference form of a parsing model as an ONNX file whose metadata carries the model's
facts (``dml_csr.*`` keys: family, label schema, palette, input crop, channel order, mean and std),
so that :meth:`dml_csr.deploy.FaceParser.from_onnx` and ``tools/infer.py --onnx`` need nothing else.

:func:`export_onnx` writes it (tools/export_onnx.py), :func:`read_onnx_metadata` reads the facts
back as a ``ModelSpec``. ``onnx`` is imported only inside them.
"""
import json
import logging
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..models.checkpoint import CHECKPOINT_FORMAT, ModelSpec

__all__ = ["export_onnx", "read_onnx_metadata", "ONNX_INPUT", "ONNX_OUTPUT"]

logger = logging.getLogger(__name__)

ONNX_INPUT, ONNX_OUTPUT = "image", "logits"


class _ExportedLogits(nn.Module):
    """What an exported graph computes: the parsing logits of one pass at ``size`` (None: the
    family's own grid, DML-CSR's 1/4 of the crop; FP-LIIF's crop size)."""

    def __init__(self, model: nn.Module, size: Optional[Tuple[int, int]]):
        super().__init__()
        self.model = model
        self.size = None if size is None else tuple(int(v) for v in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.export_logits(x, self.size)


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], spec: ModelSpec,
                dynamic_batch: bool = False, opset: int = 17,
                output_size: Optional[Sequence[int]] = None, fold_bn: bool = True,
                exporter: str = "auto") -> str:
    """Write the inference form of ``model`` to ``path`` as ONNX with the label facts as metadata.

    ``spec``: the model's facts (``load_inference_model``), written as the file's metadata, so
    that :meth:`FaceParser.from_onnx` needs nothing else.
    Input ``image`` (N, 3, H, W) normalised crops at ``spec.crop_size``; output ``logits``
    (N, K, *output_size), by default the family's own grid (``ParsingModel.export_logits``):
    DML-CSR's (N, K, H/4, W/4), FP-LIIF's the crop size.
    ``exporter``: ``torchscript`` (``dynamo=False``), ``dynamo`` or ``auto`` (TorchScript first,
    the dynamo exporter if it fails). Returns the exporter that worked.
    """
    import copy
    import onnx

    from .fold import fold_norms

    model = copy.deepcopy(model).eval().float().cpu()
    if fold_bn:
        fold_norms(model)
    crop = spec.crop_size
    net = _ExportedLogits(model, output_size)
    x = torch.randn(2 if dynamic_batch else 1, 3, *crop)
    path = str(path)
    tried = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    used, errors = None, []
    for name in tried:
        try:
            with torch.no_grad():
                if name == "torchscript":
                    torch.onnx.export(net, (x,), path, input_names=[ONNX_INPUT],
                                      output_names=[ONNX_OUTPUT], opset_version=opset,
                                      dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}
                                      if dynamic_batch else None, dynamo=False)
                else:
                    shapes = ({"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
                              if dynamic_batch else None)
                    torch.onnx.export(net, (x,), path, input_names=[ONNX_INPUT],
                                      output_names=[ONNX_OUTPUT], opset_version=opset,
                                      dynamic_shapes=shapes, dynamo=True, external_data=False)
            used = name
            break
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all failures
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            logger.warning("ONNX export with %s failed: %s", name, exc)
    if used is None:
        raise RuntimeError("ONNX export failed: " + " | ".join(errors))
    schema = spec.schema()
    meta = {**spec.to_checkpoint(), "palette": [list(p) for p in schema.palette],
            "exporter": used}
    proto = onnx.load(path)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    meta["output"] = "logits at {}x{}".format(*(d.dim_value or d.dim_param for d in dims[-2:]))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"dml_csr.{k}", json.dumps(v)
    onnx.save(proto, path)
    return used


def read_onnx_metadata(path: Union[str, os.PathLike]) -> ModelSpec:
    """The model facts (a ``ModelSpec``) stored as ``dml_csr.*`` metadata by :func:`export_onnx`."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key[len("dml_csr."):]: json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith("dml_csr.")}
    if "input" in meta:
        return ModelSpec.from_checkpoint({"format": CHECKPOINT_FORMAT, **meta}, str(path))
    if "crop_size" in meta and "dataset" in meta:                 # files of the first exporter
        return ModelSpec.for_dataset(meta.get("model_name", "dml_csr"), {}, meta["dataset"],
                                     crop_size=meta["crop_size"],
                                     channel_order=meta.get("channel_order", "bgr"),
                                     center_mode=meta.get("center_mode", "exact"))
    raise ValueError(f"{path} lacks the dml_csr metadata; export it with tools/export_onnx.py")
