"""Inference-only speed-ups: fold every normalisation into its convolution, channels_last, no autograd.

What :func:`optimize_for_inference` does to a (deep) copy of the model, all exact up to float
rounding (a test checks 1e-4 against the plain eval-mode module):

1. **Folding** (eval statistics). An ABN in eval mode is an affine map per channel,
   ``y = act(x * s + t)`` with ``s = (|w| + eps) / sqrt(running_var + eps)`` and
   ``t = b - running_mean * s``; a BatchNorm{1,2}d the same with ``s = w / sqrt(var + eps)``. When
   ``x`` is a convolution's output only, ``s`` scales the convolution's output channels and ``t``
   becomes (or is added to) its bias. The normalisation is then replaced by its activation alone
   (``nn.LeakyReLU(slope)``, ``nn.ELU`` or ``nn.Identity``). Folded pairs:

   - ``nn.Sequential`` children ``(Conv, ABN|BN)`` anywhere (``conv_abn`` blocks, downsample,
     decoder ``conv3``, DDGCN ``local`` (depthwise: the per-output-channel scale folds the same
     way), ``final``, SpatialGCN ``out`` (a conv *with* bias));
   - attribute pairs whose forward feeds the convolution's output only to the norm:
     ``Bottleneck`` ``conv{1,2,3}/bn{1,2,3}``, the DML-CSR stem ``conv{1,2,3}/bn{1,2,3}``,
     ``DDualGCN`` ``phi/bn_phi``, ``theta/bn_theta``, ``conv3/bn3``, ``conv_adj/bn_adj`` and
     ``conv_wg/bn_wg`` (Conv1d + BatchNorm1d), ``SpatialGCN`` ``conv_wg/bn_wg``.

   Anything else (a norm not behind a convolution) is left as it is; the DML-CSR network has none.
2. **leaky_relu + ReLU**: where a folded ABN's leaky_relu is followed by a ReLU (stem,
   ``Bottleneck`` bn1/bn2) the pair is one ReLU (``relu(leaky_relu(x)) == relu(x)``: both keep
   the sign), so that activation becomes ``nn.Identity``. ``bn3`` keeps its leaky_relu (the
   residual add comes before the ReLU).
3. **channels_last** weights and inputs (oneDNN's preferred layout on CPU), outputs returned
   contiguous (NCHW) so callers see the same tensors.
4. ``torch.inference_mode`` around the forward; the module refuses ``train()``.

Thread settings are the caller's (:func:`set_inference_threads`).
"""
import copy
from typing import Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..layers.abn import ABN

