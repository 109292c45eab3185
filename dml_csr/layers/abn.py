"""In-Place Activated BatchNorm (ABN) with a pure-PyTorch fallback (docs/model.md).

The release normalises with ``inplace_abn.InPlaceABNSync``. Its maths, reproduced here:

    y = act((x - mean) / sqrt(var + eps) * (|weight| + eps) + bias),  act = leaky_relu(0.01)

Training uses the batch statistics (biased variance) and updates the running statistics with
momentum 0.1 using the *unbiased* variance; eval uses the running statistics. The layer holds
``weight, bias, running_mean, running_var`` and no ``num_batches_tracked``, exactly like the
release's checkpoints.

Backends:
- ``native``: pure PyTorch; works on every device. Under ``torch.distributed`` (world size > 1,
  training mode) the batch statistics are all-reduced over the process group, with gradients
  flowing through the reduction, so every process normalises with the global batch statistics.
- ``compiled``: the ``inplace-abn`` package's kernels (CPU or CUDA), passed the world group
  explicitly, because its sync layer silently reduces nothing when given no group.
- ``memory``: pure PyTorch, memory-saving as in the In-Place ABN paper (Rota Bulo et al., 2018):
  a custom autograd function that saves only the activation output ``y`` plus per-channel
  tensors (``inv_std``, ``weight``, ``bias``), not the input. Its backward inverts the activation
  (``z = act^-1(y)``) and the affine (``xhat = (z - bias) / (|weight| + eps)``, invertible because
  ``|weight| + eps > 0``) and applies the batch-norm gradient formula. Under ``torch.distributed``
  the forward statistics and the backward's per-channel sums (``sum dz``, ``sum dz * xhat``) are
  all-reduced, so outputs and gradients equal ``native``'s. The output is a new tensor (the input
  is not overwritten); eval mode uses the same function with the running statistics.
- ``auto`` (default): ``compiled`` for CUDA tensors when the package imports; else, in training
  mode, ``memory`` (less than half the activation memory of ``native``, the same outputs and
  gradients; docs/training.md), and ``native`` in eval mode and for a non-invertible activation.

The compiled kernels take float32, float64 and float16 only: a bfloat16 input (``train.precision=
bf16``) takes the pure-PyTorch path instead (``memory`` under ``auto``, else ``native``; logged
once). Inside :func:`running_stats_frozen` the compiled layer runs with momentum 0, so a
recomputed (checkpointed) forward pass does not update its running statistics a second time.
"""
import contextlib
import logging
import threading

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import is_distributed

try:  # optional compiled package
    import inplace_abn as _inplace_abn
    from inplace_abn import functions as _iabn_functions
except Exception:  # noqa: BLE001  (ImportError, or a broken build raising OSError)
    _inplace_abn = None
    _iabn_functions = None

__all__ = ["ABN", "ABN_BACKENDS", "compiled_abn_available", "activation_fn", "running_stats_frozen"]

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("leaky_relu", "elu", "identity")
ABN_BACKENDS = ("auto", "native", "compiled", "memory")
COMPILED_DTYPES = (torch.float32, torch.float64, torch.float16)   # what the kernels implement
_FALLBACK_LOGGED = set()


def compiled_abn_available() -> bool:
    return _iabn_functions is not None


def activation_fn(x: torch.Tensor, activation: str, activation_param: float) -> torch.Tensor:
    if activation == "leaky_relu":
        return F.leaky_relu(x, negative_slope=activation_param)
    if activation == "elu":
        return F.elu(x, alpha=activation_param)
    return x


class _Frozen(threading.local):
    active = False


_RUNNING_STATS_FROZEN = _Frozen()


@contextlib.contextmanager
def running_stats_frozen():
    """ABN layers run in this context do not update their running statistics (the batch
    statistics are still used in training mode): for recomputing a checkpointed forward pass,
    which must not count the batch twice."""
    before = _RUNNING_STATS_FROZEN.active
    _RUNNING_STATS_FROZEN.active = True
    try:
        yield
    finally:
        _RUNNING_STATS_FROZEN.active = before


def _synchronised() -> bool:
    """Batch statistics are all-reduced: a process group of several processes (or one, forced)."""
    return is_distributed()


