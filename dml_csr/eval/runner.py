"""The config-driven test runner behind ``tools/test.py``: config + checkpoint -> result JSON.

``run_test`` loads the checkpoint (``dml_csr.models.checkpoint.load_inference_model``), builds the
un-augmented split of the config's data root (``build_eval_dataset``), scores it with the
release's evaluation protocol (``dml_csr.eval.inference.evaluate_model``) and returns the result
record of ``dml_csr.eval.evaluate.build_result`` with the inference settings in ``meta`` (the table
row of ``tools/make_tables.py`` included) and ``protocol.inference``.
"""
import logging
import time
from typing import Mapping, Optional, Sequence, Union

import torch

from dml_csr.deploy.fold import optimize_for_inference
from dml_csr.models.checkpoint import load_inference_model
from dml_csr.models.registry import model_kwargs_from_config

from .evaluate import build_result
from .inference import INFERENCE_PROTOCOL, evaluate_model
from .paper import result_row

__all__ = ["build_eval_dataset", "run_test"]

logger = logging.getLogger(__name__)


def build_eval_dataset(cfg, split: str, data_root: Optional[str] = None):
    """The un-augmented ``FaceDataset`` of ``split`` with ``cfg``'s crop, channel order and
    centre convention; its description is the root's for ``cfg.data.dataset``
    (``layout.root_schema``: the one answer every reader gives)."""
    from dml_csr.data import FaceDataset
    from dml_csr.data.layout import root_schema

    root = data_root or cfg.data.root
    return FaceDataset(root, split, crop_size=tuple(cfg.data.crop_size), augment="none",
                       flip=False, channel_order=cfg.data.channel_order,
                       center_mode=cfg.data.center_mode, with_edges=False,
                       schema=root_schema(root, cfg.data.dataset or None))


