"""The one test-time path, shared by the benchmark protocol (``eval/inference.py``) and the parser
for photos (``deploy/parser.py``):

1. crop: ``data.transforms.crop_input`` (the affine crop of a region, normalised);
2. logits: :func:`predict_logits`, the model's parsing logits on the output grid, with the
   optional flip / multi-scale test-time augmentation;
3. labels: :func:`labels_of`, the argmax in crop space;
4. back: ``data.transforms.warp_back``, the inverse crop onto the photo (or label) pixels.

Test-time augmentation (off by default; neither the paper nor the release uses it): every pass
(each scale, each with and without a horizontal flip) gives logits on the output grid; their
softmax probabilities are averaged and the log of the mean is returned. Probabilities rather than
logits because passes at different scales are not calibrated alike and a single over-confident pass
would dominate a logit average. Without TTA the model's logits are returned unchanged.

A model here is a parsing model (``models.contract.ParsingModel``: ``model(x, size=...)``
returns a ``ParsingOutput``), a wrapper keeping that contract (the optimised inference module, an
ONNX file's ``OnnxParsingModel``), or any callable ``(x, size) -> (N, K, h, w)`` logits on a grid
of its own (resized here).
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .distributed import unwrap
from .layers.blocks import upsample
from .models.contract import resize_logits_to

__all__ = ["predict_logits", "flip_logits", "labels_of", "check_tta", "model_device"]

Model = Union[nn.Module, Callable]


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters (else buffers) live; the CPU for a module without either
    (an ONNX file's wrapper)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _forward_at(model: Model, x: torch.Tensor, out_size: Tuple[int, int]) -> torch.Tensor:
    """(N, 3, h, w) -> (N, K, *out_size) parsing logits of one pass."""
    out = model(x, size=out_size)
    logits = getattr(out, "parsing", out)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise TypeError(f"the model returned {type(out).__name__}, not (N, K, h, w) logits or a "
                        "ParsingOutput")
    return resize_logits_to(logits, out_size)


def flip_logits(logits: torch.Tensor, flip_permutation: Sequence[int]) -> torch.Tensor:
    """Mirror (N, K, H, W) logits of a flipped input back: flip the width and swap left/right.

    ``flip_permutation[c]`` is the class that ``c`` becomes under a flip (``Schema.
    flip_permutation``); channel ``c`` of the result is channel ``flip_permutation[c]`` of the
    mirrored input's logits.
    """
    perm = torch.as_tensor(list(flip_permutation), dtype=torch.long, device=logits.device)
    if perm.numel() != logits.shape[1]:
        raise ValueError(f"flip permutation has {perm.numel()} entries, logits {logits.shape[1]} "
                         "channels")
    return logits.flip(-1).index_select(1, perm)


def check_tta(flip: bool, flip_permutation: Optional[Sequence[int]],
              scales: Sequence[float]) -> Tuple[float, ...]:
    """The test-time augmentation settings checked; returns ``scales`` as floats."""
    if flip and flip_permutation is None:
        raise ValueError("flip TTA needs the schema's flip_permutation to swap left/right classes")
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales must hold at least one factor")
    bad = [s for s in scales if not s > 0]
    if bad:
        raise ValueError(f"scales must be positive, got {bad[0]}")
    return scales


def predict_logits(model: Model, images: torch.Tensor, out_size: Tuple[int, int], *,
                   flip: bool = False, flip_permutation: Optional[Sequence[int]] = None,
                   scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Parsing logits of a batch of crops at ``out_size``.

    Args:
        model: a parsing model, a wrapper keeping its contract, or a callable ``(x, size)``
            (module docstring); DistributedDataParallel is bypassed (uneven shards, buffer syncs).
        images: (N, 3, H, W) normalised crops, on the model's device.
        out_size: (H, W) of the returned logits, normally the crop size.
        flip: add horizontally flipped passes (needs ``flip_permutation``).
        flip_permutation: left/right class permutation of the label schema.
        scales: resize factors of the input crop; each pass is resized back to ``out_size``.

    Returns:
        (N, K, H, W) logits: the model's own for a single pass; with TTA the float log of the
        mean softmax probability over all passes (module docstring).
    """
    out_size = (int(out_size[0]), int(out_size[1]))
    scales = check_tta(flip, flip_permutation, scales)
    model = unwrap(model) if isinstance(model, nn.Module) else model
    h, w = images.shape[-2:]
    passes = 0
    prob_sum: Optional[torch.Tensor] = None
    for s in scales:
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        x = images if size == (h, w) else upsample(images, size)
        for flipped in ((False, True) if flip else (False,)):
            logits = _forward_at(model, x.flip(-1) if flipped else x, out_size)
            if flipped:
                logits = flip_logits(logits, flip_permutation)
            if len(scales) == 1 and not flip:       # one pass: the model's own logits
                return logits
            prob = logits.float().softmax(1)
            prob_sum = prob if prob_sum is None else prob_sum.add_(prob)
            passes += 1
    return (prob_sum / passes).clamp_min_(1e-12).log_()


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits -> (N, H, W) uint8 class ids (the argmax; K <= 256)."""
    if logits.shape[1] > 256:
        raise ValueError(f"{logits.shape[1]} classes do not fit uint8 label maps")
    return logits.argmax(1).to(torch.uint8)
