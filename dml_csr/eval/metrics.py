"""The face-parsing scorer of the DML-CSR release (docs/evaluation.md), shared by every method here.

One confusion histogram ``H[gt, pred]`` is pooled over ALL pixels of a split (pixels whose label is
the ignore value 255 are dropped), and every number is computed from that single histogram:

- F1 of a set G of gt classes against a set P of predicted classes:
  ``2 * H[G, P].sum() / (H[G, :].sum() + H[:, P].sum())``; single classes use G = P = {c}; the
  merged groups of the data set's description (Helen's eyes, brows, mouth, overall) use G = P =
  the union, so confusions inside a merged set count as hits.
- IoU_c = TP / max(1, TP + FP + FN); mIoU over all classes including background (release formula).
- Mean F1 over every single class except background; pixel accuracy; mean class accuracy
  TP_c / max(1, H[c, :].sum()) averaged over all classes (release formula).

Pooling is deliberate: a per-image average would weigh a 20-pixel earring in one image as much as
the whole face of another and would be undefined on every image where a class is absent.

Classes absent from both the ground truth and the prediction (F1 = 0/0) get F1 ``None`` and are
left out of the mean F1. On the real benchmarks every class occurs in every test split, so this
equals the release's number exactly; the release itself would print ``nan`` there. IoU and class
accuracy keep the release's ``max(1, ...)`` guard (an absent class scores 0 and still counts in
mIoU and mean accuracy); the ``absent`` field of the result lists such classes.

All returned numbers are percentages.
"""
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from ..data.schemas import HEADLINES, IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "HEADLINES", "ConfusionMatrix", "confusion_histogram",
           "compute_metrics", "default_headline", "protocol_description"]


def _description(labels, dataset: Optional[str] = None):
    """(tokens, merged groups, default headline) of ``labels``: a data-set description
    (``Schema``: its own groups and headline), or the K tokens alone (no merged group, mean F1),
    unless ``dataset`` names a built-in description with exactly these tokens."""
    from ..data.schemas import SCHEMAS, Schema
    if isinstance(labels, Schema):
        return list(labels.tokens), labels.merged_groups(), labels.headline
    tokens = list(labels)
    builtin = SCHEMAS.get(dataset) if dataset else None
    if builtin is not None and list(builtin.tokens) == tokens:
        return tokens, builtin.merged_groups(), builtin.headline
    return tokens, {}, "mean_f1"


def _is_torch_tensor(x) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to find out
    return torch is not None and isinstance(x, torch.Tensor)


def confusion_histogram(gt, pred, num_classes: int,
                        ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """Histogram ``H[gt, pred]`` (int64, (K, K)) of one label map pair or a batch of them.

    Args:
        gt: integer labels of any shape (numpy array or torch tensor, any device); ``ignore_index``
            pixels are dropped, every other value must lie in [0, K).
        pred: integer predictions of the same shape; values at kept pixels must lie in [0, K).
        num_classes: K.
        ignore_index: label value to drop (None keeps every pixel).
    """
    if _is_torch_tensor(gt) or _is_torch_tensor(pred):
        return _torch_histogram(gt, pred, num_classes, ignore_index)
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_pair(gt.shape, pred.shape, np.issubdtype(gt.dtype, np.integer),
                np.issubdtype(pred.dtype, np.integer), gt.dtype, pred.dtype)
    if ignore_index is not None:
        keep = gt != ignore_index
        gt, pred = gt[keep], pred[keep]
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    if gt.size:
        _check_range("gt", int(gt.min()), int(gt.max()), num_classes)
        _check_range("pred", int(pred.min()), int(pred.max()), num_classes)
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.int64, copy=False)


