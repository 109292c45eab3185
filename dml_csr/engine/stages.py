"""The training stages: each maps ``(model, batch, autocast)`` to ``(loss dict, outputs)``.

``autocast`` (``precision_context``) wraps the forward passes only (``train.precision``: bf16 or
fp16); the losses, and the outputs they receive, are float32.

- :class:`MultiTaskStage`: eq. 5, the multi-task stage.
- :class:`DistillStage`: eq. 7, CSR cycle k against a :class:`FrozenTeacher`.
- :func:`sample_queries`: FP-LIIF's LIIF-style sampled training queries (``train.query_samples``).
- :func:`grad_scaler` / :func:`optimizer_step`: fp16's loss scaling (CUDA and CPU) and the one
  update step the trainer and ``benchmarks/bench_train.py`` share.

The loss receives the model's outputs as they come (the DML-CSR tuple, or FP-LIIF's logits at the
crop size). Which stage runs when, and which teacher it gets, is the trainer's schedule
(``dml_csr/engine/trainer.py``).
"""
import contextlib
from typing import Callable, ContextManager, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..losses import MultiTaskLoss, SelfDistillationLoss
from ..models import ParsingOutput

__all__ = ["SAMPLED_KEYS", "sample_queries", "FrozenTeacher", "MultiTaskStage", "DistillStage",
           "precision_context", "PRECISION_DTYPES", "grad_scaler", "optimizer_step"]

PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
Autocast = Callable[[], ContextManager]


def precision_context(device: torch.device, precision: str) -> Autocast:
    """A factory of the forward passes' autocast context for ``precision`` on ``device``
    (``fp32``: no autocast)."""
    dtype = PRECISION_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's dynamic loss scaler on ``device`` (CUDA, or the CPU: the same logic); disabled, a
    pass-through, for the other precisions."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler) -> bool:
    """One update: gradients of the (scaled) loss, the optimiser's step, the scale's update.
    Under fp16 the scaler skips the step when a gradient is inf/NaN and halves its scale.
    Returns False when the step was skipped."""
    optimizer.zero_grad(set_to_none=True)
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return before is None or scaler.get_scale() >= before


def _map_outputs(outputs, fn):
    """``fn`` applied to a model's output tensor, or to each tensor of its ``ParsingOutput``."""
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    return type(outputs)(*(None if o is None else fn(o) for o in outputs))


def _as_float(outputs):
    """The model's outputs in float32 (a low-precision forward's), for the losses."""
    return _map_outputs(outputs, torch.Tensor.float)

SAMPLED_KEYS = ("label", "edge", "cat_edge")

def sample_queries(batch: Dict[str, torch.Tensor],
                   samples: int) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """LIIF-style training queries: ``samples`` distinct random output pixels per image.

    Returns a shallow copy of ``batch`` whose per-pixel targets (``SAMPLED_KEYS``, (N, H, W))
    are the values at the sampled pixels as (N, 1, Q), and their pixel-centre coordinates
    (N, Q, 2) for ``FPLIIF(x, coord=...)``; the image is unchanged. Uses the global torch RNG
    (so ``--resume`` reproduces it). ``samples=0``: ``(batch, None)``, the whole grid."""
    if not samples:
        return batch, None
    from ..models.fp_liif import pixel_centres
    label = batch["label"]
    n, h, w = label.shape
    idx = torch.rand(n, h * w).argsort(dim=1)[:, :samples].to(label.device)   # without replacement
    coord = pixel_centres(h, w, device=label.device)[idx]                       # (N, Q, 2)
    out = dict(batch)
    for key in SAMPLED_KEYS:
        if key in batch:
            out[key] = batch[key].reshape(n, h * w).gather(1, idx).view(n, 1, samples)
    return out, coord


class FrozenTeacher(nn.Module):
    """A frozen copy of a model: eval mode forever, no gradients; its forward runs under
    ``inference_mode`` (no activation kept) and returns ordinary tensors (clones), which the
    student's loss may use."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    def forward(self, images: torch.Tensor, coord: Optional[torch.Tensor] = None) -> ParsingOutput:
        with torch.inference_mode():
            out = self.model(images, coord=coord)
        return _map_outputs(out, torch.Tensor.clone)


class MultiTaskStage:
    """Eq. 5 stage: ``(model, batch) -> (loss dict, outputs)``."""
    name = "multitask"

    def __init__(self, loss: MultiTaskLoss, query_samples: int = 0):
        self.loss, self.query_samples = loss, query_samples

    def __call__(self, model: nn.Module, batch: Dict[str, torch.Tensor],
                 autocast: Autocast = contextlib.nullcontext):
        batch, coord = sample_queries(batch, self.query_samples)
        with autocast():
            outputs = model(batch["image"], coord=coord)
        outputs = _as_float(outputs)
        return self.loss(outputs, batch), outputs


class DistillStage:
    """Eq. 7 stage of cycle ``cycle`` (1-based) against a :class:`FrozenTeacher`."""
    name = "csr"

    def __init__(self, loss: SelfDistillationLoss, teacher: FrozenTeacher, cycle: int,
                 query_samples: int = 0):
        self.loss, self.teacher, self.cycle = loss, teacher, cycle
        self.query_samples = query_samples

    def __call__(self, model: nn.Module, batch: Dict[str, torch.Tensor],
                 autocast: Autocast = contextlib.nullcontext):
        batch, coord = sample_queries(batch, self.query_samples)
        with autocast():
            outputs = model(batch["image"], coord=coord)
            soft = self.teacher(batch["image"], coord)       # in the training precision
        outputs, soft = _as_float(outputs), _as_float(soft)
        return self.loss(outputs, batch, soft, cycle=self.cycle), outputs
