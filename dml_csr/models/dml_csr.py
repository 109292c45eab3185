"""DML-CSR network (spec section 1): deep-stem ResNet-101 (output stride 8), DDGCN context
embedding, parsing decoder and the training-only edge branch.

Module names are the release's: its checkpoints load unchanged (a test compares every key and
shape with ``shared/reference/dml_csr_state_dict_{train,infer}.txt``).
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.abn import ABN
from .contract import ParsingModel, ParsingOutput, resize_logits_to

__all__ = ["DMLCSR", "Bottleneck", "DDualGCN", "SpatialGCN", "DDGCNContext"]

NormLayer = Callable[[int], nn.Module]


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def conv_abn(cin: int, cout: int, kernel: int, norm: NormLayer, stride: int = 1,
             dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Sequential:
    """conv (bias-free by default) + ABN, as ``Sequential`` so keys read ``.0.weight`` / ``.1.*``."""
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, groups=groups,
                  bias=bias),
        norm(cout))


class Bottleneck(nn.Module):
    """ResNet bottleneck; every ABN (including ``bn3``, before the residual add) applies
    leaky_relu(0.01) as in the release, followed by ReLU where the release applies one."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, norm: NormLayer = ABN):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


_FUSIONS = ("learned", "fixed")


def _check_fusion(fusion: str) -> str:
    if fusion not in _FUSIONS:
        raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}")
    return fusion


class SpatialGCN(nn.Module):
    """Graph reasoning over channels of a small spatial map (the DDGCN's local attention).

    Args:
        fusion: ``"learned"`` (DDGCN, the release): ``gamma * out + x`` with a learnable scalar
            ``gamma`` initialised to 0; ``"fixed"`` (DGCNet, Table 5): ``relu(out + x)``, no
            ``gamma`` parameter.
    """

    def __init__(self, planes: int, norm: NormLayer = ABN, fusion: str = "learned"):
        super().__init__()
        self.fusion = _check_fusion(fusion)
        inter = planes // 2
        self.node_k = nn.Conv2d(planes, inter, 1)
        self.node_v = nn.Conv2d(planes, inter, 1)
        self.node_q = nn.Conv2d(planes, inter, 1)
        self.conv_wg = nn.Conv1d(inter, inter, 1, bias=False)
        self.bn_wg = nn.BatchNorm1d(inter)
        self.out = nn.Sequential(nn.Conv2d(inter, planes, 1), norm(planes))
        if fusion == "learned":
            self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        k = self.node_k(x).flatten(2)                            # (N, I, L)
        v = self.node_v(x).flatten(2)                            # (N, I, L)
        q = self.node_q(x).flatten(2)                            # (N, I, L)
        adj = torch.softmax(torch.bmm(q, v.transpose(1, 2)), dim=-1)   # (N, I, I)
        y = torch.bmm(k.transpose(1, 2), adj).transpose(1, 2)    # (N, I, L)
        y = self.bn_wg(self.conv_wg(y)).view(n, -1, h, w)
        if self.fusion == "fixed":
            return F.relu(self.out(y) + x)
        return self.gamma * self.out(y) + x


