"""Training losses of DML-CSR: the multi-task loss (eq. 5) and the self-distillation loss (eq. 7).

Both take the model outputs (parsing logits, or the tuple (parsing, binary_edge, category_edge))
and the batch dict (``label``, ``edge``, ``cat_edge``: int64 (N,H,W), 255 = ignore), upsample every
logit map bilinearly (align_corners=True) to the label size, and return a dict whose "loss" is
the only entry meant for ``backward()``; the other entries are the detached parts for logging.
Terms, defaults and the paper / release options: docs/losses.md.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from .attention import BinaryEdgeAttentionLoss, CategoryEdgeAttentionLoss
from .common import IGNORE_INDEX, ModelOutputs, pixel_cross_entropy, resize_logits, split_outputs
from .distill import DistillationKL, DistillationParsingLoss, mix_with_one_hot
from .edges import BinaryEdgeLoss, CategoryEdgeLoss
from .lovasz import LovaszSoftmaxLoss, lovasz_softmax_flat
from .parsing import ParsingLoss

__all__ = ["MultiTaskLoss", "SelfDistillationLoss", "ParsingLoss", "LovaszSoftmaxLoss",
           "lovasz_softmax_flat", "BinaryEdgeLoss", "CategoryEdgeLoss", "BinaryEdgeAttentionLoss",
           "CategoryEdgeAttentionLoss", "DistillationKL", "DistillationParsingLoss",
           "mix_with_one_hot", "split_outputs"]


def _batch_key(batch: Mapping[str, Tensor], key: str, term: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"the {term} loss needs batch[{key!r}]; disable the term or provide it")
    return batch[key]


class _EdgeAttention(nn.Module):
    """The two attention terms (eqs. 3, 4) on a per-pixel parsing CE map, each switchable."""

    def __init__(self, binary: bool, category: bool, mode: str,
                 class_weights: Optional[Sequence[float]], include_background: bool, ignore_index: int):
        super().__init__()
        self.binary, self.category = binary, category
        self.binary_loss = BinaryEdgeAttentionLoss(ignore_index)
        self.category_loss = CategoryEdgeAttentionLoss(mode, class_weights, include_background,
                                                       ignore_index)

    def forward(self, pixel_ce: Tensor, batch: Mapping[str, Tensor], num_classes: int) -> Dict[str, Tensor]:
        parts = {}
        label = batch["label"]
        if self.binary:
            parts["binary_attention"] = self.binary_loss(
                pixel_ce, label, _batch_key(batch, "edge", "binary_attention"))
        if self.category:
            edge = batch.get("edge") if self.category_loss.mode == "released" else \
                _batch_key(batch, "edge", "category_attention")
            parts["category_attention"] = self.category_loss(
                pixel_ce, label, edge, _batch_key(batch, "cat_edge", "category_attention"), num_classes)
        return parts


class MultiTaskLoss(nn.Module):
    """Eq. 5: decoupled multi-task loss of the initialisation stage.

    loss = loss_scale * (lambda0 * parse + lambda1 * binary_edge + lambda2 * category_edge
                         + lambda3 * binary_attention + lambda4 * category_attention)

    Paper defaults below. The release is ce_weight = lovasz_weight = 0.5, lambda2 = 0.1,
    category_weighting="frequency", attention_mode="released", loss_scale = 4.

    Args:
        lambda0..lambda4: term weights (paper 1, 1, 1, 4, 1).
        ce_weight, lovasz_weight: the two halves of the parsing term (eq. 2).
        category_weighting: "balanced" (project default) or "frequency" (release), see edges.py.
        attention_mode: "paper" (eq. 4) or "released" for the category attention term.
        class_weights: w_j of eq. 4 (length K), default all 1.
        include_background_edges: count class 0 edges in eq. 4 (C = K), else C = K - 1.
        binary_edge, category_edge, binary_attention, category_attention: switch a task off for
            ablations (paper Table 6). The edge prediction terms also drop out by themselves when
            the model returns parsing logits only; the attention terms need only the edge labels.
        loss_scale: factor on the whole sum (the release multiplies its total by 4).
    Returns of forward: {"loss", "parse", "parse_ce", "parse_lovasz"} plus "binary_edge",
        "category_edge", "binary_attention", "category_attention" for the terms that applied.
    """

    def __init__(self, *, lambda0: float = 1.0, lambda1: float = 1.0, lambda2: float = 1.0,
                 lambda3: float = 4.0, lambda4: float = 1.0, ce_weight: float = 1.0,
                 lovasz_weight: float = 1.0, category_weighting: str = "balanced",
                 attention_mode: str = "paper", class_weights: Optional[Sequence[float]] = None,
                 include_background_edges: bool = True, binary_edge: bool = True,
                 category_edge: bool = True, binary_attention: bool = True,
                 category_attention: bool = True, loss_scale: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.lambda0, self.lambda1, self.lambda2 = lambda0, lambda1, lambda2
        self.lambda3, self.lambda4 = lambda3, lambda4
        self.loss_scale = loss_scale
        self.use_binary_edge, self.use_category_edge = binary_edge, category_edge
        self.ignore_index = ignore_index
        self.parse_loss = ParsingLoss(ce_weight, lovasz_weight, ignore_index)
        self.binary_edge_loss = BinaryEdgeLoss(ignore_index)
        self.category_edge_loss = CategoryEdgeLoss(category_weighting, ignore_index)
        self.attention = _EdgeAttention(binary_attention, category_attention, attention_mode,
                                        class_weights, include_background_edges, ignore_index)

    def forward(self, outputs: ModelOutputs, batch: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        parse_logits, binary_logits, category_logits = split_outputs(outputs)
        label = batch["label"]
        size = label.shape[-2:]
        parse_logits = resize_logits(parse_logits, size)
        pixel_ce = pixel_cross_entropy(parse_logits, label, self.ignore_index)   # (N,H,W)

        parts = self.parse_loss(parse_logits, label, pixel_ce)
        if self.use_binary_edge and binary_logits is not None:
            parts["binary_edge"] = self.binary_edge_loss(
                resize_logits(binary_logits, size), _batch_key(batch, "edge", "binary_edge"))
        if self.use_category_edge and category_logits is not None:
            parts["category_edge"] = self.category_edge_loss(
                resize_logits(category_logits, size), _batch_key(batch, "cat_edge", "category_edge"))
        parts.update(self.attention(pixel_ce, batch, parse_logits.shape[1]))

        zero = parts["parse"].new_zeros(())
        total = self.loss_scale * (
            self.lambda0 * parts["parse"] + self.lambda1 * parts.get("binary_edge", zero)
            + self.lambda2 * parts.get("category_edge", zero)
            + self.lambda3 * parts.get("binary_attention", zero)
            + self.lambda4 * parts.get("category_attention", zero))
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}


class SelfDistillationLoss(nn.Module):
    """Eq. 7: self-distillation loss of the CSR stage, from a frozen teacher's logits.

    loss = loss_scale * (alpha0 * parse + alpha1 * binary_edge_kl + alpha2 * category_edge_kl
                         + lambda3 * binary_attention + lambda4 * category_attention)

    with parse = kl_weight * KL_parse + lovasz_weight * Lovasz_parse (hard label), and the two
    attention terms only when ``add_attention`` (the release's CSR stage: soft-target KL plus the
    attention losses). Paper defaults below; the release's CSR stage is
    soft_targets="mixed", add_attention=True, attention_mode="released", loss_scale=4 and the
    release's parsing halves (docs/losses.md).

    Args:
        alpha0, alpha1, alpha2: eq. 7 weights (paper 1, 1, 0.1).
        kl_weight, lovasz_weight: the two halves of the parsing bracket of eq. 7.
        temperature: softmax temperature of both sides of every KL (KL scaled by T^2).
        soft_targets: "teacher" (paper: softmax of the teacher logits) or "mixed" (release: teacher
            logits mixed with the one-hot target, weight 1/(cycle+1), before the softmax).
        add_attention: add the eq. 3 / eq. 4 terms on the student's parsing CE.
        lambda3, lambda4, attention_mode, class_weights, include_background_edges,
        binary_attention, category_attention: as in MultiTaskLoss, used when add_attention.
        binary_edge, category_edge: switch the edge KL terms off (they also drop out when the
            student has no edge heads).
        loss_scale: factor on the whole sum.
    Returns of forward: {"loss", "parse", "parse_kl", "parse_lovasz"} plus "binary_edge_kl",
        "category_edge_kl", "binary_attention", "category_attention" for the terms that applied.
    """

    SOFT_TARGETS = ("teacher", "mixed")

    def __init__(self, *, alpha0: float = 1.0, alpha1: float = 1.0, alpha2: float = 0.1,
                 kl_weight: float = 1.0, lovasz_weight: float = 1.0, temperature: float = 1.0,
                 soft_targets: str = "teacher", add_attention: bool = False,
                 lambda3: float = 4.0, lambda4: float = 1.0, attention_mode: str = "paper",
                 class_weights: Optional[Sequence[float]] = None,
                 include_background_edges: bool = True, binary_edge: bool = True,
                 category_edge: bool = True, binary_attention: bool = True,
                 category_attention: bool = True, loss_scale: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if soft_targets not in self.SOFT_TARGETS:
            raise ValueError(f"soft_targets must be one of {self.SOFT_TARGETS}, got {soft_targets!r}")
        self.alpha0, self.alpha1, self.alpha2 = alpha0, alpha1, alpha2
        self.lambda3, self.lambda4 = lambda3, lambda4
        self.loss_scale = loss_scale
        self.soft_targets = soft_targets
        self.use_binary_edge, self.use_category_edge = binary_edge, category_edge
        self.ignore_index = ignore_index
        self.parse_loss = DistillationParsingLoss(kl_weight, lovasz_weight, temperature, ignore_index)
        self.kl = DistillationKL(temperature)
        self.attention = _EdgeAttention(add_attention and binary_attention,
                                        add_attention and category_attention, attention_mode,
                                        class_weights, include_background_edges, ignore_index)

    def _teacher(self, logits: Tensor, target: Tensor, size: Tuple[int, int],
                 cycle: Optional[int]) -> Tensor:
        logits = resize_logits(logits.detach(), size)
        if self.soft_targets == "mixed":
            if cycle is None:
                raise ValueError('soft_targets="mixed" needs the cycle index m')
            logits = mix_with_one_hot(logits, target, 1.0 / (cycle + 1.0), self.ignore_index)
        return logits

    def forward(self, outputs: ModelOutputs, batch: Mapping[str, Tensor],
                teacher_outputs: ModelOutputs, cycle: Optional[int] = None) -> Dict[str, Tensor]:
        """``cycle``: the CSR cycle index m >= 1 (needed by soft_targets="mixed")."""
        student = split_outputs(outputs)
        teacher = split_outputs(teacher_outputs)
        label = batch["label"]
        size = label.shape[-2:]
        valid = label != self.ignore_index

        parse_logits = resize_logits(student[0], size)
        parts = self.parse_loss(parse_logits, self._teacher(teacher[0], label, size, cycle), label)
        for index, name, key, enabled in ((1, "binary_edge_kl", "edge", self.use_binary_edge),
                                          (2, "category_edge_kl", "cat_edge", self.use_category_edge)):
            if not enabled or student[index] is None:
                continue
            if teacher[index] is None:
                raise ValueError(f"{name}: the student has edge logits but the teacher does not")
            soft = self._teacher(teacher[index], _batch_key(batch, key, name), size, cycle)
            parts[name] = self.kl(resize_logits(student[index], size), soft, valid)
        if self.attention.binary or self.attention.category:
            pixel_ce = pixel_cross_entropy(parse_logits, label, self.ignore_index)
            parts.update(self.attention(pixel_ce, batch, parse_logits.shape[1]))

        zero = parts["parse"].new_zeros(())
        total = self.loss_scale * (
            self.alpha0 * parts["parse"] + self.alpha1 * parts.get("binary_edge_kl", zero)
            + self.alpha2 * parts.get("category_edge_kl", zero)
            + self.lambda3 * parts.get("binary_attention", zero)
            + self.lambda4 * parts.get("category_attention", zero))
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}
