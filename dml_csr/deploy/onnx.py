"""ONNX: the inference form of a parsing model as an ONNX file whose metadata carries the model's
facts (``dml_csr.*`` keys: family, label schema, palette, input crop, channel order, mean and std),
so that :meth:`dml_csr.deploy.FaceParser.from_onnx` and ``tools/infer.py --onnx`` need nothing else.

:func:`export_onnx` writes it (tools/export_onnx.py), :func:`read_onnx_metadata` reads the facts
back as a ``ModelSpec``. :class:`OnnxSession` runs a file with onnxruntime (the parser's ONNX
backend); :class:`OnnxParsingModel` wraps one in the models' contract (``model(x, size=...)
.parsing``), so that the evaluation protocol scores an ONNX file, e.g. an int8 one, like a module.
``onnx`` and ``onnxruntime`` are imported only inside them. :func:`exports_uneven_pooling`: whether
this torch's exporters can export adaptive pooling to a size that does not divide its input (the
PSP context at small crops; a feature check, run once, for tests and error messages).
"""
import functools
import json
import logging
import os
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..files import write_bytes
from ..models.checkpoint import CHECKPOINT_FORMAT, ModelSpec
from ..models.contract import ParsingOutput, resize_logits_to

__all__ = ["export_onnx", "read_onnx_metadata", "OnnxSession", "OnnxParsingModel",
           "ONNX_INPUT", "ONNX_OUTPUT", "OnnxExportError", "exports_uneven_pooling"]

logger = logging.getLogger(__name__)

ONNX_INPUT, ONNX_OUTPUT = "image", "logits"
DYNAMO_OPSET = 18   # the dynamo exporter's own: where it cannot write an older one (torch 2.8)


class OnnxExportError(RuntimeError):
    """No exporter of this torch could export the model (each one's error in the message)."""


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
                exporter: str = "auto", cache_key: Optional[str] = None) -> str:
    """Write the inference form of ``model`` to ``path`` as ONNX with the label facts as metadata.

    ``spec``: the model's facts (``load_inference_model``), written as the file's metadata, so
    that :meth:`FaceParser.from_onnx` needs nothing else.
    Input ``image`` (N, 3, H, W) normalised crops at ``spec.crop_size``; output ``logits``
    (N, K, *output_size), by default the family's own grid (``ParsingModel.export_logits``):
    DML-CSR's (N, K, H/4, W/4), FP-LIIF's the crop size.
    ``exporter``: ``torchscript`` (``dynamo=False``), ``dynamo`` or ``auto`` (TorchScript first,
    the dynamo exporter if it fails). The graph is exported into a temporary folder and ``path``
    written atomically with the metadata (``files.write_bytes``). ``cache_key``: also stored, as
    ``dml_csr.cache_key`` (``deploy/cache.py``). Returns the exporter that worked.
    """
    import copy
    import tempfile

    import onnx

    from .fold import fold_norms

    model = copy.deepcopy(model).eval().float().cpu()
    if fold_bn:
        fold_norms(model)
    crop = spec.crop_size
    net = _ExportedLogits(model, output_size)
    x = torch.randn(2 if dynamic_batch else 1, 3, *crop)
    with tempfile.TemporaryDirectory(prefix="dml_csr_export_") as folder:
        tmp = os.path.join(folder, "model.onnx")
        used = _export(net, x, tmp, dynamic_batch, opset, exporter)
        proto = onnx.load(tmp)
    schema = spec.schema()
    meta = {**spec.to_checkpoint(), "palette": [list(p) for p in schema.palette],
            "exporter": used}
    if cache_key is not None:
        meta["cache_key"] = cache_key
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    meta["output"] = "logits at {}x{}".format(*(d.dim_value or d.dim_param for d in dims[-2:]))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"dml_csr.{k}", json.dumps(v)
    write_bytes(path, proto.SerializeToString(), fsync=True)
    return used