class DDualGCN(nn.Module):
    """Dynamic dual graph convolution (spatial + feature graphs); ratio 4.

    The defaults are the released DDGCN. The two options give DGCNet's dual-graph module (Zhang et
    al., BMVC 2019) for the Table 5 ablations (``models/context.py``):

    Args:
        fusion: ``"learned"`` (DDGCN): ``gamma1 * y + x`` in the feature branch and ``gamma`` in
            the SpatialGCN, learnable scalars initialised to 0; ``"fixed"`` (DGCNet):
            ``relu(x + y)`` and ``relu(out + x)``, no gamma parameters.
        local_stride: stride of the three depthwise convolutions of the spatial branch (2 = the
            release and DGCNet, 60 -> 8; 1 = "-pooling": the spatial graph runs at full size).
    """

    def __init__(self, planes: int, ratio: int = 4, norm: NormLayer = ABN, fusion: str = "learned",
                 local_stride: int = 2):
        super().__init__()
        self.fusion = _check_fusion(fusion)
        node, state = planes // ratio * 2, planes // ratio           # 256, 128 for 512 planes
        self.phi = nn.Conv2d(planes, node, 1, bias=False)
        self.bn_phi = norm(node)
        self.theta = nn.Conv2d(planes, state, 1, bias=False)
        self.bn_theta = norm(state)
        self.conv_adj = nn.Conv1d(state, state, 1, bias=False)
        self.bn_adj = nn.BatchNorm1d(state)
        self.conv_wg = nn.Conv1d(node, node, 1, bias=False)
        self.bn_wg = nn.BatchNorm1d(node)
        self.conv3 = nn.Conv2d(node, planes, 1, bias=False)
        self.bn3 = norm(planes)
        # The paper says the pooling was removed; the release keeps three stride-2 depthwise
        # convolutions in the spatial branch. We keep the release (its checkpoints need them).
        s = local_stride
        self.local = nn.Sequential(
            nn.Conv2d(planes, planes, 3, stride=s, padding=1, groups=planes, bias=False), norm(planes),
            nn.Conv2d(planes, planes, 3, stride=s, padding=1, groups=planes, bias=False), norm(planes),
            nn.Conv2d(planes, planes, 3, stride=s, padding=1, groups=planes, bias=False), norm(planes))
        self.gcn_local_attention = SpatialGCN(planes, norm=norm, fusion=fusion)
        self.final = nn.Sequential(nn.Conv2d(planes * 2, planes, 1, bias=False), norm(planes))
        if fusion == "learned":
            self.gamma1 = nn.Parameter(torch.zeros(1))

    def spatial_branch(self, x: torch.Tensor) -> torch.Tensor:
        att = _up(self.gcn_local_attention(self.local(x)), x.shape[2:])
        return x * att + x

    def feature_branch(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        phi = self.bn_phi(self.phi(x)).flatten(2)                # (N, 256, L)
        theta = self.bn_theta(self.theta(x)).flatten(2)          # (N, 128, L)
        z = torch.bmm(phi, theta.transpose(1, 2))                # (N, 256, 128)
        z = self.bn_adj(self.conv_adj(z.transpose(1, 2))).transpose(1, 2) + z   # Laplacian smoothing
        z = self.bn_wg(self.conv_wg(z))                          # (N, 256, 128)
        y = torch.bmm(z, theta).view(n, -1, h, w)                # (N, 256, H, W)
        if self.fusion == "fixed":
            return F.relu(x + self.bn3(self.conv3(y)))
        return self.gamma1 * self.bn3(self.conv3(y)) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.spatial_branch(x), self.feature_branch(x)], dim=1))


class DDGCNContext(nn.Module):
    """Context embedding on C5: conva -> DDualGCN -> convb, then bottleneck over concat(C5, out)."""

    def __init__(self, in_channels: int = 2048, channels: int = 512, norm: NormLayer = ABN):
        super().__init__()
        self.conva = conv_abn(in_channels, channels, 3, norm)
        self.dualgcn = DDualGCN(channels, norm=norm)
        self.convb = conv_abn(channels, channels, 3, norm)
        self.bottleneck = conv_abn(in_channels + channels, channels, 3, norm)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convb(self.dualgcn(self.conva(x)))
        return self.bottleneck(torch.cat([x, out], dim=1))


class ParsingDecoder(nn.Module):
    """[layer6] fuses the context (1/8) with C2 (1/4) and predicts parsing logits at 1/4."""

    def __init__(self, num_classes: int, in_channels: int = 512, low_channels: int = 256,
                 channels: int = 256, skip_channels: int = 48, norm: NormLayer = ABN):
        super().__init__()
        self.conv1 = conv_abn(in_channels, channels, 1, norm)
        self.conv2 = conv_abn(low_channels, skip_channels, 1, norm)
        self.conv3 = nn.Sequential(
            nn.Conv2d(channels + skip_channels, channels, 1, bias=False), norm(channels),
            nn.Conv2d(channels, channels, 1, bias=False), norm(channels))
        self.conv4 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, context: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        high = _up(self.conv1(context), c2.shape[2:])
        return self.conv4(self.conv3(torch.cat([high, self.conv2(c2)], dim=1)))


class EdgeHead(nn.Module):
    """[edge_layer] binary and category-aware edges from C2, C3, C4 (training only)."""

    def __init__(self, num_classes: int, in_channels: Sequence[int] = (256, 512, 1024),
                 channels: int = 256, norm: NormLayer = ABN):
        super().__init__()
        self.conv1 = conv_abn(in_channels[0], channels, 1, norm)
        self.conv2 = conv_abn(in_channels[1], channels, 1, norm)
        self.conv3 = conv_abn(in_channels[2], channels, 1, norm)
        self.conv4 = nn.Conv2d(channels, num_classes, 3, padding=1)     # shared by the 3 levels
        self.conv5 = nn.Conv2d(3 * num_classes, num_classes, 1)
        self.conv5_b = nn.Conv2d(3 * num_classes, 2, 1)

    def forward(self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor):
        size = c2.shape[2:]
        e2 = self.conv4(self.conv1(c2))
        e3 = _up(self.conv4(self.conv2(c3)), size)
        e4 = _up(self.conv4(self.conv3(c4)), size)
        fused = torch.cat([e2, e3, e4], dim=1)                          # (N, 3K, H/4, W/4)
        return self.conv5_b(fused), self.conv5(fused)                    # binary, category


