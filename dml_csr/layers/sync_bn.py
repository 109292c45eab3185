"""Synchronised BatchNorm1d for the DDGCN's graph layers (``bn_adj``, ``bn_wg``, ...).

``nn.SyncBatchNorm`` refuses CPU tensors, so multi-process CPU runs (gloo) and the tests could not
synchronise these layers with it. :class:`SyncBatchNorm1d` is a ``BatchNorm1d`` subclass (same
state_dict keys, including ``num_batches_tracked``) whose training-mode statistics are all-reduced
over the default process group, with gradients flowing through the reduction (the same helper as
the native ABN). Half-precision inputs (autocast) are normalised in float32 and answered in their
own dtype: in float16 the sums of squares of the graph layers' inputs (|x| about 1e3 at full
width) overflow. Outside a multi-process group it is exactly ``BatchNorm1d``.
"""
import torch
import torch.nn as nn

from .abn import _batch_stats, _synchronised

__all__ = ["SyncBatchNorm1d", "convert_sync_batchnorm1d"]


class SyncBatchNorm1d(nn.BatchNorm1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _synchronised()):
            return super().forward(x)
        if x.dtype != self.weight.dtype:   # autocast: normalise in float32, answer in x's dtype
            return self.forward(x.to(self.weight.dtype)).to(x.dtype)
        if self.momentum is None:  # cumulative average, as BatchNorm does
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked)
        else:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum
        mean, var, n = _batch_stats(x, sync=True)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (n / max(n - 1, 1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm1d(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` in ``module`` by :class:`SyncBatchNorm1d` (in place;
    parameters and buffers are kept, so state_dict keys and values do not change)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = SyncBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(next(iter(child.state_dict().values())).device)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm1d(child)
    return module

