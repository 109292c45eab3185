"""Training losses of DML-CSR: the multi-task loss (eq. 5) and the self-distillation loss (eq. 7).

``build_losses(cfg)`` maps the ``loss.*`` config keys onto them, each key to the constructor
argument of the same name. Both take the model outputs (parsing logits, or the tuple
(parsing, binary_edge, category_edge)) and the batch dict (``label``, ``edge``, ``cat_edge``: int64 (N,H,W), 255 = ignore), upsample every
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

__all__ = ["MultiTaskLoss", "SelfDistillationLoss", "build_losses", "TASKS", "ParsingLoss",
           "LovaszSoftmaxLoss", "lovasz_softmax_flat", "BinaryEdgeLoss", "CategoryEdgeLoss",
           "BinaryEdgeAttentionLoss", "CategoryEdgeAttentionLoss", "DistillationKL",
           "DistillationParsingLoss", "mix_with_one_hot", "split_outputs"]

TASKS = ("binary_edge", "binary_attention", "category_edge", "category_attention")


def _batch_key(batch: Mapping[str, Tensor], key: str, term: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"the {term} loss needs batch[{key!r}]; disable the term or provide it")
    return batch[key]


def _check_tasks(tasks: Sequence[str]) -> set:
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown loss task {unknown[0]!r}; known: {list(TASKS)}")
    return set(tasks)


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

    loss = parse_ce_weight * CE + parse_lovasz_weight * Lovasz
           + binary_edge_weight * binary_edge + category_edge_weight * category_edge
           + binary_attention_weight * binary_attention
           + category_attention_weight * category_attention

    The arguments carry the names of the ``loss.*`` config keys (``build_losses``). Paper
    defaults below. The release's ``Criterion`` is parse_ce_weight = parse_lovasz_weight = 2
    (0.5 CE + 0.5 Lovasz, and then its parsing term alone doubled twice), category_edge_weight =
    0.2 (its 0.1 doubled once), category_edge_weighting="frequency" and
    category_attention_mode="released"; the binary edge and both attention terms are not
    scaled (docs/losses.md).

    Args:
        parse_ce_weight, parse_lovasz_weight: the two halves of the parsing term (eq. 2).
        binary_edge_weight, category_edge_weight, binary_attention_weight,
        category_attention_weight: lambda1..lambda4 (paper 1, 1, 4, 1).
        category_edge_weighting: "balanced" (project default) or "frequency" (release), edges.py.
        category_attention_mode: "eq4" (paper) or "released", see attention.py.
        class_weights: w_j of eq. 4 (length K), default all 1.
        tasks: the terms besides parsing (``TASKS``); a task left out is switched off (paper
            Table 6). The edge prediction terms also drop out by themselves when the model
            returns parsing logits only; the attention terms need only the edge labels.
        include_background_edges: count class 0 edges in eq. 4 (C = K), else C = K - 1.
    Returns of forward: {"loss", "parse", "parse_ce", "parse_lovasz"} plus "binary_edge",
        "category_edge", "binary_attention", "category_attention" for the terms that applied.
    """

    def __init__(self, *, parse_ce_weight: float = 1.0, parse_lovasz_weight: float = 1.0,
                 binary_edge_weight: float = 1.0, category_edge_weight: float = 1.0,
                 binary_attention_weight: float = 4.0, category_attention_weight: float = 1.0,
                 category_edge_weighting: str = "balanced", category_attention_mode: str = "eq4",
                 class_weights: Optional[Sequence[float]] = None, tasks: Sequence[str] = TASKS,
                 include_background_edges: bool = True, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        tasks = _check_tasks(tasks)
        self.binary_edge_weight, self.category_edge_weight = binary_edge_weight, category_edge_weight
        self.binary_attention_weight = binary_attention_weight
        self.category_attention_weight = category_attention_weight
        self.use_binary_edge, self.use_category_edge = "binary_edge" in tasks, "category_edge" in tasks
        self.ignore_index = ignore_index
        self.parse_loss = ParsingLoss(parse_ce_weight, parse_lovasz_weight, ignore_index)
        self.binary_edge_loss = BinaryEdgeLoss(ignore_index)
        self.category_edge_loss = CategoryEdgeLoss(category_edge_weighting, ignore_index)
        self.attention = _EdgeAttention("binary_attention" in tasks, "category_attention" in tasks,
                                        category_attention_mode, class_weights,
                                        include_background_edges, ignore_index)

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
        total = (parts["parse"] + self.binary_edge_weight * parts.get("binary_edge", zero)
                 + self.category_edge_weight * parts.get("category_edge", zero)
                 + self.binary_attention_weight * parts.get("binary_attention", zero)
                 + self.category_attention_weight * parts.get("category_attention", zero))
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}


