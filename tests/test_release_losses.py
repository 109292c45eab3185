"""The `released` preset's losses against the authors' ``Criterion``, its formulas written out here.

The reference functions below follow the release's ``loss/criterion.py`` and ``train.py`` step by
step (term weights (1, 1, 1, 4, 1); 0.5 Lovasz + 0.5 CE; the parsing term doubled twice, the
category-edge term doubled once; per-image normalisers of both attention terms; frequency class
weights; ``batchmean`` KL over the valid pixels). They share no code with ``dml_csr.losses``.
The batches have no ignored pixels, where the release's in-place one-hot would rewrite labels.
In the CSR stage the release reads its parsing soft targets from the category-edge labels (a
crash, spec: "a crash in the self-regulation stage"); the reference uses the teacher's parsing
logits, as that code intends.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dml_csr.config import load_config
from dml_csr.data.edges import binary_edges, category_edges
from dml_csr.losses import build_losses

N, K, H, W = 3, 5, 24, 24


def _batch(seed):
    rng = np.random.default_rng(seed)
    labels, edges, cats = [], [], []
    for _ in range(N):
        small = rng.integers(0, K, size=(H // 4, W // 4))
        label = np.kron(small, np.ones((4, 4), np.int64)).astype(np.uint8)
        edge = binary_edges(label)
        labels.append(label)
        edges.append(edge)
        cats.append(category_edges(label, edge))
    as_long = lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.int64))  # noqa: E731
    return {"label": as_long(labels), "edge": as_long(edges), "cat_edge": as_long(cats)}


def _outputs(seed, size=(12, 12)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, c, *size, generator=g) * 3 for c in (K, 2, K)]


def _lovasz(probs, label):
    """Lovasz-softmax over the classes present (Berman et al.), one flattened batch."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
    y = label.reshape(-1)
    losses = []
    for c in range(p.shape[1]):
        fg = (y == c).float()
        if fg.sum() == 0:
            continue
        errors, order = (fg - p[:, c]).abs().sort(descending=True)
        fg_sorted = fg[order]
        inter = fg_sorted.sum() - fg_sorted.cumsum(0)
        union = fg_sorted.sum() + (1 - fg_sorted).cumsum(0)
        jaccard = 1 - inter / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
        losses.append((errors * jaccard).sum())
    return sum(losses) / len(losses)


def _up(t):
    return F.interpolate(t, size=(H, W), mode="bilinear", align_corners=True)


def _attention(parse, label, edge, cat_edge):
    pixel_ce = F.cross_entropy(parse, label, reduction="none")
    b_count = edge.flatten(1).sum(1).float().view(-1, 1, 1)            # per image
    binary = (pixel_ce * edge.float() / b_count).sum() / N
    c_count = (cat_edge != 0).flatten(1).sum(1).float().view(-1, 1, 1)  # per image
    category = (pixel_ce * cat_edge.float() / c_count).sum() / N
    return binary, category


def _kl(student, soft_logits):
    log_p = F.log_softmax(student, 1).permute(0, 2, 3, 1).reshape(-1, student.shape[1])
    q = F.softmax(soft_logits, 1).permute(0, 2, 3, 1).reshape(-1, student.shape[1])
    return F.kl_div(log_p, q, reduction="batchmean")


def _mix(teacher, target, classes, alpha):
    one_hot = F.one_hot(target, classes).permute(0, 3, 1, 2).float()
    return (1 - alpha) * teacher + alpha * one_hot


def release_multitask(preds, batch):
    label, edge, cat_edge = batch["label"], batch["edge"], batch["cat_edge"]
    parse = _up(preds[0])
    pos, neg = float((edge == 1).sum()), float((edge == 0).sum())
    binary_w = torch.tensor([pos / (pos + neg), neg / (pos + neg)])
    sem_w = torch.tensor([float((cat_edge == c).sum()) / cat_edge.numel() for c in range(K)])
    loss_parse = 0.5 * _lovasz(F.softmax(parse, 1), label) + 0.5 * F.cross_entropy(parse, label)
    loss_binary = F.cross_entropy(_up(preds[1]), edge, binary_w)
    loss_sem = 0.1 * F.cross_entropy(_up(preds[2]), cat_edge, sem_w)
    att_binary, att_sem = _attention(parse, label, edge, cat_edge)
    loss_parse = loss_parse + loss_parse
    loss_parse = loss_parse + loss_parse
    loss_sem = loss_sem + loss_sem
    return loss_parse + loss_binary + loss_sem + 4 * att_binary + att_sem


def release_csr(preds, teacher, batch, cycle):
    label, edge, cat_edge = batch["label"], batch["edge"], batch["cat_edge"]
    alpha = 1.0 / (cycle + 1.0)
    parse = _up(preds[0])
    loss_parse = 0.5 * _lovasz(F.softmax(parse, 1), label)
    loss_parse = loss_parse + 0.5 * _kl(parse, _mix(_up(teacher[0]), label, K, alpha))
    loss_binary = _kl(_up(preds[1]), _mix(_up(teacher[1]), edge, 2, alpha))
    loss_sem = 0.1 * _kl(_up(preds[2]), _mix(_up(teacher[2]), cat_edge, K, alpha))
    att_binary, att_sem = _attention(parse, label, edge, cat_edge)
    loss_parse = 4 * loss_parse
    loss_sem = 2 * loss_sem
    return loss_parse + loss_binary + loss_sem + 4 * att_binary + att_sem


@pytest.fixture(scope="module")
def released_losses():
    return build_losses(load_config("lapa", ["preset=released"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_released_multitask_loss_is_the_releases(released_losses, seed):
    batch, preds = _batch(seed), _outputs(seed + 10)
    got = released_losses[0](preds, batch)["loss"].item()
    want = release_multitask(preds, batch).item()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_released_csr_loss_is_the_releases(released_losses, seed):
    batch, preds, teacher = _batch(seed), _outputs(seed + 10), _outputs(seed + 20)
    for cycle in (1, 3):
        got = released_losses[1](preds, batch, teacher, cycle=cycle)["loss"].item()
        want = release_csr(preds, teacher, batch, cycle).item()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_paper_preset_is_not_the_releases():
    """The reference can tell the presets apart (and the old reading: x4 on the whole sum)."""
    batch, preds = _batch(0), _outputs(10)
    paper = build_losses(load_config("lapa", ["preset=paper"]))[0](preds, batch)
    released = build_losses(load_config("lapa", ["preset=released"]))[0](preds, batch)
    want = release_multitask(preds, batch).item()
    assert abs(paper["loss"].item() - want) > 1e-2 * want
    # the whole released sum times 4 (what the preset used to compute) is far off the release
    assert 4 * released["loss"].item() > 1.5 * want