def _export(net: nn.Module, x: torch.Tensor, path: str, dynamic_batch: bool, opset: int,
            exporter: str) -> str:
    """``torch.onnx.export`` of ``net`` into ``path`` with the exporters ``exporter`` names (the
    first that works); returns its name."""
    names = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    tried = [(name, opset) for name in names]
    if "dynamo" in names and opset < DYNAMO_OPSET:
        tried.append(("dynamo", DYNAMO_OPSET))      # when it cannot convert down to ``opset``
    used, errors = None, []
    for name, version in tried:
        try:
            with torch.no_grad():
                if name == "torchscript":
                    torch.onnx.export(net, (x,), path, input_names=[ONNX_INPUT],
                                      output_names=[ONNX_OUTPUT], opset_version=version,
                                      dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}
                                      if dynamic_batch else None, dynamo=False)
                else:
                    shapes = ({"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
                              if dynamic_batch else None)
                    torch.onnx.export(net, (x,), path, input_names=[ONNX_INPUT],
                                      output_names=[ONNX_OUTPUT], opset_version=version,
                                      dynamic_shapes=shapes, dynamo=True, external_data=False)
            used = name
            break
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all failures
            errors.append(f"{name} (opset {version}): {type(exc).__name__}: {exc}")
            logger.warning("ONNX export with %s (opset %d) failed: %s", name, version, exc)
    if used is None:
        raise OnnxExportError("ONNX export failed: " + " | ".join(errors))
    return used


@functools.lru_cache(maxsize=None)
def exports_uneven_pooling() -> bool:
    """Whether this torch exports (``exporter="auto"``, dynamic batch) adaptive average pooling to
    a size that does not divide its input, followed by an ``align_corners=True`` resize (the PSP
    context's branch at small crops), into a file onnxruntime runs like PyTorch. The TorchScript
    exporter refuses such pooling; torch 2.6's dynamo exporter fails on it too (its dynamic shapes
    and, given positionally, a Resize node that onnxruntime rejects). Runs one small export, once
    per process."""
    import tempfile

    import onnxruntime as ort

    from ..layers.blocks import upsample

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(3)
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return upsample(self.conv(self.pool(x)), x.shape[2:]) + x

    torch.manual_seed(0)
    net, x = Branch().eval(), torch.randn(2, 4, 4, 4)
    with tempfile.TemporaryDirectory(prefix="dml_csr_probe_") as folder:
        path = os.path.join(folder, "probe.onnx")
        try:
            _export(net, x, path, dynamic_batch=True, opset=17, exporter="auto")
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        except Exception as exc:  # noqa: BLE001 - the answer is no
            logger.info("this torch cannot export uneven adaptive pooling to ONNX: %s", exc)
            return False
    with torch.no_grad():
        return bool(np.allclose(out, net(x).numpy(), atol=1e-4))


def read_onnx_metadata(path: Union[str, os.PathLike]) -> ModelSpec:
    """The model facts (a ``ModelSpec``) stored as ``dml_csr.*`` metadata by :func:`export_onnx`."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    return _spec_of({p.key: p.value for p in proto.metadata_props}, path)


def _spec_of(metadata_props: Mapping[str, str], path: Union[str, os.PathLike]) -> ModelSpec:
    """The ``ModelSpec`` of an ONNX file's metadata (key -> JSON text), ``path`` for messages."""
    meta = {k[len("dml_csr."):]: json.loads(v) for k, v in metadata_props.items()
            if k.startswith("dml_csr.")}
    if "input" in meta:
        return ModelSpec.from_checkpoint({"format": CHECKPOINT_FORMAT, **meta}, str(path))
    if "crop_size" in meta and "dataset" in meta:                 # files of the first exporter
        return ModelSpec.for_dataset(meta.get("model_name", "dml_csr"), {}, meta["dataset"],
                                     crop_size=meta["crop_size"],
                                     channel_order=meta.get("channel_order", "bgr"),
                                     center_mode=meta.get("center_mode", "exact"))
    raise ValueError(f"{path} lacks the dml_csr metadata; export it with tools/export_onnx.py")


class OnnxSession:
    """An ONNX file of :func:`export_onnx` under onnxruntime: ``session(batch)`` maps (N, 3, H, W)
    float32 crops to the file's logits, in chunks of a fixed-batch file's batch (the last one
    padded), else of ``micro_batch`` crops (None: the whole batch at once). ``threads``:
    onnxruntime's intra-op threads (0: its default)."""

    def __init__(self, path: str, providers: Optional[Sequence[str]] = None, threads: int = 0,
                 micro_batch: Optional[int] = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # no busy-waiting between runs: the parser's own steps (and torch) get the cores back
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no memory arena: onnxruntime otherwise keeps the largest activations of a run (the parse
        # of a 12 MP photo with 6 faces and logits peaked 268 MiB higher with it, no faster)
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_hw = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be positive or None, got {micro_batch}")
        self.micro_batch = micro_batch

    def __call__(self, batch: torch.Tensor, crop_size: Optional[Tuple[int, int]] = None
                 ) -> torch.Tensor:
        x = batch.numpy().astype(np.float32, copy=False)
        if self.fixed_hw is not None and tuple(x.shape[2:]) != self.fixed_hw:
            raise ValueError(f"the ONNX model takes {self.fixed_hw} crops, got {tuple(x.shape[2:])}")
        step = self.fixed_batch or self.micro_batch or len(x)
        outs = []
        for s in range(0, len(x), step):
            chunk = x[s:s + step]
            n = len(chunk)
            if self.fixed_batch and n < step:  # pad a fixed-batch model's last chunk
                chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: chunk})[0][:n])
        return torch.from_numpy(np.concatenate(outs))


class OnnxParsingModel(nn.Module):
    """An ONNX file in the models' contract: ``forward(x, size=None)`` -> ``ParsingOutput`` whose
    parsing logits are the file's, resized bilinearly (align_corners=True) to ``size``. It has no
    parameters and runs on the CPU; ``spec`` is the file's ``ModelSpec``. A batch runs one crop at
    a time (``micro_batch=1``, the default): as fast per crop as whole batches on the CPU (full
    DML-CSR: 2.4 s per crop either way), with one crop's activations in memory instead of
    eight's (docs/inference.md, "Memory and time on a large photo")."""

    def __init__(self, path: Union[str, os.PathLike], threads: int = 0,
                 providers: Optional[Sequence[str]] = None, micro_batch: Optional[int] = 1):
        super().__init__()
        self.path = str(path)
        self.session = OnnxSession(self.path, providers, threads, micro_batch)
        # the session has read the file: its metadata, without parsing the file a second time
        self.spec = _spec_of(self.session.session.get_modelmeta().custom_metadata_map, path)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> ParsingOutput:
        return ParsingOutput(resize_logits_to(self.session(x.detach().float().cpu()),
                                              None if size is None else tuple(size)))