def run_test(cfg, checkpoint: str, split: str = "test", *, data_root: Optional[str] = None,
             device: Union[str, torch.device] = "cpu", batch_size: Optional[int] = None,
             workers: Optional[int] = None, flip: Optional[bool] = None,
             scales: Optional[Sequence[float]] = None, pred_dir=None,
             overlay_dir=None, save_logits: bool = False, progress: bool = False,
             meta: Optional[Mapping[str, object]] = None,
             output_scale: Optional[float] = None, precision: str = "fp32",
             calibrate: Optional[str] = None, calibrate_count: int = 32,
             trust_checkpoint: bool = False, class_map=None) -> dict:
    """Evaluate ``checkpoint`` (built from ``cfg``) on ``split``; returns the result record of
    ``evaluate.build_result`` (the JSON of docs/evaluation.md) with the inference settings in
    ``meta`` and ``protocol.inference``. ``batch_size``, ``workers``, ``flip``, ``scales`` and
    ``output_scale`` left at None take the config's ``eval.*`` values.

    ``meta.row`` (the table row of ``tools/make_tables.py``) is ``cfg.row`` when the config sets
    one (the ablation configs), else the row the model family declares (``dml-csr``,
    ``fp-liif``, a registered family's own name); a ``row`` in ``meta`` overrides both, like
    every key of ``meta``.

    Under torch.distributed EVERY process must call it (``evaluate_model`` all-reduces the
    histograms of the per-rank shards); each returns the same numbers and writes only its own
    shard's files into ``pred_dir`` / ``overlay_dir``.

    ``precision="bf16"`` scores the model as the parser runs it in bfloat16
    (``optimize_for_inference(precision="bf16")``: norms folded, bf16 weights and activations on
    the CPU, autocast on CUDA); ``precision="int8"`` scores the int8 ONNX file the parser runs
    (``deploy.quantize.int8_model``: calibrated once on ``calibrate_count`` images of
    ``calibrate``, then cached; CPU, one scale). ``meta.precision`` records it.
    ``trust_checkpoint``: unpickle a file that ``weights_only`` refuses (it may run code:
    ``models/checkpoint.py``). ``class_map``: a mapping from the checkpoint's classes to the data
    root's (a path or a shipped name; ``classmap.py``), to score a model of one label set on
    another's labels; ``meta.class_map`` records it."""
    model, spec = load_inference_model(checkpoint, dataset=None if class_map else
                                       (cfg.data.dataset or None), config=cfg, device=device,
                                       trust_checkpoint=trust_checkpoint)
    dataset = build_eval_dataset(cfg, split, data_root)
    cmap = None
    if class_map is not None:
        from .classmap import load_class_map
        cmap = load_class_map(class_map, spec.schema(), dataset.schema)
    elif tuple(spec.class_tokens) != dataset.schema.tokens:
        raise ValueError(f"{checkpoint} predicts the classes of {spec.dataset!r} "
                         f"{list(spec.class_tokens)}, but {dataset.root} holds "
                         f"{dataset.schema.name!r} {list(dataset.schema.tokens)}: score it on "
                         f"a root of its own classes")
    e = cfg.eval
    output_scale = float(e.output_scale if output_scale is None else output_scale)
    scales = e.scales if scales is None else scales
    if precision == "int8":
        model = _int8_model(model, spec, device, scales, output_scale, calibrate, calibrate_count)
    elif precision != "fp32":
        model = optimize_for_inference(model, inplace=True, micro_batch=None,
                                       precision=precision)
    asked = model_kwargs_from_config(cfg.model, spec.num_classes)
    if (spec.family, spec.model_kwargs) != (cfg.model.name, asked):
        logger.info("%s holds %s %s; the config names %s %s: the checkpoint's model is used",
                    checkpoint, spec.family, spec.model_kwargs, cfg.model.name, asked)
    flip = e.flip if flip is None else flip
    batch_size = e.batch_size if batch_size is None else batch_size
    workers = e.workers if workers is None else workers
    start = time.perf_counter()
    metrics = evaluate_model(model, dataset, batch_size=batch_size, workers=workers, device=device,
                             flip=flip, scales=scales, pred_dir=pred_dir, overlay_dir=overlay_dir,
                             save_logits=save_logits, progress=progress,
                             output_scale=output_scale, class_map=cmap,
                             model_flip=spec.schema().flip_permutation())
    seconds = time.perf_counter() - start
    if "confusion" not in metrics:
        raise ValueError(f"split {split!r} of {dataset.root} has no label files: nothing to score")
    info = {"checkpoint": str(checkpoint), "config": cfg.name, "preset": cfg.preset,
            "model": cfg.model.name, "row": result_row(cfg.row, cfg.model.name),
            "data_root": str(dataset.root),
            "crop_size": list(dataset.crop_size), "flip": bool(flip),
            "scales": [float(s) for s in scales], "output_scale": output_scale,
            "precision": precision, "seconds": round(seconds, 3)}
    if pred_dir is not None:
        info["pred_dir"] = str(pred_dir)
    if cmap is not None:
        info["class_map"] = cmap.to_dict()
    info.update(meta or {})
    result = build_result(metrics["confusion"], dataset.schema, split=split,
                          num_images=metrics["num_images"], meta=info)
    result["protocol"]["inference"] = dict(INFERENCE_PROTOCOL)
    return result


def _int8_model(model, spec, device, scales, output_scale: float, calibrate, count: int):
    """The int8 ONNX file of ``model`` (cached, ``int8_model``) as a module for ``evaluate_model``;
    with ``output_scale`` != 1 the file computes the logits at that size (FP-LIIF decodes there)."""
    from ..deploy.onnx import OnnxParsingModel
    from ..deploy.quantize import int8_model
    if torch.device(device).type != "cpu":
        raise ValueError(f"precision 'int8' runs on the CPU (onnxruntime), not {device}")
    if [float(s) for s in scales] != [1.0]:
        raise ValueError(f"precision 'int8' scores one scale (the file's crop size); got scales "
                         f"{list(scales)}: pass --scales 1.0")
    size = None
    if output_scale != 1.0:
        size = [max(1, int(round(v * output_scale))) for v in spec.crop_size]
    return OnnxParsingModel(int8_model(model, spec, calibrate, count, size))
