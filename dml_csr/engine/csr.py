"""Cyclical self-regulation arithmetic (docs/training.md) as pure functions on state dicts.

- :func:`self_ensemble` — eq. 6 of the paper,
  ``M = k/(k+1) * M_best + 1/((k+1) N) * sum_{n=1..N} M_n``.
- :func:`running_mean_update` — the release's teacher, a running mean of end-of-cycle weights:
  ``T_m = m/(m+1) * T_{m-1} + 1/(m+1) * M_m`` (weight 1/(m+1) on the new model).
- :func:`reestimate_norm_stats` — re-estimate the running statistics of every ABN and BatchNorm
  layer with a cumulative average over the training set.

What the averages do with buffers:
- parameters and floating-point buffers (ABN/BN ``running_mean`` / ``running_var``) are averaged
  with the same weights as the parameters. The averaged running statistics are only a starting
  point: the trainer re-estimates them right after (``train.bn_reestimate``), because the mean of
  per-model statistics is not the statistics of the mean model.
- integer buffers (BatchNorm's ``num_batches_tracked``) cannot be averaged; they are copied from
  ``M_best`` (eq. 6) or from the newest model (release), and reset by the re-estimation.
"""
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch
import torch.nn as nn

from ..layers.abn import ABN

__all__ = ["self_ensemble", "snapshot_sum", "running_mean_update", "norm_layers",
           "reset_norm_stats", "reestimate_norm_stats", "clone_state"]

StateDict = Dict[str, torch.Tensor]


def clone_state(state: Mapping[str, torch.Tensor], device="cpu") -> StateDict:
    """A detached copy of a state dict (on ``device``)."""
    return {k: v.detach().to(device, copy=True) for k, v in state.items()}


def snapshot_sum(total: Optional[StateDict], state: Mapping[str, torch.Tensor]) -> StateDict:
    """Add one epoch snapshot ``M_n`` into the running sum of a cycle (float64 for exactness).

    Eq. 6 needs only ``sum_n M_n``; the trainer keeps this sum (and the count) instead of N full
    copies. Integer buffers keep the newest value.
    """
    out: StateDict = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if not v.is_floating_point():
            out[k] = v.clone()
        elif total is None:
            out[k] = v.to(torch.float64).clone()
        else:
            out[k] = total[k] + v.to(torch.float64)
    return out


def self_ensemble(best: Mapping[str, torch.Tensor], snapshots, k: int,
                  num_snapshots: Optional[int] = None) -> StateDict:
    """Eq. 6: ``k/(k+1) * M_best + 1/((k+1) N) * sum_n M_n`` over float entries.

    Args:
        best: state dict of M_best (the best model so far on the validation split).
        snapshots: a list of the N epoch state dicts M_1..M_N of cycle ``k``, or their sum as
            returned by :func:`snapshot_sum` (then ``num_snapshots`` = N is required).
        k: the cycle index, 1..K.
        num_snapshots: N when ``snapshots`` is a sum.
    Returns:
        The aggregated state dict (dtypes of ``best``); integer buffers are copied from ``best``.
    """
    if k < 1:
        raise ValueError(f"cycle index k must be >= 1, got {k}")
    if isinstance(snapshots, Mapping):
        if not num_snapshots:
            raise ValueError("num_snapshots (N) is required when snapshots is a sum")
        total, n = snapshots, int(num_snapshots)
    else:
        snapshots = list(snapshots)
        if not snapshots:
            raise ValueError("eq. 6 needs at least one epoch snapshot")
        total = None
        for s in snapshots:
            total = snapshot_sum(total, s)
        n = len(snapshots)
    out: StateDict = {}
    for key, b in best.items():
        if key not in total:
            raise KeyError(f"snapshot has no entry {key!r}")
        if not b.is_floating_point():
            out[key] = b.detach().clone()
            continue
        value = (k / (k + 1.0)) * b.detach().cpu().to(torch.float64) \
            + total[key].to(torch.float64) / ((k + 1.0) * n)
        out[key] = value.to(b.dtype)
    return out


def running_mean_update(teacher: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor],
                        m: int) -> StateDict:
    """The release's teacher: ``m/(m+1) * teacher + 1/(m+1) * current`` for cycle ``m >= 1``.

    Integer buffers come from ``current``.
    """
    if m < 1:
        raise ValueError(f"cycle index m must be >= 1, got {m}")
    w = 1.0 / (m + 1.0)
    out: StateDict = {}
    for key, c in current.items():
        c = c.detach().cpu()
        if not c.is_floating_point():
            out[key] = c.clone()
            continue
        t = teacher[key].detach().cpu().to(torch.float64)
        out[key] = ((1.0 - w) * t + w * c.to(torch.float64)).to(c.dtype)
    return out


def norm_layers(model: nn.Module) -> List[nn.Module]:
    """Every ABN and BatchNorm (1d/2d/3d, SyncBatchNorm) layer with running statistics."""
    return [m for m in model.modules()
            if isinstance(m, ABN) or (isinstance(m, nn.modules.batchnorm._BatchNorm)
                                      and m.track_running_stats)]


def reset_norm_stats(model: nn.Module) -> None:
    for m in norm_layers(model):
        m.reset_running_stats()


@torch.no_grad()
def reestimate_norm_stats(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], None],
                          batch_size_of: Callable[[object], int],
                          max_batches: int = 0) -> int:
    """Re-estimate every ABN/BatchNorm running statistic as a cumulative average (docs/training.md).

    Running stats are reset (mean 0, var 1), the model is put in train mode and the batches are
    forwarded under no_grad; before a batch of ``b`` images, after ``n`` images, every layer's
    momentum is set to ``b / (n + b)``, so that the running mean ends as the image-weighted
    average of the per-batch means (= the exact mean over the data for layers that see the
    images directly) and the running variance as the image-weighted average of the per-batch
    unbiased variances (the exact variance when one batch holds the whole set). Modes and
    momenta are restored afterwards.

    Args:
        model: the (bare or DDP-wrapped) model; its layers sync statistics themselves when
            distributed, so ``batch_size_of`` must return the GLOBAL batch size then.
        batches: an iterable of batches.
        forward: ``forward(model, batch)`` runs the model on one batch (result ignored).
        batch_size_of: images in a batch (over all processes).
        max_batches: stop after this many batches (0 = all).
    Returns:
        The number of images forwarded.
    """
    layers = norm_layers(model)
    momenta = [m.momentum for m in layers]
    modes = {m: m.training for m in model.modules()}
    reset_norm_stats(model)
    model.train()
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            b = int(batch_size_of(batch))
            for m in layers:
                m.momentum = b / float(seen + b)
            forward(model, batch)
            seen += b
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return seen
