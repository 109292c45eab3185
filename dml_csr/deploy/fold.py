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
4. ``torch.inference_mode`` around the forward; the module refuses ``train()``. Activations whose
   input is a temporary (an ``nn.ReLU`` / ``nn.LeakyReLU`` right after a convolution or linear
   layer in an ``nn.Sequential``, those of ``INPLACE_ACTIVATIONS`` and the activations that
   replaced the attribute norms of ``FOLD_ATTRIBUTE_PAIRS``) run in place: no new
   activation tensor per layer. On the CPU a batch is run ``micro_batch`` images at a time
   (default 1: DML-CSR at 473 runs faster per image at batch 1 than at batch 8 on the project's
   CPU, docs/inference.md).
5. **Precision** (``precision``): ``"fp32"`` (everything above); ``"bf16"``: on the CPU the
   folded module is cast to bfloat16 (weights and activations; oneDNN's bf16 convolutions),
   inputs are cast on the way in and
   outputs come back float32; on CUDA the float32 module runs under bf16 autocast. Not exact: its
   agreement with float32 is measured, not assumed (docs/inference.md).

Thread settings are the caller's (:func:`set_inference_threads`).
"""
import copy
from typing import Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..layers.abn import ABN
from ..models.contract import ParsingOutput

PRECISIONS = ("fp32", "bf16")

__all__ = ["optimize_for_inference", "fold_norms", "fold_conv_norm", "InferenceModule", "PRECISIONS",
           "set_inference_threads", "folded_norms", "inplace_activations"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONV = (nn.Conv1d, nn.Conv2d)


def folded_norms(module: nn.Module) -> Tuple[Tuple[str, str, bool], ...]:
    """The attribute pairs a module class declares foldable: its ``folded_norms`` class
    attribute, ``(conv attribute, norm attribute, a ReLU always follows the norm)`` per pair,
    for convolutions whose output goes to the norm only (a layer's own file says so: the
    Bottleneck, the DML-CSR stem, the DDGCN's graph units)."""
    return tuple(getattr(type(module), "folded_norms", ()))


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
        for conv_attr, norm_attr, relu_follows in folded_norms(module):
            conv, norm = getattr(module, conv_attr, None), getattr(module, norm_attr, None)
            if conv is not None and norm is not None and _foldable(conv, norm):
                setattr(module, norm_attr, fold_conv_norm(conv, norm, relu_follows))
                folded.append(prefix + norm_attr)
    return folded


_ACTS = (nn.ReLU, nn.LeakyReLU)
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def inplace_activations(model: nn.Module) -> List[str]:
    """Make the activations that only see temporaries run in place (module docstring, item 4);
    returns their names. Inference only: in-place activations break autograd's saved inputs."""
    names: List[str] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (_, prev), (key, act) in zip(children, children[1:]):
                if isinstance(act, _ACTS) and isinstance(prev, _PRODUCERS):
                    act.inplace = True
                    names.append(prefix + key)
        # a class's ``temporary_activations`` are only ever applied to a temporary tensor (after
        # folding: conv -> Identity -> activation, or a sum); a folded attribute norm became an
        # activation of its convolution's output (a temporary too)
        temporaries = tuple(getattr(type(module), "temporary_activations", ()))
        for attr in temporaries + tuple(norm for _, norm, _ in folded_norms(module)):
            act = getattr(module, attr, None)
            if isinstance(act, _ACTS):
                act.inplace = True
                names.append(prefix + attr)
    return names


class InferenceModule(nn.Module):
    """Eval-only wrapper: channels_last input, ``torch.inference_mode``, NCHW outputs.

    ``forward`` takes the wrapped model's arguments (e.g. ``size=`` for FP-LIIF).
    """

    def __init__(self, model: nn.Module, channels_last: bool = True, folded: Iterable[str] = (),
                 micro_batch: Optional[int] = None, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model.eval()
        self.precision = precision
        self.channels_last = channels_last
        self.folded = tuple(folded)
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be positive or None, got {micro_batch}")
        self.micro_batch = micro_batch

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an optimize_for_inference module is eval-only (its norms are folded)")
        return super().train(False)

    @staticmethod
    def _contiguous(out: Union[ParsingOutput, torch.Tensor]):
        """Contiguous float32 outputs (a bf16 module's come back as float32)."""
        if isinstance(out, torch.Tensor):        # a plain module (folding works on any network)
            return out.float().contiguous()
        return ParsingOutput(*(None if t is None else t.float().contiguous() for t in out))

    def _run(self, x: torch.Tensor, *args, **kwargs):
        if self.precision == "fp32":
            return self._contiguous(self.model(x, *args, **kwargs))
        if x.device.type == "cuda":              # float32 weights under autocast
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self._contiguous(self.model(x, *args, **kwargs))
        return self._contiguous(self.model(x.to(torch.bfloat16), *args, **kwargs))

    @staticmethod
    def _cat(outs: List[Union[ParsingOutput, torch.Tensor]]):
        if isinstance(outs[0], torch.Tensor):
            return torch.cat(outs)
        return ParsingOutput(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*outs)))

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with torch.inference_mode():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.micro_batch is None or x.shape[0] <= self.micro_batch:
                return self._run(x, *args, **kwargs)
            return self._cat([self._run(part, *args, **kwargs) for part in x.split(self.micro_batch)])


def optimize_for_inference(model: nn.Module, fold: bool = True, channels_last: bool = True,
                           inplace: bool = False,
                           micro_batch: Union[str, int, None] = "auto",
                           precision: str = "fp32") -> InferenceModule:
    """An eval-only copy of ``model`` with norms folded (module docstring); outputs equal the plain
    eval-mode module's to float rounding (~1e-5). ``inplace=True`` reuses ``model``'s weights.

    ``micro_batch``: ``"auto"`` = 1 on the CPU and None (whole batches) on CUDA; an int or None
    sets it. ``precision``: ``"fp32"`` or ``"bf16"`` (module docstring). On the CPU the parser's
    float32 default is onnxruntime, which runs this folded form faster (docs/inference.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(model, InferenceModule):
        return model
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    folded = fold_norms(m) if fold else []
    on_cpu = all(p.device.type == "cpu" for p in m.parameters())
    cast = precision == "bf16" and on_cpu
    inplace_activations(m)
    if cast:
        m = m.to(torch.bfloat16)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if micro_batch == "auto":
        micro_batch = 1 if on_cpu else None
    return InferenceModule(m, channels_last=channels_last, folded=folded,
                           micro_batch=micro_batch, precision=precision)


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