def _torch_histogram(gt, pred, num_classes, ignore_index) -> np.ndarray:
    import torch

    device = gt.device if isinstance(gt, torch.Tensor) else pred.device
    gt, pred = torch.as_tensor(gt, device=device), torch.as_tensor(pred, device=device)
    _check_pair(tuple(gt.shape), tuple(pred.shape), _torch_is_int(gt), _torch_is_int(pred),
                gt.dtype, pred.dtype)
    if ignore_index is not None:
        keep = gt != ignore_index
        gt, pred = gt[keep], pred[keep]
    gt, pred = gt.reshape(-1).long(), pred.reshape(-1).long()
    if gt.numel():
        _check_range("gt", int(gt.min()), int(gt.max()), num_classes)
        _check_range("pred", int(pred.min()), int(pred.max()), num_classes)
    hist = torch.bincount(gt * num_classes + pred, minlength=num_classes ** 2)
    return hist.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64, copy=False)


def _torch_is_int(t) -> bool:
    import torch

    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_pair(gt_shape, pred_shape, gt_is_int, pred_is_int, gt_dtype, pred_dtype) -> None:
    if tuple(gt_shape) != tuple(pred_shape):
        raise ValueError(f"gt shape {tuple(gt_shape)} != pred shape {tuple(pred_shape)}")
    if not (gt_is_int and pred_is_int):
        raise TypeError(f"labels must be integer arrays, got gt {gt_dtype} and pred {pred_dtype}")


def _check_range(what: str, lo: int, hi: int, num_classes: int) -> None:
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{what} holds ids in [{lo}, {hi}], outside [0, {num_classes - 1}] "
                         f"(the ignore value is only dropped from gt)")