class DMLCSR(ParsingModel):
    """DML-CSR face parser (the ``dml_csr`` family).

    Args:
        num_classes: number of parsing classes K (11 for Helen/LaPa, 19 for CelebAMask-HQ).
        with_edges: build the edge branch (training form). The inference form ("decoupled")
            has no edge branch and no ``edge_layer.*`` keys.
        layers: bottleneck blocks per stage; (3, 4, 23, 3) is ResNet-101 (the paper). Shallower
            settings exist only for the CPU-sized synthetic preset.
        width_mult: multiplies every channel width (1.0 = the release; < 1 only for the synthetic
            preset). Key names never change, only shapes.
        context: ``ddgcn`` (the paper) or an ablation module name (see ``models/context.py``).
        norm_backend: ABN backend (``auto``, ``native``, ``compiled``).

    Forward (``contract.ParsingModel``): image (N, 3, H, W) -> ``ParsingOutput`` with parsing
    logits (N, K, ceil(H/4), ceil(W/4)), upsampled bilinearly to ``size`` when given, and in the
    training form the edge logits binary (N, 2, ...) and category (N, K, ...) at 1/4.
    """

    family = "dml_csr"
    imagenet_backbone = True

    @property
    def has_edge_heads(self) -> bool:
        return self.with_edges

    @classmethod
    def kwargs_from_config(cls, model_cfg, num_classes: int) -> Dict[str, Any]:
        return dict(num_classes=num_classes, layers=list(model_cfg.layers),
                    width_mult=model_cfg.width_mult, context=model_cfg.context,
                    norm_backend=model_cfg.norm_backend)

    @classmethod
    def build(cls, kwargs: Dict[str, Any], training: bool = False) -> "DMLCSR":
        return cls(**{**kwargs, "with_edges": training})

    def __init__(self, num_classes: int, with_edges: bool = True,
                 layers: Sequence[int] = (3, 4, 23, 3), width_mult: float = 1.0,
                 context: str = "ddgcn", norm_backend: str = "auto"):
        super().__init__()
        self.num_classes = num_classes
        self.with_edges = with_edges
        norm = lambda c: ABN(c, backend=norm_backend)  # noqa: E731
        w = lambda c: max(8, int(round(c * width_mult)))  # noqa: E731
        base = w(64)
        # Deep stem: three 3x3 convs (64, 64, 128) then max-pool.
        self.conv1 = nn.Conv2d(3, base, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm(base)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(base, base, 3, padding=1, bias=False)
        self.bn2 = norm(base)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(base, 2 * base, 3, padding=1, bias=False)
        self.bn3 = norm(2 * base)
        self.relu3 = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = 2 * base
        self.layer1 = self._make_layer(base, layers[0], 1, 1, norm)
        self.layer2 = self._make_layer(2 * base, layers[1], 2, 1, norm)
        self.layer3 = self._make_layer(4 * base, layers[2], 1, 1, norm)
        self.layer4 = self._make_layer(8 * base, layers[3], 1, 2, norm)   # multi-grid (1, 1, 1)
        c2, c3, c4, c5 = 4 * base, 8 * base, 16 * base, 32 * base
        from .context import build_context  # local import: context.py imports this module
        self.context = build_context(context, c5, w(512), norm)
        self.layer6 = ParsingDecoder(num_classes, self.context.out_channels, c2, w(256), w(48), norm)
        if with_edges:
            self.edge_layer = EdgeHead(num_classes, (c2, c3, c4), w(256), norm)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int,
                    norm: NormLayer) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), norm(planes * 4))
        mods = [Bottleneck(self.inplanes, planes, stride, dilation, downsample, norm)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes, 1, dilation, None, norm) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Backbone: returns (C2, C3, C4, C5) at strides 4, 8, 8, 8."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        c2 = self.layer1(self.maxpool(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5

    def forward(self, x: torch.Tensor, size: Optional[Tuple[int, int]] = None,
                coord: Optional[torch.Tensor] = None) -> ParsingOutput:
        self.check_coord(coord)
        c2, c3, c4, c5 = self.forward_features(x)
        parsing = resize_logits_to(self.layer6(self.context(c5), c2), size)
        if not self.with_edges:
            return ParsingOutput(parsing)
        binary_edge, category_edge = self.edge_layer(c2, c3, c4)
        return ParsingOutput(parsing, binary_edge, category_edge)