class SelfDistillationLoss(nn.Module):
    """Eq. 7: self-distillation loss of the CSR stage, from a frozen teacher's logits.

    loss = distill_parse_weight * (parse_ce_weight * KL_parse + parse_lovasz_weight * Lovasz_parse)
           + distill_binary_weight * binary_edge_kl + distill_category_weight * category_edge_kl
           [+ binary_attention_weight * binary_attention
            + category_attention_weight * category_attention      when csr_attention]

    The KL takes the CE's place in the parsing term, with its weight (the release does the same;
    Lovasz_parse is against the hard label). The arguments carry the names of the ``loss.*``
    config keys (``build_losses``). Paper defaults below; the release's CSR stage is
    soft_targets="released", csr_attention=True, category_attention_mode="released", the
    release's parsing weights (2, 2) and distill_category_weight = 0.2 (docs/losses.md).

    Args:
        distill_parse_weight, distill_binary_weight, distill_category_weight: eq. 7's alpha0..2
            (paper 1, 1, 0.1).
        parse_ce_weight, parse_lovasz_weight: the two halves of the parsing bracket of eq. 7.
        temperature: softmax temperature of both sides of every KL (KL scaled by T^2).
        soft_targets: "teacher" (paper: softmax of the teacher logits) or "released" (teacher
            logits mixed with the one-hot target, weight 1/(cycle+1), before the softmax).
        csr_attention: add the eq. 3 / eq. 4 terms on the student's parsing CE (the release).
        binary_attention_weight, category_attention_weight, category_attention_mode,
        class_weights, include_background_edges: as in MultiTaskLoss, used with csr_attention.
        tasks: as in MultiTaskLoss; "binary_edge" / "category_edge" switch the edge KL terms
            (they also drop out when the student has no edge heads).
    Returns of forward: {"loss", "parse", "parse_kl", "parse_lovasz"} plus "binary_edge_kl",
        "category_edge_kl", "binary_attention", "category_attention" for the terms that applied.
    """

    SOFT_TARGETS = ("teacher", "released")

    def __init__(self, *, distill_parse_weight: float = 1.0, distill_binary_weight: float = 1.0,
                 distill_category_weight: float = 0.1, parse_ce_weight: float = 1.0,
                 parse_lovasz_weight: float = 1.0, temperature: float = 1.0,
                 soft_targets: str = "teacher", csr_attention: bool = False,
                 binary_attention_weight: float = 4.0, category_attention_weight: float = 1.0,
                 category_attention_mode: str = "eq4",
                 class_weights: Optional[Sequence[float]] = None, tasks: Sequence[str] = TASKS,
                 include_background_edges: bool = True, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if soft_targets not in self.SOFT_TARGETS:
            raise ValueError(f"soft_targets must be one of {self.SOFT_TARGETS}, got {soft_targets!r}")
        tasks = _check_tasks(tasks)
        self.distill_parse_weight = distill_parse_weight
        self.distill_binary_weight = distill_binary_weight
        self.distill_category_weight = distill_category_weight
        self.binary_attention_weight = binary_attention_weight
        self.category_attention_weight = category_attention_weight
        self.soft_targets = soft_targets
        self.use_binary_edge, self.use_category_edge = "binary_edge" in tasks, "category_edge" in tasks
        self.ignore_index = ignore_index
        self.parse_loss = DistillationParsingLoss(parse_ce_weight, parse_lovasz_weight, temperature,
                                                  ignore_index)
        self.kl = DistillationKL(temperature)
        self.attention = _EdgeAttention(csr_attention and "binary_attention" in tasks,
                                        csr_attention and "category_attention" in tasks,
                                        category_attention_mode, class_weights,
                                        include_background_edges, ignore_index)

    def _teacher(self, logits: Tensor, target: Tensor, size: Tuple[int, int],
                 cycle: Optional[int]) -> Tensor:
        logits = resize_logits(logits.detach(), size)
        if self.soft_targets == "released":
            if cycle is None:
                raise ValueError('soft_targets="released" needs the cycle index m')
            logits = mix_with_one_hot(logits, target, 1.0 / (cycle + 1.0), self.ignore_index)
        return logits

    def forward(self, outputs: ModelOutputs, batch: Mapping[str, Tensor],
                teacher_outputs: ModelOutputs, cycle: Optional[int] = None) -> Dict[str, Tensor]:
        """``cycle``: the CSR cycle index m >= 1 (needed by soft_targets="released")."""
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
        total = (self.distill_parse_weight * parts["parse"]
                 + self.distill_binary_weight * parts.get("binary_edge_kl", zero)
                 + self.distill_category_weight * parts.get("category_edge_kl", zero)
                 + self.binary_attention_weight * parts.get("binary_attention", zero)
                 + self.category_attention_weight * parts.get("category_attention", zero))
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}


def build_losses(cfg) -> Tuple[MultiTaskLoss, SelfDistillationLoss]:
    """The two loss modules of a resolved ``Config``: each ``loss.KEY`` goes to the argument KEY."""
    lc = cfg.loss
    class_weights = list(lc.class_weights) or None
    multitask = MultiTaskLoss(
        parse_ce_weight=lc.parse_ce_weight, parse_lovasz_weight=lc.parse_lovasz_weight,
        binary_edge_weight=lc.binary_edge_weight, category_edge_weight=lc.category_edge_weight,
        binary_attention_weight=lc.binary_attention_weight,
        category_attention_weight=lc.category_attention_weight,
        category_edge_weighting=lc.category_edge_weighting,
        category_attention_mode=lc.category_attention_mode, class_weights=class_weights,
        tasks=lc.tasks)
    distill = SelfDistillationLoss(
        distill_parse_weight=lc.distill_parse_weight,
        distill_binary_weight=lc.distill_binary_weight,
        distill_category_weight=lc.distill_category_weight,
        parse_ce_weight=lc.parse_ce_weight, parse_lovasz_weight=lc.parse_lovasz_weight,
        temperature=lc.temperature, soft_targets=lc.soft_targets, csr_attention=lc.csr_attention,
        binary_attention_weight=lc.binary_attention_weight,
        category_attention_weight=lc.category_attention_weight,
        category_attention_mode=lc.category_attention_mode, class_weights=class_weights,
        tasks=lc.tasks)
    return multitask, distill