class ConfusionMatrix:
    """Accumulates one pooled histogram ``hist[gt, pred]`` (int64, (K, K)) over a whole split.

    ``update`` takes numpy arrays or torch tensors (on any device; the counting runs there).
    Partial matrices (data loader shards, processes) combine with ``merge`` / ``+`` or, under
    torch.distributed, ``all_reduce()``.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, gt, pred) -> "ConfusionMatrix":
        """Add one label map pair (H, W) or a batch (N, H, W); see ``confusion_histogram``."""
        self.hist += confusion_histogram(gt, pred, self.num_classes, self.ignore_index)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add ``other``'s counts into this matrix (in place) and return it."""
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix (ignore "
                             f"{other.ignore_index}) into a {self.num_classes}-class one "
                             f"(ignore {self.ignore_index})")
        self.hist += other.hist
        return self

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.merge(other)

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.hist = self.hist.copy()
        return out.merge(other)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the histogram over all torch.distributed processes (no-op when not distributed)."""
        import torch

        from ..distributed import all_reduce_sum, is_distributed
        if is_distributed():
            self.hist = all_reduce_sum(torch.from_numpy(self.hist)).numpy().astype(np.int64,
                                                                                  copy=False)
        return self

    def reset(self) -> None:
        self.hist[...] = 0

    @property
    def num_pixels(self) -> int:
        return int(self.hist.sum())

    def compute(self, labels, dataset: Optional[str] = None,
                headline: Optional[str] = None) -> dict:
        return compute_metrics(self.hist, labels, dataset=dataset, headline=headline)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, num_pixels={self.num_pixels})"


def default_headline(dataset: Optional[str]) -> str:
    """The headline of the built-in description ``dataset`` (Helen: ``overall_f1``), else
    ``mean_f1``."""
    from ..data.schemas import SCHEMAS
    return SCHEMAS[dataset].headline if dataset in SCHEMAS else "mean_f1"


def _f1(hist: np.ndarray, ids: Sequence[int]) -> Optional[float]:
    ids = list(ids)
    hit = hist[np.ix_(ids, ids)].sum()
    denom = hist[ids, :].sum() + hist[:, ids].sum()
    if denom == 0:  # absent from gt and prediction: undefined, not 0 and not 100
        return None
    return float(200.0 * hit / denom)


def compute_metrics(hist, labels, *, dataset: Optional[str] = None,
                    headline: Optional[str] = None) -> dict:
    """All scores of one pooled histogram, in percent.

    Args:
        hist: (K, K) counts, rows = ground truth, columns = prediction.
        labels: the data set's description (``Schema``: its tokens, its merged groups, its
            headline), or its K ``label_names.txt`` tokens in id order (first ``bg``): then no
            merged group, unless ``dataset`` names a built-in description with these tokens.
        dataset: the name of a built-in description (with ``labels`` given as tokens).
        headline: ``"overall_f1"`` (needs a merged group ``overall``) or ``"mean_f1"``;
            default the description's (Helen -> overall F1, anything else -> mean F1).

    Returns:
        dict with ``classes`` (tokens), ``f1`` (token or merged name -> F1 or None when the class
        is absent from gt and prediction), ``iou`` (token -> IoU), ``mean_f1`` (None if no
        non-background class is present), ``miou``, ``pixel_accuracy``, ``mean_accuracy``,
        ``headline`` ({"name", "value"}), ``absent`` (tokens absent from gt and prediction) and
        ``num_pixels``.
    """
    hist = np.asarray(hist)
    tokens, merged, default = _description(labels, dataset)
    k = len(tokens)
    if hist.shape != (k, k):
        raise ValueError(f"histogram shape {hist.shape} does not match {k} tokens")
    if len(set(tokens)) != k:
        raise ValueError(f"duplicate tokens in {tokens}")
    if hist.sum() == 0:
        raise ValueError("empty histogram: no labelled pixel was scored")
    hist = hist.astype(np.float64)

    f1: Dict[str, Optional[float]] = {t: _f1(hist, [i]) for i, t in enumerate(tokens)}
    index = {t: i for i, t in enumerate(tokens)}
    for name, members in merged.items():
        f1[name] = _f1(hist, [index[m] for m in members])

    tp = np.diag(hist)
    gt_count, pred_count = hist.sum(1), hist.sum(0)
    iou = tp / np.maximum(1.0, gt_count + pred_count - tp) * 100.0
    class_acc = tp / np.maximum(1.0, gt_count) * 100.0
    defined = [f1[t] for t in tokens[1:] if f1[t] is not None]

    out = {
        "classes": tokens,
        "f1": f1,
        "iou": {t: float(v) for t, v in zip(tokens, iou)},
        "mean_f1": float(np.mean(defined)) if defined else None,
        "miou": float(iou.mean()),
        "pixel_accuracy": float(tp.sum() / hist.sum() * 100.0),
        "mean_accuracy": float(class_acc.mean()),
        "absent": [t for i, t in enumerate(tokens) if gt_count[i] == 0 and pred_count[i] == 0],
        "num_pixels": int(hist.sum()),
    }
    name = headline or default
    if name == "overall_f1":
        if "overall" not in merged:
            raise ValueError(f"headline 'overall_f1' needs a merged group 'overall' in the data "
                             f"set's description; the one of tokens {tokens} has none")
        value = f1["overall"]
    elif name == "mean_f1":
        value = out["mean_f1"]
    else:
        raise ValueError(f"unknown headline {name!r}; choose one of {HEADLINES}")
    out["headline"] = {"name": name, "value": value}
    out["merged_names"] = {g: list(m) for g, m in merged.items()}
    return out


def protocol_description(headline: str, merged: Optional[Dict[str, Sequence[str]]] = None) -> dict:
    """How the numbers were computed, written into every result JSON."""
    return {
        "scorer": "dml_csr.eval.metrics (DML-CSR release protocol, docs/evaluation.md)",
        "histogram": "one confusion histogram H[gt, pred] pooled over all pixels of the split",
        "ignore_index": IGNORE_INDEX,
        "f1": "2*H[G,P].sum()/(H[G,:].sum()+H[:,P].sum()), G=P={c} for a class, G=P=union for "
              "a merged name (confusions inside the set count as hits)",
        "merged_names": {k: list(v) for k, v in (merged or {}).items()},
        "mean_f1": "mean single-class F1 over every class except background",
        "iou": "TP/max(1,TP+FP+FN); miou = mean over all classes including background",
        "mean_accuracy": "mean over all classes of TP/max(1,H[c,:].sum())",
        "absent_classes": "F1 null (0/0) and left out of mean_f1; IoU and accuracy 0 and kept",
        "headline": headline,
        "units": "percent",
    }
