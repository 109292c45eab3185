"""FP-LIIF: a parameter-efficient local implicit image function network for face parsing.

Sarkar et al., "Parameter Efficient Local Implicit Image Function Network for Face Segmentation",
CVPR 2023 (arXiv 2303.15122). No official code exists; see docs/fp_liif.md for which parts of this
file are the paper's (verified from the abstract and project page) and which are this project's
choices (every such number is a keyword argument of `FPLIIF`).

Pipeline (shapes for the defaults, input N x 3 x 256 x 256, K classes)::

    x (N,3,256,256)
    -> stem conv3x3                      (N,64,256,256)
    -> group1 (2 blocks)  -> down1 s2    (N,64,128,128)
    -> group2 (6 blocks)  -> down2 s2    (N,64,64,64)
    -> group3 (16 blocks)                = Z (N,64,64,64)
    Z -> 3x3 unfold (pad 1)              (N,576,64,64)
      -> reduce MLP 576->256->64         (N,64,64,64)   the latent grid
    Z -> global average pool             g (N,64)
    per output pixel q (any H x W):
      [latent feature at q (64), g (64), coordinate (2), (cell (2))] -> MLP 256x4 -> K logits

Coordinates follow LIIF: pixel centres on [-1, 1], the i-th of n at -1 + (2i + 1) / n (the
align_corners=False convention), stored in (x, y) order as `F.grid_sample` expects.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Literal, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import ParsingModel, ParsingOutput

__all__ = ["FPLIIF", "FPLIIFLatent", "ResidualBlock", "ResidualGroup", "pixel_centres", "unfold3x3"]

QueryMode = Literal["bilinear", "local_ensemble"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_ACT_TYPES = tuple(_ACTIVATIONS.values())


def _make_act(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def pixel_centres(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """Pixel-centre coordinates of an H x W grid, (H*W, 2) in (x, y) order, row-major, in (-1, 1)."""
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(height * width, 2)


def unfold3x3(z: Tensor, kernel_size: int = 3) -> Tensor:
    """LIIF feature unfolding: each position gets its k x k neighbourhood (zero padding k // 2).

    Same values and channel order as `F.unfold(z, k, padding=k // 2)` reshaped to
    (N, C*k*k, H, W) (channel-major, kernel positions row-major), written with pad + slices so
    that it exports to ONNX as plain Pad/Slice/Concat.
    """
    if kernel_size == 1:
        return z
    n, c, h, w = z.shape
    p = kernel_size // 2
    zp = F.pad(z, (p, p, p, p))
    shifted = [zp[:, :, dy:dy + h, dx:dx + w] for dy in range(kernel_size) for dx in range(kernel_size)]
    return torch.stack(shifted, dim=2).reshape(n, c * kernel_size * kernel_size, h, w)


class ResidualBlock(nn.Module):
    """Modified (EDSR-style) residual block: conv3x3 - act - conv3x3 plus identity, no BN, no act after the sum."""

    temporary_activations = ("act",)       # sees conv1's output only: in place at inference

    def __init__(self, channels: int, act: str = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = _make_act(act)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class ResidualGroup(nn.Module):
    """`depth` residual blocks wrapped by a group-level identity skip: x + blocks(x).

    No convolution closes the group (EDSR's body ends with one); the project's ~2.25M parameter
    target for the defaults assumes none (a closing conv per group would add 3 x 36,928).
    """

    def __init__(self, channels: int, depth: int, act: str = "relu") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(channels, act) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return x + self.blocks(x)


class FPLIIFLatent(NamedTuple):
    """What the encoder hands the implicit decoder; reusable for any number of output sizes."""

    grid: Tensor  # (N, C_r, h, w) reduced, unfolded features (C_r = reduce_dims[-1])
    global_feat: Optional[Tensor]  # (N, width) global average pool of Z, or None


class FPLIIF(ParsingModel):
    """FP-LIIF face parser (the ``fp_liif`` family): residual encoder + local implicit per-pixel
    MLP decoder; it decodes at any output size and at query points (``decodes_any_size``).

    Args:
        num_classes: K, number of output classes.
        in_channels: input image channels.
        width: channels of every encoder convolution (Z has `width` channels).
        blocks: residual blocks per group; a stride-2 conv3x3 follows every group but the last,
            so Z is at 1 / 2**(len(blocks) - 1) of the input (1/4 for three groups).
        act: activation of the encoder blocks and both MLPs ("relu", "gelu", "silu").
        unfold: LIIF feature-unfolding kernel (odd; 1 disables unfolding).
        reduce_dims: output widths of the 1x1-conv MLP applied to the unfolded grid
            (width * unfold**2 -> 256 -> 64 by default; activation between layers, none after).
        decoder_dims: hidden widths of the per-pixel MLP (a final Linear maps to K).
        pos_encoding: feed a 2-d coordinate per query: the absolute pixel-centre coordinate in
            [-1, 1] for query="bilinear", the LIIF relative coordinate for "local_ensemble".
        global_feature: concatenate g = mean of Z over space (width channels) to every query.
        query: "bilinear" samples the latent grid bilinearly at each output pixel (equal to
            upsampling it with align_corners=False); "local_ensemble" is LIIF's local ensemble.
        cell_decode: also feed the output pixel size, measured in latent cells (LIIF's cell).
        chunk_size: output pixels per decoder evaluation when gradients are disabled (None:
            never chunk by default). `forward(..., chunk_size=n)` forces chunking at any time.
            4096 (default) was the fastest setting measured (docs/benchmarks.md, docs/fp_liif.md):
            the per-chunk activations stay small.
        stem_stride: stride of the stem conv3x3. 1 (default): group 1 runs at the input size and
            Z is at 1/4; 2: every group runs at half the size and Z is at 1/8 (about a quarter of
            the encoder's FLOPs).
        init: "kaiming" (default; He-normal for the layers before an activation, each residual
            block's second conv zero so blocks start as the identity; `_kaiming_init`) or
            "default" (PyTorch's layer initialisation). On the synthetic preset "kaiming" reached
            a test mean F1 of 73.5 where "default" reached 47.0 (docs/fp_liif.md).

    Decoder input width = reduce_dims[-1] + width * global_feature + 2 * pos_encoding
    + 2 * cell_decode (64 + 64 + 2 = 130 by default).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        blocks: Sequence[int] = (2, 6, 16),
        act: str = "relu",
        unfold: int = 3,
        reduce_dims: Sequence[int] = (256, 64),
        decoder_dims: Sequence[int] = (256, 256, 256, 256),
        pos_encoding: bool = True,
        global_feature: bool = True,
        query: QueryMode = "bilinear",
        cell_decode: bool = False,
        chunk_size: Optional[int] = 4096,
        stem_stride: int = 1,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if query not in ("bilinear", "local_ensemble"):
            raise ValueError(f"query must be 'bilinear' or 'local_ensemble', got {query!r}")
        if unfold < 1 or unfold % 2 == 0:
            raise ValueError(f"unfold must be a positive odd kernel size, got {unfold}")
        if len(blocks) < 1:
            raise ValueError("blocks needs at least one group")
        if init not in ("default", "kaiming"):
            raise ValueError(f"init must be 'default' or 'kaiming', got {init!r}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        self.num_classes = num_classes
        self.unfold = unfold
        self.pos_encoding = pos_encoding
        self.global_feature = global_feature
        self.query_mode = query
        self.cell_decode = cell_decode
        self.chunk_size = chunk_size

        layers: "OrderedDict[str, nn.Module]" = OrderedDict(
            stem=nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1))
        for i, depth in enumerate(blocks, start=1):
            layers[f"group{i}"] = ResidualGroup(width, depth, act)
            if i < len(blocks):
                layers[f"down{i}"] = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.encoder = nn.Sequential(layers)

        reduce: List[nn.Module] = []
        dim = width * unfold * unfold
        for i, out in enumerate(reduce_dims):
            if i > 0:
                reduce.append(_make_act(act))
            reduce.append(nn.Conv2d(dim, out, 1))
            dim = out
        self.reduce = nn.Sequential(*reduce)  # empty (identity) when reduce_dims == ()
        self.latent_dim = dim

        dim = self.latent_dim + (width if global_feature else 0) + (2 if pos_encoding else 0) + (2 if cell_decode else 0)
        self.decoder_in_dim = dim
        mlp: List[nn.Module] = []
        for hidden in decoder_dims:
            mlp += [nn.Linear(dim, hidden), _make_act(act)]
            dim = hidden
        mlp.append(nn.Linear(dim, num_classes))
        self.decoder = nn.Sequential(*mlp)
        if init == "kaiming":
            self._kaiming_init()

    @torch.no_grad()
    def _kaiming_init(self) -> None:
        """He-normal (fan-in, ReLU gain) weights and zero biases for every layer followed by the
        activation (residual conv1, the hidden layers of both MLPs); the second conv of every
        residual block starts at zero, so each block (and group) starts as the identity; the other
        layers (stem, strided convs, last reduce layer, classifier) keep PyTorch's initialisation,
        so the initial logits stay small (the SkipInit / Fixup idea for BN-free residual nets)."""
        hidden: List[nn.Module] = []
        for seq in (self.reduce, self.decoder):
            mods = list(seq)
            hidden += [m for m, nxt in zip(mods, mods[1:]) if isinstance(nxt, _ACT_TYPES)]
        blocks = [m for m in self.modules() if isinstance(m, ResidualBlock)]
        hidden += [b.conv1 for b in blocks]
        for mod in hidden:
            nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(mod.bias)
        for b in blocks:
            nn.init.zeros_(b.conv2.weight)
            nn.init.zeros_(b.conv2.bias)

    # ----------------------------------------------------------------------------------- encoder
    def encode(self, x: Tensor) -> FPLIIFLatent:
        """(N, C_in, H, W) image -> latent grid (N, C_r, h, w) and global feature (N, width)."""
        z = self.encoder(x)  # (N, width, h, w), h = ceil(H / 4) for three groups
        grid = self.reduce(unfold3x3(z, self.unfold))  # (N, C_r, h, w)
        g = z.mean(dim=(2, 3)) if self.global_feature else None  # (N, width)
        return FPLIIFLatent(grid, g)

    # ----------------------------------------------------------------------------------- decoder
    def _mlp(self, feat: Tensor, latent: FPLIIFLatent, coord: Optional[Tensor], cell: Optional[Tensor]) -> Tensor:
        """Per-pixel MLP on (N, Q, C_r) features plus g / coordinate / cell -> (N, Q, K)."""
        parts = [feat]
        n, q = feat.shape[:2]
        if latent.global_feat is not None:
            parts.append(latent.global_feat[:, None, :].expand(n, q, -1))
        # coordinates are computed in float32 and meet the features' dtype only here
        if coord is not None:
            parts.append(coord.expand(n, q, 2).to(feat.dtype))
        if cell is not None:
            parts.append(cell.expand(n, q, 2).to(feat.dtype))
        return self.decoder(torch.cat(parts, dim=-1))

    def _cell_in_latent_units(self, latent: FPLIIFLatent, cell: Optional[Tensor]) -> Optional[Tensor]:
        if not self.cell_decode:
            return None
        if cell is None:
            raise ValueError("cell_decode=True needs the output pixel size `cell` (x, y) in [-1, 1] units")
        h, w = latent.grid.shape[-2:]
        # [-1, 1] spans w latent cells horizontally: a length of 2 / w is one cell.
        return cell * cell.new_tensor([w / 2.0, h / 2.0])

    def query(self, latent: FPLIIFLatent, coord: Tensor, cell: Optional[Tensor] = None) -> Tensor:
        """Class logits at arbitrary points.

        Args:
            latent: output of `encode`.
            coord: (N or 1, Q, 2) query points, (x, y) in [-1, 1] (pixel-centre convention).
            cell: (N or 1, Q or 1, 2) output pixel size (x, y) in [-1, 1] units (2 / W, 2 / H);
                needed only with cell_decode=True.
        Returns:
            (N, Q, K) logits.
        """
        coord = coord.float()        # positions in float32: bf16 holds 257 x positions at 512
        cell = self._cell_in_latent_units(latent, None if cell is None else cell.float())
        if self.query_mode == "bilinear":
            return self._query_bilinear(latent, coord, cell)
        return self._query_local_ensemble(latent, coord, cell)

    def _query_bilinear(self, latent: FPLIIFLatent, coord: Tensor, cell: Optional[Tensor]) -> Tensor:
        n = latent.grid.shape[0]
        coord = coord.expand(n, -1, -1)
        # border padding + align_corners=False == F.interpolate(mode="bilinear", align_corners=False)
        with torch.autocast(coord.device.type, enabled=False):   # sampled at float32 positions
            feat = F.grid_sample(latent.grid.float(), coord[:, None], mode="bilinear",
                                 padding_mode="border", align_corners=False)
        feat = feat[:, :, 0].transpose(1, 2).to(latent.grid.dtype)  # (N, Q, C_r)
        return self._mlp(feat, latent, coord if self.pos_encoding else None, cell)

    def _query_local_ensemble(self, latent: FPLIIFLatent, coord: Tensor, cell: Optional[Tensor]) -> Tensor:
        """LIIF local ensemble: the four latents around each query, opposite-area weights.

        Written with explicit indices instead of LIIF's shifted nearest `grid_sample`: with
        p = (coord + 1) * size / 2 - 0.5 the query position in latent-index units, the four
        latents are floor(p) and floor(p) + 1 per axis, clamped to the grid (LIIF clamps the shifted
        coordinate to the border, which picks the same latents). The relative coordinate
        p - index is in latent-cell units (LIIF multiplies by the grid size, i.e. half-cell units;
        the scale is a free choice of input normalisation). Corner predictions are weighted by
        the area of the diagonally opposite rectangle, normalised by the total area.
        """
        grid = latent.grid
        n, c, h, w = grid.shape
        q = coord.shape[1]
        coord = coord.expand(n, q, 2)
        size = coord.new_tensor([w, h])
        p = (coord + 1) * (size / 2) - 0.5  # (N, Q, 2) continuous latent index, centres at integers
        base = torch.floor(p)
        flat = grid.flatten(2).transpose(1, 2)  # (N, h*w, C_r)
        preds: List[Tensor] = []
        areas: List[Tensor] = []
        for dy in (0, 1):
            for dx in (0, 1):
                ix = (base[..., 0] + dx).clamp(0, w - 1)
                iy = (base[..., 1] + dy).clamp(0, h - 1)
                index = (iy * w + ix).long()  # (N, Q)
                feat = torch.gather(flat, 1, index[..., None].expand(n, q, c))  # (N, Q, C_r)
                rel = p - torch.stack((ix, iy), dim=-1)  # (N, Q, 2) in latent cells, |rel| <= 1
                preds.append(self._mlp(feat, latent, rel if self.pos_encoding else None, cell))
                areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
        total = areas[0] + areas[1] + areas[2] + areas[3]
        # corner order (0,0), (0,1), (1,0), (1,1): the opposite of corner i is corner 3 - i
        out = preds[0] * (areas[3] / total)[..., None]
        for i in (1, 2, 3):
            out = out + preds[i] * (areas[3 - i] / total)[..., None]
        return out

    def decode(self, latent: FPLIIFLatent, size: Tuple[int, int], chunk_size: Optional[int] = None) -> Tensor:
        """Logits on a full H x W output grid: (N, K, H, W).

        The per-pixel MLP runs on at most `chunk_size` output pixels at a time (per image) when
        `chunk_size` is given, or when gradients are disabled and `self.chunk_size` is set. Under
        autograd chunking saves no memory (every chunk's activations are kept for backward), so
        training evaluates in one pass unless asked otherwise.
        """
        height, width = int(size[0]), int(size[1])
        n = latent.grid.shape[0]
        coord = pixel_centres(height, width, device=latent.grid.device)[None]  # (1, HW, 2) float32
        cell = None
        if self.cell_decode:
            cell = coord.new_tensor([2.0 / width, 2.0 / height]).view(1, 1, 2)
        if chunk_size is None and not torch.is_grad_enabled():
            chunk_size = self.chunk_size
        total = height * width
        if chunk_size is None or chunk_size >= total:
            logits = self.query(latent, coord, cell)  # (N, HW, K)
        else:
            logits = torch.cat(
                [self.query(latent, coord[:, s:s + chunk_size], cell) for s in range(0, total, chunk_size)], dim=1
            )
        return logits.transpose(1, 2).reshape(n, self.num_classes, height, width)

    family = "fp_liif"
    decodes_any_size = True
    classifier = r"decoder\.(\d+)\.weight"        # the MLP's layers; the last is (K, C)
    # int8: everything after the encoder stays float32 (the reduction convolutions and the LIIF
    # decoder, whose coordinate inputs and MLP lose most in 8 bits; docs/inference.md)
    float_layers = r"(?!encoder$).*"
    table_row = "fp-liif"
    example_config = "fp_liif_synthetic"
    input_size = (256, 256)                       # the paper's crops (configs/fp_liif_*.yaml)
    tiny_args = {"width": 8, "blocks": [1, 1, 1], "reduce_dims": [16, 8], "decoder_dims": [16]}

    def export_logits(self, images: Tensor, size: Optional[Tuple[int, int]]) -> Tensor:
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        return self(images, size=size, chunk_size=size[0] * size[1]).parsing   # one pass

    def forward(self, x: Tensor, size: Optional[Tuple[int, int]] = None, coord: Optional[Tensor] = None,
                chunk_size: Optional[int] = None) -> ParsingOutput:
        """(N, C_in, H_in, W_in) image -> ``ParsingOutput`` with the (N, K, H, W) logits at `size`
        (default: the input size).

        With `coord` (N, Q, 2), (x, y) pixel centres in [-1, 1]: logits at those points only, as
        (N, K, 1, Q) so that pixel-wise losses take them like a 1 x Q image (LIIF's sampled-query
        training; `size` is then the grid they come from, for the cell size).
        """
        if size is None:
            size = (x.shape[-2], x.shape[-1])
        latent = self.encode(x)
        if coord is None:
            return ParsingOutput(self.decode(latent, size, chunk_size))
        cell = coord.new_tensor([2.0 / size[1], 2.0 / size[0]]).view(1, 1, 2) if self.cell_decode else None
        return ParsingOutput(self.query(latent, coord, cell).transpose(1, 2).unsqueeze(2))
