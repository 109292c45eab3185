"""Winograd minimal-filtering convolution F(m x m, 3 x 3) for CPU inference.

A 3x3 stride-1 convolution computes each m x m output tile from an (m + 2) x (m + 2) input tile.
Winograd's algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR
2016) rewrites that tile as ``Y = A^T [(G g G^T) * (B^T d B)] A``: after transforming the filters
once (``U = G g G^T``) and the input tiles (``V = B^T d B``), the channel reduction is
``(m + 2)**2`` independent matrix products ``M[xi] = V[xi] @ U[xi]`` instead of one product with
nine times the filter taps per output pixel. Multiplies per output pixel and channel pair drop
from 9 to ``(m + 2)**2 / m**2``: 4 for F(2x2, 3x3), 2.25 for F(4x4, 3x3).

Where the dense convolutions run at the machine's peak (the DML-CSR backbone and context module at
batch 1 on a CPU, docs/inference.md), fewer multiplies is the only way to a lower latency. The
transforms are exact small-integer / dyadic maps for F(2x2): the result differs from the direct
convolution by float rounding only (tests check 1e-4 against ``F.conv2d`` and against the plain
module); F(4x4) has larger, non-dyadic transform coefficients and somewhat larger rounding error.

Dilated 3x3 convolutions (``padding == dilation``) are handled by the polyphase identity: a
dilation-d convolution equals an undilated one on each of the d x d interleaved sub-grids.
"""
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WinogradConv2d", "winograd_eligible", "winograd_matrices"]


def winograd_matrices(m: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T, G, A^T) of F(m x m, 3 x 3) in float64: shapes (a, a), (a, 3), (m, a), a = m + 2."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"Winograd tile m must be 2 or 4, got {m}")
    f64 = torch.float64
    return torch.tensor(bt, dtype=f64), torch.tensor(g, dtype=f64), torch.tensor(at, dtype=f64)


def winograd_eligible(conv: nn.Module) -> bool:
    """A plain 3x3, stride-1, 'same'-padded (padding == dilation), ungrouped 2-d convolution."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.dilation[0] == conv.dilation[1]
            and conv.padding == conv.dilation and conv.padding_mode == "zeros")


def _coefficients(matrix: torch.Tensor) -> List[List[Tuple[int, float]]]:
    """Row-wise nonzero (column, value) pairs of a small transform matrix."""
    return [[(k, float(v)) for k, v in enumerate(row.tolist()) if v != 0] for row in matrix]


def _combine(coeffs: List[List[Tuple[int, float]]], src: List[torch.Tensor],
             out: List[torch.Tensor]) -> None:
    """out[r] = sum_k coeffs[r][k] * src[k], written into the (possibly strided) views ``out``."""
    for dst, row in zip(out, coeffs):
        (k0, c0), rest = row[0], row[1:]
        if c0 == 1:
            dst.copy_(src[k0])
        elif dst.is_contiguous():
            torch.mul(src[k0], c0, out=dst)                  # one pass
        else:
            dst.copy_(src[k0]).mul_(c0)
        for k, c in rest:
            dst.add_(src[k], alpha=c)


class WinogradConv2d(nn.Module):
    """Inference-only drop-in for an eligible ``nn.Conv2d`` (:func:`winograd_eligible`).

    Same input and output as the convolution (N, C, H, W); the output has the channels_last
    memory layout. The transformed filters ``U`` (a*a, C_in, C_out) are computed once in float64
    from ``conv``'s weight.

    Args:
        conv: the convolution to replace (its weight and bias are copied).
        m: output tile size, 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)).
    """

    def __init__(self, conv: nn.Conv2d, m: int = 2):
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"not a 3x3 stride-1 same-padded ungrouped Conv2d: {conv}")
        bt, g, at = winograd_matrices(m)
        self.m, self.alpha = m, m + 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.dilation = conv.dilation[0]
        w = conv.weight.detach()                                            # (Co, Ci, 3, 3)
        u = torch.empty(self.alpha ** 2, self.in_channels, self.out_channels, dtype=w.dtype,
                        device=w.device)
        step = 64   # float64 a few output channels at a time: a whole large layer took ~1 GB
        for o in range(0, self.out_channels, step):
            part = torch.einsum("ai,ocij,bj->abco", g, w[o:o + step].double(), g)  # (a, a, Ci, co)
            u[:, :, o:o + step] = part.reshape(self.alpha ** 2, self.in_channels, -1).to(w.dtype)
        self.register_buffer("u", u)
        self._bt = _coefficients(bt)
        self._at = _coefficients(at)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, F({self.m}x{self.m}, 3x3), "
                f"dilation={self.dilation}, bias={self.bias is not None}")

    def _undilated(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, Ci) -> (N, H, W, Co): the undilated 3x3 'same' convolution, no bias.

        Both transforms are separable and applied one axis at a time with strided slices and
        fused multiply-adds over whole tensors (no per-tile work): the input transform writes
        V (a, a, N, th, tw, Ci) contiguously, so the a*a products are one ``bmm``.
        """
        n, h, w, c = x.shape
        m, a, co = self.m, self.alpha, self.out_channels
        th, tw = -(-h // m), -(-w // m)
        # zero 'same' padding of 1, plus what completes the last tile
        xp = F.pad(x, (0, 0, 1, tw * m + 1 - w, 1, th * m + 1 - h))       # (N, th*m+2, tw*m+2, Ci)
        rows = x.new_empty(a, n, th, tw * m + 2, c)
        _combine(self._bt, [xp[:, k:k + m * th:m] for k in range(a)], list(rows))
        v = x.new_empty(a, a, n, th, tw, c)
        _combine(self._bt, [rows[:, :, :, k:k + m * tw:m] for k in range(a)], [v[:, b] for b in range(a)])
        prod = torch.bmm(v.view(a * a, n * th * tw, c), self.u).view(a, a, n, th, tw, co)
        cols = x.new_empty(m, a, n, th, tw, co)                              # [j, a]: A^T along b
        _combine(self._at, [prod[:, b] for b in range(a)], list(cols))
        y = x.new_empty(n, th, m, tw, m, co)
        y_ij = y.permute(2, 4, 0, 1, 3, 5)                                   # (i, j, N, th, tw, Co) view
        _combine(self._at, [cols[:, k] for k in range(a)], [y_ij[i] for i in range(m)])
        return y.view(n, th * m, tw * m, co)[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        x = x.permute(0, 2, 3, 1)                                            # (N, H, W, C) view
        d = self.dilation
        if d == 1:
            y = self._undilated(x)
        else:
            hd, wd = -(-h // d), -(-w // d)
            xp = F.pad(x, (0, 0, 0, wd * d - w, 0, hd * d - h))
            # polyphase split: sub-grid (r, s) holds pixels (d*i + r, d*j + s)
            sub = xp.reshape(n, hd, d, wd, d, c).permute(0, 2, 4, 1, 3, 5).reshape(n * d * d, hd, wd, c)
            y = self._undilated(sub).reshape(n, d, d, hd, wd, self.out_channels)
            y = y.permute(0, 3, 1, 4, 2, 5).reshape(n, hd * d, wd * d, self.out_channels)[:, :h, :w]
        if self.bias is not None:
            y = y + self.bias
        return y.permute(0, 3, 1, 2)                                         # NCHW, channels_last memory