__all__ = ["optimize_for_inference", "fold_norms", "fold_conv_norm", "InferenceModule",
           "set_inference_threads", "FOLD_ATTRIBUTE_PAIRS"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONV = (nn.Conv1d, nn.Conv2d)

# class name -> (conv attribute, norm attribute, a ReLU always follows the norm)
FOLD_ATTRIBUTE_PAIRS = {
    "Bottleneck": (("conv1", "bn1", True), ("conv2", "bn2", True), ("conv3", "bn3", False)),
    "DMLCSR": (("conv1", "bn1", True), ("conv2", "bn2", True), ("conv3", "bn3", True)),
    "DDualGCN": (("phi", "bn_phi", False), ("theta", "bn_theta", False), ("conv3", "bn3", False),
                 ("conv_adj", "bn_adj", False), ("conv_wg", "bn_wg", False)),
    "SpatialGCN": (("conv_wg", "bn_wg", False),),
}


def _norm_affine(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode ABN / BatchNorm, in float64."""
    mean = norm.running_mean.double()
    var = norm.running_var.double()
    if isinstance(norm, ABN):
        scale = (norm.weight.double().abs() + norm.eps) / torch.sqrt(var + norm.eps)
        shift = norm.bias.double() - mean * scale
        return scale, shift
    w = norm.weight.double() if norm.affine else torch.ones_like(mean)
    b = norm.bias.double() if norm.affine else torch.zeros_like(mean)
    scale = w / torch.sqrt(var + norm.eps)
    return scale, b - mean * scale


def _activation_of(norm: nn.Module, relu_follows: bool) -> nn.Module:
    if isinstance(norm, ABN):
        if norm.activation == "leaky_relu":
            # relu(leaky_relu(x)) == relu(x): the following ReLU does the whole job
            return nn.Identity() if relu_follows else nn.LeakyReLU(norm.activation_param)
        if norm.activation == "elu":
            return nn.ELU(norm.activation_param)
    return nn.Identity()


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(conv, _CONV) or not isinstance(norm, (ABN,) + _BN):
        return False
    if getattr(norm, "running_mean", None) is None:  # track_running_stats=False: batch stats
        return False
    return conv.out_channels == norm.num_features


@torch.no_grad()
def fold_conv_norm(conv: nn.Module, norm: nn.Module, relu_follows: bool = False) -> nn.Module:
    """Fold eval-mode ``norm`` into ``conv`` (in place); returns the activation that replaces
    ``norm``. ``conv``'s weight (Cout, Cin/groups, k...) is scaled per output channel."""
    scale, shift = _norm_affine(norm)
    w = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    b = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.copy_(w.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(b.to(conv.weight.dtype))
    else:
        conv.bias.copy_(b.to(conv.bias.dtype))
    return _activation_of(norm, relu_follows)


def fold_norms(model: nn.Module) -> List[str]:
    """Fold every safely foldable (conv, norm) pair of ``model`` in place (module docstring).

    Returns the qualified names of the folded norms (what was folded, for logs and tests).
    """
    folded: List[str] = []
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (ck, conv), (nk, norm) in zip(children, children[1:]):
                if _foldable(conv, norm):
                    module._modules[nk] = fold_conv_norm(conv, norm)
                    folded.append(prefix + nk)
        for conv_attr, norm_attr, relu_follows in FOLD_ATTRIBUTE_PAIRS.get(type(module).__name__, ()):
            conv, norm = getattr(module, conv_attr, None), getattr(module, norm_attr, None)
            if conv is not None and norm is not None and _foldable(conv, norm):
                setattr(module, norm_attr, fold_conv_norm(conv, norm, relu_follows))
                folded.append(prefix + norm_attr)
    return folded


class InferenceModule(nn.Module):
    """Eval-only wrapper: channels_last input, ``torch.inference_mode``, NCHW outputs.

    ``forward`` takes the wrapped model's arguments (e.g. ``size=`` for FP-LIIF).
    """

    def __init__(self, model: nn.Module, channels_last: bool = True, folded: Iterable[str] = ()):
        super().__init__()
        self.model = model.eval()
        self.channels_last = channels_last
        self.folded = tuple(folded)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an optimize_for_inference module is eval-only (its norms are folded)")
        return super().train(False)

    @staticmethod
    def _contiguous(out):
        if isinstance(out, torch.Tensor):
            return out.contiguous()
        if isinstance(out, (tuple, list)):
            return type(out)(InferenceModule._contiguous(o) for o in out)
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with torch.inference_mode():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return self._contiguous(self.model(x, *args, **kwargs))


def optimize_for_inference(model: nn.Module, fold: bool = True, channels_last: bool = True,
                           inplace: bool = False) -> InferenceModule:
    """An eval-only copy of ``model`` with norms folded (module docstring); outputs equal the plain
    eval-mode module's to float rounding (~1e-5). ``inplace=True`` reuses ``model``'s weights."""
    if isinstance(model, InferenceModule):
        return model
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    folded = fold_norms(m) if fold else []
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return InferenceModule(m, channels_last=channels_last, folded=folded)


def set_inference_threads(num_threads: Optional[int] = None, interop: Optional[int] = None) -> int:
    """Set torch's intra-op threads (default: the CPUs available to this process) and, once,
    the inter-op threads; returns the intra-op count."""
    import os
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:
            num_threads = os.cpu_count() or 1
    torch.set_num_threads(int(num_threads))
    if interop is not None:
        try:
            torch.set_num_interop_threads(int(interop))
        except RuntimeError:  # can only be set before any parallel work started
            pass
    return torch.get_num_threads()
