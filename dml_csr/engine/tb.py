"""TensorBoard logging of a run (``RUN_DIR/tb``), written by the main process only.

- :func:`open_writer` / :func:`close_writer`: the ``SummaryWriter`` (None, with one warning, where
  the optional ``tensorboard`` package is missing: the run goes on without this log).
- :func:`log_train_scalars`: ``train/<loss term>`` and ``train/lr`` per logged iteration.
- :func:`log_val_scalars`: ``val/...`` (student) or ``val_aggregated/...`` (CSR aggregated model)
  per validation: mean F1, mIoU, accuracies, the headline metric, per-class F1.
- :func:`image_grid`: input / label / prediction / edges of a training batch, one row each.

The text log (``train.log``) and ``metrics.jsonl`` are written by the trainer.
"""
import warnings
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..data.transforms import MEAN, STD
from ..layers.blocks import upsample
from ..models import ParsingOutput

__all__ = ["open_writer", "close_writer", "log_train_scalars", "log_val_scalars", "colorize",
           "image_grid", "IMAGE_TAG"]

IMAGE_TAG = "train/input_label_pred_edge_catedge"
VAL_SCALARS = ("mean_f1", "miou", "pixel_accuracy", "mean_accuracy")


def open_writer(path: str):
    """A ``SummaryWriter`` on ``path``, or None where ``tensorboard`` does not import."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        warnings.warn(f"no TensorBoard log ({exc}): pip install tensorboard to get one; "
                      f"train.log and metrics.jsonl are written as usual", stacklevel=2)
        return None
    return SummaryWriter(path)


def close_writer(writer) -> None:
    writer.flush()
    writer.close()


def log_train_scalars(writer, values: Dict[str, float], lr: float, step: int) -> None:
    for k, v in values.items():
        writer.add_scalar(f"train/{k}", v, step)
    writer.add_scalar("train/lr", lr, step)


def log_val_scalars(writer, metrics: Dict[str, Any], kind: str, epoch: int) -> None:
    """``kind``: ``student`` -> ``val/``, anything else -> ``val_aggregated/``."""
    tag = "val" if kind == "student" else "val_aggregated"
    h = metrics["headline"]
    for key in VAL_SCALARS:
        if isinstance(metrics.get(key), (int, float)):
            writer.add_scalar(f"{tag}/{key}", metrics[key], epoch)
    writer.add_scalar(f"{tag}/headline_{h['name']}", h["value"], epoch)
    for token, value in (metrics.get("f1") or {}).items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"{tag}_f1/{token}", value, epoch)


def colorize(ids: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """(N, H, W) ids -> (N, 3, H, W) in [0, 1]; 255 -> white."""
    ids = ids.clone()
    out = torch.ones(ids.shape + (3,))
    valid = ids < palette.shape[0]
    out[valid] = palette[ids[valid]]
    return out.permute(0, 3, 1, 2)


def image_grid(batch: Dict[str, torch.Tensor], outputs: ParsingOutput, palette, channel_order: str,
               model: Optional[nn.Module] = None, n: int = 4) -> torch.Tensor:
    """(3, rows*H, n*W) grid of the first ``n`` images of ``batch``: input, label, prediction,
    binary edge, category edge (the edge rows when the model has them). ``model``: decode the
    whole grid again with it (the step saw sampled pixels only, ``train.query_samples``)."""
    n = min(n, batch["image"].shape[0])
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    img = (batch["image"][:n].detach().float().cpu() * std + mean).clamp(0, 1)
    if channel_order == "bgr":
        img = img.flip(1)
    size = img.shape[-2:]
    palette = torch.tensor(palette, dtype=torch.float32) / 255.0
    if model is not None:
        with torch.no_grad():
            outputs = model(batch["image"][:n])
    up = lambda t: upsample(t[:n].detach().float().cpu(), size)  # noqa: E731
    rows = [img, colorize(batch["label"][:n].cpu(), palette),
            colorize(up(outputs.parsing).argmax(1), palette)]
    if outputs.binary_edge is not None:
        rows.append(up(outputs.binary_edge).softmax(1)[:, 1:2].expand(-1, 3, -1, -1))
    if outputs.category_edge is not None:
        rows.append(colorize(up(outputs.category_edge).argmax(1), palette))
    return torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