class _AllReduceSum(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient, as the global loss requires."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _batch_stats(x: torch.Tensor, sync: bool):
    """Per-channel mean, biased variance and element count over (N, *spatial) [and processes].
    Half-precision inputs (autocast) are summed in float32: their squares overflow float16."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    dims = [0] + list(range(2, x.dim()))
    count = x.numel() // x.shape[1]
    if not sync:
        mean = x.mean(dim=dims)
        var = (x - mean.view(1, -1, *([1] * (x.dim() - 2)))).pow(2).mean(dim=dims)
        return mean, var, count
    # Two reductions (mean, then centred squares) for numerical safety.
    n_total = count * dist.get_world_size()
    mean = _AllReduceSum.apply(x.sum(dim=dims)) / n_total
    centred = x - mean.view(1, -1, *([1] * (x.dim() - 2)))
    var = _AllReduceSum.apply(centred.pow(2).sum(dim=dims)) / n_total
    return mean, var, n_total


def _check_backend(backend: str) -> None:
    if backend not in ABN_BACKENDS:
        raise ValueError(f"ABN backend must be one of {ABN_BACKENDS}, got {backend!r}")
    if backend == "compiled" and not compiled_abn_available():
        raise RuntimeError("ABN backend 'compiled' requested but the inplace-abn package does not "
                           "import; build it with scripts/build_inplace_abn.sh or use 'native'")


def _invert_activation(y: torch.Tensor, activation: str, param: float):
    """(z, dy/dz) from y = act(z): the activation is inverted from its output alone."""
    if activation == "leaky_relu":
        pos = y >= 0
        return torch.where(pos, y, y / param), torch.where(pos, torch.ones_like(y),
                                                           torch.full_like(y, param))
    if activation == "elu":            # y = alpha * (exp(z) - 1) for z < 0, so dy/dz = y + alpha
        pos = y >= 0
        return (torch.where(pos, y, torch.log1p(y / param)),
                torch.where(pos, torch.ones_like(y), y + param))
    return y, torch.ones_like(y)


class _MemoryABNFunction(torch.autograd.Function):
    """ABN forward/backward that keeps only the output (In-Place ABN's memory saving).

    ``mean``/``var`` are the (already all-reduced) batch statistics in training, or the running
    statistics in eval (``batch_stats=False``: they are constants for the gradient). ``count`` is
    the global number of elements per channel; ``sync`` all-reduces the backward's two
    per-channel sums over the process group.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, activation, param, batch_stats, count, sync):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        inv_std = torch.rsqrt(var + eps)
        scale = weight.abs() + eps
        # low-precision inputs (autocast) are normalised in float32; the output keeps their dtype
        z = (x.to(mean.dtype) - mean.view(shape)) * (inv_std * scale).view(shape) + bias.view(shape)
        y = activation_fn(z, activation, param).to(x.dtype)
        ctx.save_for_backward(y, inv_std, weight, bias)
        ctx.conf = (eps, activation, param, batch_stats, count, sync)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, inv_std, weight, bias = ctx.saved_tensors
        eps, activation, param, batch_stats, count, sync = ctx.conf
        in_dtype = y.dtype
        y, grad_y = y.to(weight.dtype), grad_y.to(weight.dtype)
        shape = (1, -1) + (1,) * (y.dim() - 2)
        dims = [0] + list(range(2, y.dim()))
        scale = weight.abs() + eps
        z, dact = _invert_activation(y, activation, param)
        dz = grad_y * dact
        xhat = (z - bias.view(shape)) / scale.view(shape)
        sum_dz = dz.sum(dim=dims)                 # this process's sums: the parameter gradients
        sum_dz_xhat = (dz * xhat).sum(dim=dims)
        grad_x = None
        if ctx.needs_input_grad[0]:
            if batch_stats:
                sums = torch.stack([sum_dz, sum_dz_xhat])
                if sync:
                    sums = sums.clone()
                    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
                mean_dz, mean_dz_xhat = (sums / count).unbind(0)
                dz = dz - mean_dz.view(shape) - xhat * mean_dz_xhat.view(shape)
            grad_x = (dz * (scale * inv_std).view(shape)).to(in_dtype)
        grad_w = sum_dz_xhat * torch.sign(weight) if ctx.needs_input_grad[1] else None
        grad_b = sum_dz if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None


class ABN(nn.Module):
    """Activated BatchNorm with the release's parameter names and maths.

    Args:
        num_features: channels C of the (N, C, ...) input.
        eps: added to the variance and to ``|weight|``.
        momentum: running-statistics momentum.
        activation: ``leaky_relu`` (default), ``elu`` or ``identity``.
        activation_param: negative slope (leaky_relu) or alpha (elu).
        backend: ``auto``, ``native``, ``compiled`` or ``memory``.
        sync: all-reduce batch statistics across processes when distributed (default True).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 activation: str = "leaky_relu", activation_param: float = 0.01,
                 backend: str = "auto", sync: bool = True):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"ABN activation must be one of {_ACTIVATIONS}, got {activation!r}")
        _check_backend(backend)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.activation = activation
        self.activation_param = activation_param
        self.backend = backend
        self.sync = sync
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def _use_compiled(self, x: torch.Tensor) -> bool:
        if not (self.backend == "compiled"
                or (self.backend == "auto" and x.is_cuda and compiled_abn_available())):
            return False
        if x.dtype not in COMPILED_DTYPES:
            if x.dtype not in _FALLBACK_LOGGED:
                _FALLBACK_LOGGED.add(x.dtype)
                logger.info("inplace-abn's kernels do not take %s: ABN layers use the "
                            "pure-PyTorch path for it", x.dtype)
            return False
        return True

    def _use_memory(self) -> bool:
        if self.backend == "memory":
            return True
        invertible = self.activation != "leaky_relu" or self.activation_param > 0
        return (self.backend == "auto" and self.training and invertible
                and torch.is_grad_enabled())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_compiled(x):
            return self._forward_compiled(x)
        if self._use_memory():
            return self._forward_memory(x)
        return self._forward_native(x)

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        if _RUNNING_STATS_FROZEN.active:       # a checkpointed stage's recomputation
            return
        with torch.no_grad():
            unbiased = var * (n / max(n - 1, 1))
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased.detach())

    def _forward_memory(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "leaky_relu" and self.activation_param <= 0:
            raise ValueError("ABN backend 'memory' needs an invertible activation "
                             f"(leaky_relu slope > 0), got {self.activation_param}")
        sync = self.training and self.sync and _synchronised()
        if self.training:
            with torch.no_grad():          # the function's backward differentiates the stats
                mean, var, n = _batch_stats(x.detach().to(self.weight.dtype), sync=sync)
            self._update_running(mean, var, n)
        else:
            mean, var, n = self.running_mean, self.running_var, 0
        return _MemoryABNFunction.apply(x, self.weight, self.bias, mean, var, self.eps,
                                        self.activation, self.activation_param, self.training,
                                        n, sync)

    def _forward_native(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:   # autocast: normalise in float32, answer in x's dtype
            return self._forward_native(x.to(self.weight.dtype)).to(x.dtype)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            mean, var, n = _batch_stats(x, sync=self.sync and _synchronised())
            self._update_running(mean, var, n)
        else:
            mean, var = self.running_mean, self.running_var
        scale = (self.weight.abs() + self.eps) * torch.rsqrt(var + self.eps)
        y = (x - mean.view(shape)) * scale.view(shape) + self.bias.view(shape)
        return activation_fn(y, self.activation, self.activation_param)

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        # The compiled kernels overwrite their input in place (the point of the layer, and safe
        # here because every ABN input is a fresh convolution output); a leaf is copied first.
        x = x.clone() if x.is_leaf and x.requires_grad else x.contiguous()
        # momentum 0 leaves the running statistics as they are (a checkpointed recomputation)
        momentum = 0.0 if _RUNNING_STATS_FROZEN.active else self.momentum
        if self.training and self.sync and _synchronised():
            return _iabn_functions.inplace_abn_sync(
                x, self.weight, self.bias, self.running_mean, self.running_var, True,
                momentum, self.eps, self.activation, self.activation_param, dist.group.WORLD)
        return _iabn_functions.inplace_abn(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.training,
            momentum, self.eps, self.activation, self.activation_param)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"activation={self.activation}({self.activation_param}), backend={self.backend}")


def convert_abn_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set the backend of every ABN layer in ``module`` (in place) and return it."""
    _check_backend(backend)
    for m in module.modules():
        if isinstance(m, ABN):
            m.backend = backend
    return module
