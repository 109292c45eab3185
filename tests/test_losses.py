"""Each loss term against a slow, literal implementation of its definition on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from dml_csr.losses import (BinaryEdgeAttentionLoss, BinaryEdgeLoss, CategoryEdgeAttentionLoss,
                            CategoryEdgeLoss, DistillationKL, LovaszSoftmaxLoss, MultiTaskLoss,
                            ParsingLoss, SelfDistillationLoss, lovasz_softmax_flat, mix_with_one_hot)
from dml_csr.config import load_config
from dml_csr.losses import build_losses
from dml_csr.losses.common import pixel_cross_entropy

N, K, H, W = 2, 4, 6, 5
IGNORE = 255


# ----------------------------------------------------------------------------- fixtures
def binary_edges(label):
    """4-neighbour edge rule of docs/data.md, written as loops; 255 where the label is 255."""
    edge = torch.zeros_like(label)
    n, h, w = label.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if label[i, y, x] == IGNORE:
                    edge[i, y, x] = IGNORE
                    continue
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and label[i, yy, xx] not in (IGNORE, label[i, y, x]):
                        edge[i, y, x] = 1
    return edge


def make_batch(seed=0, ignore_rows=1):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, K, (N, H, W), generator=g)
    label[0, :ignore_rows] = IGNORE          # some ignored pixels in image 0
    label[1, 2:, 1:4] = 0                    # a background blob: background edges exist
    edge = binary_edges(label)
    cat_edge = torch.where(edge == 1, label, torch.zeros_like(label))
    cat_edge[label == IGNORE] = IGNORE
    assert ((edge == 1) & (label == 0)).any(), "fixture must contain background-edge pixels"
    return {"label": label, "edge": edge, "cat_edge": cat_edge}


def make_logits(seed=1, size=(H, W), requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(N, K, *size), (N, 2, *size), (N, K, *size)]
    return [torch.randn(s, generator=g).mul_(2).requires_grad_(requires_grad) for s in shapes]


def pixels(t):
    """All (i, y, x) positions of an (N,H,W) tensor."""
    n, h, w = t.shape
    return [(i, y, x) for i in range(n) for y in range(h) for x in range(w)]


def ce_at(logits, i, y, x, target):
    """-log softmax(logits[i, :, y, x])[target] written out."""
    z = logits[i, :, y, x].tolist()
    m = max(z)
    log_norm = m + math.log(sum(math.exp(v - m) for v in z))
    return log_norm - z[target]


def softmax_at(logits, i, y, x, temperature=1.0):
    z = [v / temperature for v in logits[i, :, y, x].tolist()]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


# ----------------------------------------------------------------------------- references
def ref_lovasz(probs, label):
    """Lovasz extension of Delta_c(M) = |M| / |F_c u M| on sorted errors, with Python sets."""
    valid = [p for p in pixels(label) if label[p] != IGNORE]
    losses = []
    for c in range(probs.shape[1]):
        fg = {p for p in valid if label[p] == c}
        if not fg:
            continue                                          # classes present only
        error = {p: abs((1.0 if p in fg else 0.0) - probs[p[0], c, p[1], p[2]].item()) for p in valid}
        order = sorted(valid, key=lambda p: -error[p])
        jaccard_loss = lambda m: len(m) / len(fg | m) if m else 0.0
        total, prefix, previous = 0.0, set(), 0.0
        for p in order:
            prefix.add(p)
            current = jaccard_loss(prefix)
            total += error[p] * (current - previous)
            previous = current
        losses.append(total)
    return sum(losses) / len(losses) if losses else 0.0


def ref_mean_ce(logits, target):
    values = [ce_at(logits, *p, target[p].item()) for p in pixels(target) if target[p] != IGNORE]
    return sum(values) / len(values) if values else 0.0


def ref_weighted_ce(logits, target, class_weight):
    """sum_p w[y_p] CE_p / sum_p w[y_p]; class_weight a Python list."""
    num = den = 0.0
    for p in pixels(target):
        t = target[p].item()
        if t == IGNORE:
            continue
        num += class_weight[t] * ce_at(logits, *p, t)
        den += class_weight[t]
    return num / den if den > 0 else 0.0


def counts(target, num_classes):
    c = [0] * num_classes
    for p in pixels(target):
        if target[p] != IGNORE:
            c[target[p].item()] += 1
    return c


def ref_binary_attention(logits, label, edge):
    """Eq. 3 with explicit loops over images and pixels, averaged over all N images."""
    per_image = []
    for i in range(label.shape[0]):
        ces = [ce_at(logits, i, y, x, label[i, y, x].item()) for (j, y, x) in pixels(label)
               if j == i and edge[i, y, x] == 1 and label[i, y, x] != IGNORE]
        per_image.append(sum(ces) / len(ces) if ces else 0.0)
    return sum(per_image) / len(per_image)


def ref_category_attention(logits, label, edge, cat_edge, class_weight, include_background=True):
    """Eq. 4: (1/(N*C)) sum_i sum_j w_j / c_ij * sum_{p in E_ij} CE_p, loops everywhere."""
    n, k = label.shape[0], logits.shape[1]
    classes = range(k) if include_background else range(1, k)
    total = 0.0
    for i in range(n):
        for j in classes:
            members = [(y, x) for (ii, y, x) in pixels(label) if ii == i and edge[i, y, x] == 1
                       and cat_edge[i, y, x] == j and label[i, y, x] != IGNORE]
            if members:
                s = sum(ce_at(logits, i, y, x, label[i, y, x].item()) for y, x in members)
                total += class_weight[j] * s / len(members)
    return total / (n * len(classes))


def ref_released_category_attention(logits, label, cat_edge):
    """The release: per image, sum of class id x CE over its category-edge pixels divided by
    their count in that image; summed over the images and divided by N."""
    total = 0.0
    for i in range(label.shape[0]):
        num, count = 0.0, 0
        for (j, y, x) in pixels(label):
            p = (j, y, x)
            if j == i and label[p] != IGNORE and cat_edge[p] not in (0, IGNORE):
                num += cat_edge[p].item() * ce_at(logits, *p, label[p].item())
                count += 1
        total += num / count if count else 0.0
    return total / label.shape[0]


def ref_kl(student, teacher, label, temperature=1.0):
    """mean over valid pixels of T^2 * sum_k q_k (log q_k - log p_k), q teacher, p student."""
    values = []
    for p in pixels(label):
        if label[p] == IGNORE:
            continue
        q = softmax_at(teacher, *p, temperature)
        s = softmax_at(student, *p, temperature)
        values.append(temperature ** 2 * sum(qk * (math.log(qk) - math.log(sk)) for qk, sk in zip(q, s)))
    return sum(values) / len(values) if values else 0.0


# ----------------------------------------------------------------------------- Lovasz
def test_lovasz_matches_set_definition():
    batch = make_batch()
    logits = make_logits()[0]
    probs = torch.softmax(logits, dim=1)
    got = lovasz_softmax_flat(probs, batch["label"])
    assert got.item() == pytest.approx(ref_lovasz(probs, batch["label"]), rel=1e-5, abs=1e-6)
    assert LovaszSoftmaxLoss()(logits, batch["label"]).item() == pytest.approx(got.item(), rel=1e-6)


def test_lovasz_equals_jaccard_loss_on_hard_predictions():
    # For 0/1 errors the Lovasz extension is the Jaccard loss itself: mean_c (1 - IoU_c).
    batch = make_batch(seed=3)
    label = batch["label"]
    g = torch.Generator().manual_seed(5)
    pred = torch.randint(0, K, label.shape, generator=g)
    probs = F.one_hot(pred, K).permute(0, 3, 1, 2).float()
    valid = label != IGNORE
    ious = []
    for c in range(K):
        gt_c, pr_c = (label == c) & valid, (pred == c) & valid
        if gt_c.any():
            ious.append((gt_c & pr_c).sum().item() / (gt_c | pr_c).sum().item())
    expected = sum(1 - v for v in ious) / len(ious)
    assert lovasz_softmax_flat(probs, label).item() == pytest.approx(expected, rel=1e-6)


def test_lovasz_only_present_classes_count():
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    label[0, 0, 0] = 1                              # classes 0 and 1 present, 2 and 3 absent
    probs = torch.softmax(torch.randn(1, K, 2, 2), dim=1)
    assert lovasz_softmax_flat(probs, label).item() == pytest.approx(ref_lovasz(probs, label), rel=1e-5)
    # a perfect prediction costs nothing even though absent classes have zero probability
    perfect = F.one_hot(label, K).permute(0, 3, 1, 2).float()
    assert lovasz_softmax_flat(perfect, label).item() == 0.0


# ----------------------------------------------------------------------------- parsing (eq. 2)
def test_parsing_loss_is_weighted_ce_plus_lovasz():
    batch = make_batch()
    logits = make_logits()[0]
    out = ParsingLoss(ce_weight=0.3, lovasz_weight=0.7)(logits, batch["label"])
    ce = ref_mean_ce(logits, batch["label"])
    lov = ref_lovasz(torch.softmax(logits, 1), batch["label"])
    assert out["parse_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["parse_lovasz"].item() == pytest.approx(lov, rel=1e-5)
    assert out["parse"].item() == pytest.approx(0.3 * ce + 0.7 * lov, rel=1e-5)


# ----------------------------------------------------------------------------- edge CEs
def test_binary_edge_loss_hand_weighted():
    batch = make_batch()
    logits = make_logits()[1]
    edge = batch["edge"]
    n_non, n_edge = counts(edge, 2)
    weights = [n_edge / (n_non + n_edge), n_non / (n_non + n_edge)]
    got = BinaryEdgeLoss()(logits, edge).item()
    assert got == pytest.approx(ref_weighted_ce(logits, edge, weights), rel=1e-5)
    # equivalent form: half the mean CE on edge pixels plus half the mean CE off edges
    on = [ce_at(logits, *p, 1) for p in pixels(edge) if edge[p] == 1]
    off = [ce_at(logits, *p, 0) for p in pixels(edge) if edge[p] == 0]
    assert got == pytest.approx(0.5 * sum(on) / len(on) + 0.5 * sum(off) / len(off), rel=1e-5)


def test_category_edge_balanced_and_frequency_hand_weighted():
    batch = make_batch()
    logits = make_logits()[2]
    cat = batch["cat_edge"]
    c = counts(cat, K)
    n_non, n_edge, n_valid = c[0], sum(c[1:]), sum(c)
    balanced = [n_edge / n_valid] + [n_non / n_valid] * (K - 1)
    frequency = [cj / n_valid for cj in c]
    got_b = CategoryEdgeLoss("balanced")(logits, cat).item()
    got_f = CategoryEdgeLoss("frequency")(logits, cat).item()
    assert got_b == pytest.approx(ref_weighted_ce(logits, cat, balanced), rel=1e-5)
    assert got_f == pytest.approx(ref_weighted_ce(logits, cat, frequency), rel=1e-5)
    assert abs(got_b - got_f) > 1e-3                 # the release's weighting is a different loss
    with pytest.raises(ValueError):
        CategoryEdgeLoss("inverse")


# ----------------------------------------------------------------------------- attention (eqs. 3, 4)
def test_binary_attention_matches_loops_and_divides_by_n():
    batch = make_batch()
    logits = make_logits()[0]
    edge = batch["edge"].clone()
    edge[1][edge[1] == 1] = 0                        # image 1 has no edge pixel: contributes 0
    pce = pixel_cross_entropy(logits, batch["label"])
    got = BinaryEdgeAttentionLoss()(pce, batch["label"], edge).item()
    expected = ref_binary_attention(logits, batch["label"], edge)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(ref_binary_attention(logits[:1], batch["label"][:1], edge[:1]) / 2,
                                rel=1e-5)


@pytest.mark.parametrize("include_background", [True, False])
def test_category_attention_matches_loops(include_background):
    batch = make_batch()
    logits = make_logits()[0]
    weights = [0.5, 1.0, 2.0, 3.0]
    pce = pixel_cross_entropy(logits, batch["label"])
    loss = CategoryEdgeAttentionLoss("eq4", weights, include_background)
    got = loss(pce, batch["label"], batch["edge"], batch["cat_edge"], K).item()
    expected = ref_category_attention(logits, batch["label"], batch["edge"], batch["cat_edge"],
                                      weights, include_background)
    assert got == pytest.approx(expected, rel=1e-5)


def test_category_attention_background_edges_come_from_binary_map():
    batch = make_batch()
    logits = make_logits()[0]
    pce = pixel_cross_entropy(logits, batch["label"])
    args = (pce, batch["label"], batch["edge"], batch["cat_edge"], K)
    with_bg = CategoryEdgeAttentionLoss(include_background=True)(*args).item()
    without = CategoryEdgeAttentionLoss(include_background=False)(*args).item()
    # without background: same pair sums over C = K - 1 classes
    bg_only = ref_category_attention(logits, *args[1:4], [1, 0, 0, 0]) * N * K
    assert with_bg * N * K == pytest.approx(without * N * (K - 1) + bg_only, rel=1e-5)
    assert bg_only > 0


def test_category_attention_released_variant():
    batch = make_batch()
    logits = make_logits()[0]
    pce = pixel_cross_entropy(logits, batch["label"])
    args = (pce, batch["label"], batch["edge"], batch["cat_edge"], K)
    released = CategoryEdgeAttentionLoss("released")(*args).item()
    assert released == pytest.approx(
        ref_released_category_attention(logits, batch["label"], batch["cat_edge"]), rel=1e-5)
    assert abs(released - CategoryEdgeAttentionLoss("eq4")(*args).item()) > 1e-3
    # per image, not per batch: pooling the two images' edge pixels gives another number
    on = (batch["cat_edge"] > 0) & (batch["cat_edge"] != IGNORE) & (batch["label"] != IGNORE)
    pooled = (pce * batch["cat_edge"].float() * on).sum() / on.sum()
    assert abs(released - pooled.item()) > 1e-3
    with pytest.raises(ValueError):
        CategoryEdgeAttentionLoss("eq4", [1.0, 1.0])(*args)      # wrong number of class weights


# ----------------------------------------------------------------------------- distillation (eq. 7)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_matches_formula(temperature):
    batch = make_batch()
    student, teacher = make_logits(seed=1)[0], make_logits(seed=2)[0]
    got = DistillationKL(temperature)(student, teacher, batch["label"] != IGNORE).item()
    assert got == pytest.approx(ref_kl(student, teacher, batch["label"], temperature), rel=1e-5)


def test_mixed_soft_targets_follow_release_formula():
    batch = make_batch()
    teacher = make_logits(seed=2)[0]
    label = batch["label"]
    m = 2
    mixed = mix_with_one_hot(teacher, label, 1.0 / (m + 1))
    for p in pixels(label):
        for k in range(K):
            one_hot = 1.0 if label[p] == k else 0.0      # ignored pixels: all zero
            expected = m / (m + 1) * teacher[p[0], k, p[1], p[2]].item() + one_hot / (m + 1)
            assert mixed[p[0], k, p[1], p[2]].item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_self_distillation_parts_and_total():
    batch = make_batch()
    student, teacher = make_logits(seed=1), make_logits(seed=2)
    label = batch["label"]
    loss = SelfDistillationLoss(parse_ce_weight=0.5, parse_lovasz_weight=0.25)
    out = loss(student, batch, teacher)
    assert out["parse_kl"].item() == pytest.approx(ref_kl(student[0], teacher[0], label), rel=1e-5)
    assert out["parse_lovasz"].item() == pytest.approx(ref_lovasz(torch.softmax(student[0], 1), label),
                                                       rel=1e-5)
    assert out["binary_edge_kl"].item() == pytest.approx(ref_kl(student[1], teacher[1], label), rel=1e-5)
    assert out["category_edge_kl"].item() == pytest.approx(ref_kl(student[2], teacher[2], label), rel=1e-5)
    assert out["parse"].item() == pytest.approx(
        (0.5 * out["parse_kl"] + 0.25 * out["parse_lovasz"]).item(), rel=1e-6)
    expected = 1.0 * out["parse"] + 1.0 * out["binary_edge_kl"] + 0.1 * out["category_edge_kl"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert "binary_attention" not in out and "category_attention" not in out


def test_self_distillation_released_options():
    batch = make_batch()
    student, teacher = make_logits(seed=1), make_logits(seed=2)
    label = batch["label"]
    paper = SelfDistillationLoss()(student, batch, teacher)
    released = SelfDistillationLoss(soft_targets="released", csr_attention=True,
                                    category_attention_mode="released", distill_category_weight=0.2)
    out = released(student, batch, teacher, cycle=1)
    mixed = mix_with_one_hot(teacher[1], batch["edge"], 0.5)
    assert out["binary_edge_kl"].item() == pytest.approx(ref_kl(student[1], mixed, label), rel=1e-5)
    assert abs(out["parse_kl"].item() - paper["parse_kl"].item()) > 1e-3
    assert out["binary_attention"].item() == pytest.approx(
        ref_binary_attention(student[0], label, batch["edge"]), rel=1e-5)
    assert out["category_attention"].item() == pytest.approx(
        ref_released_category_attention(student[0], label, batch["cat_edge"]), rel=1e-5)
    expected = (out["parse"] + out["binary_edge_kl"] + 0.2 * out["category_edge_kl"]
                + 4.0 * out["binary_attention"] + 1.0 * out["category_attention"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # cycle m = 0 mixes with weight 1: the target is the softmax of the one-hot label alone
    at_zero = released(student, batch, teacher, cycle=0)["parse_kl"].item()
    one_hot = F.one_hot(label.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    assert at_zero == pytest.approx(ref_kl(student[0], one_hot, label), rel=1e-5)
    with pytest.raises(ValueError):
        released(student, batch, teacher)            # mixed targets need the cycle index


def test_self_distillation_teacher_is_not_trained_and_student_is():
    batch = make_batch()
    student = make_logits(seed=1, requires_grad=True)
    teacher = make_logits(seed=2, requires_grad=True)
    SelfDistillationLoss(csr_attention=True)(student, batch, teacher)["loss"].backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_self_distillation_edge_heads_must_match():
    batch = make_batch()
    student, teacher = make_logits(seed=1), make_logits(seed=2)
    with pytest.raises(ValueError):
        SelfDistillationLoss()(student, batch, teacher[0])
    parse_only = SelfDistillationLoss()(student[0], batch, teacher[0])
    assert set(parse_only) == {"loss", "parse", "parse_kl", "parse_lovasz"}


# ----------------------------------------------------------------------------- multi-task (eq. 5)
def test_multitask_parts_match_references_and_total_is_weighted_sum():
    batch = make_batch()
    logits = make_logits(requires_grad=True)
    label = batch["label"]
    weights = dict(binary_edge_weight=0.7, category_edge_weight=0.3, binary_attention_weight=4.0,
                   category_attention_weight=2.0)
    loss = MultiTaskLoss(**weights, parse_ce_weight=0.5, parse_lovasz_weight=1.5)
    out = loss(logits, batch)
    ce, lov = ref_mean_ce(logits[0], label), ref_lovasz(torch.softmax(logits[0], 1), label)
    assert out["parse"].item() == pytest.approx(0.5 * ce + 1.5 * lov, rel=1e-5)
    n_non, n_edge = counts(batch["edge"], 2)
    bw = [n_edge / (n_non + n_edge), n_non / (n_non + n_edge)]
    assert out["binary_edge"].item() == pytest.approx(ref_weighted_ce(logits[1], batch["edge"], bw), rel=1e-5)
    assert out["binary_attention"].item() == pytest.approx(
        ref_binary_attention(logits[0], label, batch["edge"]), rel=1e-5)
    assert out["category_attention"].item() == pytest.approx(
        ref_category_attention(logits[0], label, batch["edge"], batch["cat_edge"], [1.0] * K), rel=1e-5)
    expected = (out["parse"] + 0.7 * out["binary_edge"] + 0.3 * out["category_edge"]
                + 4.0 * out["binary_attention"] + 2.0 * out["category_attention"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss"].requires_grad and not any(v.requires_grad for k, v in out.items() if k != "loss")


def test_multitask_release_weights_differ_from_paper():
    batch = make_batch()
    logits = make_logits()
    paper = MultiTaskLoss()(logits, batch)
    released = build_losses(load_config("synthetic", ["preset=released"]))[0](logits, batch)
    for key in ("loss", "category_edge", "category_attention"):
        assert abs(paper[key].item() - released[key].item()) > 1e-3, key
    assert released["parse"].item() == pytest.approx(2.0 * paper["parse"].item(), rel=1e-6)


def test_multitask_logits_are_upsampled_to_label_size():
    batch = make_batch()
    low = make_logits(size=(3, 3))
    up = [F.interpolate(t, size=(H, W), mode="bilinear", align_corners=True) for t in low]
    a, b = MultiTaskLoss()(low, batch), MultiTaskLoss()(up, batch)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6), key


def test_multitask_gradients_reach_every_head():
    batch = make_batch()
    logits = make_logits(size=(3, 3), requires_grad=True)
    MultiTaskLoss()(logits, batch)["loss"].backward()
    for t in logits:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_ignored_pixels_do_not_matter():
    batch = make_batch(ignore_rows=2)
    logits = make_logits()
    ignored = (batch["label"] == IGNORE).unsqueeze(1)
    noisy = [torch.where(ignored, torch.randn_like(t) * 10, t) for t in logits]
    loss = MultiTaskLoss(category_edge_weighting="frequency")
    a, b = loss(logits, batch), loss(noisy, batch)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6), key
    teacher = make_logits(seed=2)
    sd = SelfDistillationLoss(soft_targets="released", csr_attention=True)
    a, b = sd(logits, batch, teacher, cycle=1), sd(noisy, batch, teacher, cycle=1)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6), key


def test_task_switches_and_parse_only_models():
    batch = make_batch()
    logits = make_logits()
    full = MultiTaskLoss()(logits, batch)
    assert set(full) == {"loss", "parse", "parse_ce", "parse_lovasz", "binary_edge", "category_edge",
                         "binary_attention", "category_attention"}
    p_b = MultiTaskLoss(tasks=["binary_edge"])(logits, batch)
    assert set(p_b) == {"loss", "parse", "parse_ce", "parse_lovasz", "binary_edge"}
    assert p_b["loss"].item() == pytest.approx((full["parse"] + full["binary_edge"]).item(), rel=1e-6)
    # a model without edge heads (baseline, FP-LIIF): parsing and attention terms only
    parse_only = MultiTaskLoss()(logits[0], {"label": batch["label"], "edge": batch["edge"],
                                             "cat_edge": batch["cat_edge"]})
    assert set(parse_only) == {"loss", "parse", "parse_ce", "parse_lovasz", "binary_attention",
                               "category_attention"}
    assert parse_only["loss"].item() == pytest.approx(
        (full["parse"] + 4 * full["binary_attention"] + full["category_attention"]).item(), rel=1e-6)
    no_att = MultiTaskLoss(tasks=["binary_edge", "category_edge"])
    assert set(no_att(logits[0], {"label": batch["label"]})) == {"loss", "parse", "parse_ce", "parse_lovasz"}
    with pytest.raises(KeyError):
        MultiTaskLoss()(logits[0], {"label": batch["label"]})    # attention needs the edge labels


@pytest.mark.parametrize("case", ["no_edges", "all_ignored"])
def test_no_nan_without_edges_or_valid_pixels(case):
    label = torch.full((N, H, W), 2 if case == "no_edges" else IGNORE, dtype=torch.long)
    edge = binary_edges(label)
    cat_edge = torch.where(label == IGNORE, label, torch.zeros_like(label))
    batch = {"label": label, "edge": edge, "cat_edge": cat_edge}
    logits = make_logits(size=(3, 3), requires_grad=True)
    teacher = make_logits(seed=2)
    for weighting in ("balanced", "frequency"):
        for mode in ("eq4", "released"):
            out = MultiTaskLoss(category_edge_weighting=weighting,
                                category_attention_mode=mode)(logits, batch)
            sd = SelfDistillationLoss(soft_targets="released", csr_attention=True,
                                      category_attention_mode=mode)(logits, batch, teacher, cycle=1)
            for result in (out, sd):
                assert all(torch.isfinite(v) for v in result.values())
                result["loss"].backward()
                assert all(torch.isfinite(t.grad).all() for t in logits)
    assert out["binary_attention"].item() == 0.0 and out["category_attention"].item() == 0.0
    if case == "all_ignored":
        assert out["loss"].item() == 0.0
    else:
        assert out["parse_ce"].item() > 0 and out["binary_edge"].item() == 0.0
