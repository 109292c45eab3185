"""DML-CSR network (docs/model.md): deep-stem ResNet-101 (output stride 8), DDGCN context
embedding, parsing decoder and the training-only edge branch.

Module names are the release's: its checkpoints load unchanged (a test compares every key and
shape with ``shared/reference/dml_csr_state_dict_{train,infer}.txt``). The blocks it is built
from (``Bottleneck``, ``conv_abn``, the context modules and their graph units) are in
``dml_csr/layers/``; the parsing decoder and the edge head, DML-CSR's own, are here.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..layers.abn import ABN, ABN_BACKENDS
from ..layers.blocks import Bottleneck, NormLayer, checkpoint_stage, conv_abn, upsample
from ..layers.context import CONTEXT_MODULES, build_context
from .contract import ParsingModel, ParsingOutput, resize_logits_to

__all__ = ["DMLCSR", "ParsingDecoder", "EdgeHead"]


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
        high = upsample(self.conv1(context), c2.shape[2:])
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
        e3 = upsample(self.conv4(self.conv2(c3)), size)
        e4 = upsample(self.conv4(self.conv3(c4)), size)
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
        context: ``ddgcn`` (the paper) or an ablation module name (see ``layers/context.py``).
        norm_backend: ABN backend (``auto``, ``native``, ``compiled``, ``memory``).

    Forward (``contract.ParsingModel``): image (N, 3, H, W) -> ``ParsingOutput`` with parsing
    logits (N, K, ceil(H/4), ceil(W/4)), upsampled bilinearly to ``size`` when given, and in the
    training form the edge logits binary (N, 2, ...) and category (N, K, ...) at 1/4.
    """

    family = "dml_csr"
    imagenet_backbone = True
    backbone_prefixes = ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.",
                         "layer1.", "layer2.", "layer3.", "layer4.")
    training_only_prefixes = ("edge_layer.",)
    classifier = r"layer6\.conv4\.weight"        # the parsing classifier: (K, C, 1, 1)
    # int8: the first stem convolution and the decoder stay float32 (docs/inference.md, "int8")
    float_layers = r"conv1|layer6"
    table_row = "dml-csr"
    example_config = "synthetic"
    tiny_args = {"layers": [1, 1, 1, 1], "width_mult": 0.125}
    # norm folding (deploy/fold.py): the stem's conv/ABN pairs, each followed by its ReLU
    folded_norms = (("conv1", "bn1", True), ("conv2", "bn2", True), ("conv3", "bn3", True))
    temporary_activations = ("relu1", "relu2", "relu3")

    @property
    def has_edge_heads(self) -> bool:
        return self.with_edges

    @classmethod
    def check_args(cls, args) -> Dict[str, Any]:
        out = super().check_args(args)
        if "layers" in out:
            layers = out["layers"]
            if (not isinstance(layers, (list, tuple)) or len(layers) != 4
                    or not all(isinstance(n, int) and n > 0 for n in layers)):
                raise ValueError(f"model.args.layers must be 4 positive block counts, got {layers!r}")
            out["layers"] = list(layers)
        if "width_mult" in out:
            w = out["width_mult"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                raise ValueError(f"model.args.width_mult must be a positive number, got {w!r}")
            out["width_mult"] = float(w)
        for name, allowed in (("context", CONTEXT_MODULES), ("norm_backend", ABN_BACKENDS)):
            if name in out and out[name] not in allowed:
                raise ValueError(f"model.args.{name} must be one of {allowed}, got {out[name]!r}")
        return out

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

    # train.checkpoint_backbone: recompute layer1-layer4 in the backward pass instead of keeping
    # their activations (set by the trainer; a training setting, not part of the checkpoint)
    checkpoint_backbone = False

    def _stage(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_backbone and self.training and torch.is_grad_enabled():
            return checkpoint_stage(layer, x)
        return layer(x)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Backbone: returns (C2, C3, C4, C5) at strides 4, 8, 8, 8."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        c2 = self._stage(self.layer1, self.maxpool(x))
        c3 = self._stage(self.layer2, c2)
        c4 = self._stage(self.layer3, c3)
        c5 = self._stage(self.layer4, c4)
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
