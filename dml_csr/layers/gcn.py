"""Graph reasoning units of the DDGCN (docs/model.md) and of DGCNet (Table 5 ablations).

- ``SpatialGCN``: graph convolution over the channels of a small spatial map;
- ``DDualGCN``: the dynamic dual graph (spatial branch with a ``SpatialGCN`` + feature graph).

``fusion="learned"`` is the released DDGCN (learnable gammas initialised to 0), ``"fixed"``
DGCNet's ``relu(a + b)``. The context modules built from them are in ``layers/context.py``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .abn import ABN
from .blocks import NormLayer, upsample

__all__ = ["SpatialGCN", "DDualGCN"]

_FUSIONS = ("learned", "fixed")


def _bmm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm`` in float32 even under autocast, answered in float32 there (the next layers
    cast as autocast says): the feature graph sums over every position (3,600 at 60 x 60), which
    reaches float16's range on larger maps. Without autocast (a model cast to bfloat16) the
    answer keeps the inputs' dtype."""
    device = a.device.type
    dtype = torch.float32 if torch.is_autocast_enabled(device) else a.dtype
    with torch.autocast(device, enabled=False):
        return torch.bmm(a.float(), b.float()).to(dtype)


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

    folded_norms = (("conv_wg", "bn_wg", False),)          # deploy/fold.py

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
    al., BMVC 2019) for the Table 5 ablations (``layers/context.py``):

    Args:
        fusion: ``"learned"`` (DDGCN): ``gamma1 * y + x`` in the feature branch and ``gamma`` in
            the SpatialGCN, learnable scalars initialised to 0; ``"fixed"`` (DGCNet):
            ``relu(x + y)`` and ``relu(out + x)``, no gamma parameters.
        local_stride: stride of the three depthwise convolutions of the spatial branch (2 = the
            release and DGCNet, 60 -> 8; 1 = "-pooling": the spatial graph runs at full size).
    """

    folded_norms = (("phi", "bn_phi", False), ("theta", "bn_theta", False), ("conv3", "bn3", False),
                    ("conv_adj", "bn_adj", False), ("conv_wg", "bn_wg", False))   # deploy/fold.py

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
        att = upsample(self.gcn_local_attention(self.local(x)), x.shape[2:])
        return x * att + x

    def feature_branch(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        phi = self.bn_phi(self.phi(x)).flatten(2)                # (N, 256, L)
        theta = self.bn_theta(self.theta(x)).flatten(2)          # (N, 128, L)
        z = _bmm32(phi, theta.transpose(1, 2))                   # (N, 256, 128)
        z = self.bn_adj(self.conv_adj(z.transpose(1, 2))).transpose(1, 2) + z   # Laplacian smoothing
        z = self.bn_wg(self.conv_wg(z))                          # (N, 256, 128)
        y = _bmm32(z, theta).view(n, -1, h, w)                   # (N, 256, H, W)
        if self.fusion == "fixed":
            return F.relu(x + self.bn3(self.conv3(y)))
        return self.gamma1 * self.bn3(self.conv3(y)) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.spatial_branch(x), self.feature_branch(x)], dim=1))
